//! The local transport (`transport = "local"`): the target is another pool on this box.
//! Planning, holds, bookmarks, resume tokens, divergence and the report are the sender's
//! (`send.rs`); only the stream differs. `lzc_send` writes into one pipe and
//! `lzc_receive_resumable` reads another, each in its own thread, and between them the
//! calling thread moves the pages with splice(2): no copy through user space, no framing,
//! no TLS, as in `zfs send | zfs recv`. The relay is there to count the stream's bytes and
//! to pace it through the job's bandwidth limit.

use std::io::{self, Read as _};
use std::os::fd::AsFd;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice};

use super::proto;
use super::receive;
use super::send::{Limiter, StreamSpec};
use super::{ReplError, plan::TargetState};
use crate::zfs::{RealZfs, ZfsError};

/// How a local job's target shows up in errors and logs.
pub(super) const LOCAL: &str = "this box (transport = local)";

/// The target's snapshots, resume token and written bytes, read directly.
pub(super) fn state(zfs: &RealZfs, dataset: &str) -> Result<TargetState, ReplError> {
    Ok(receive::state(zfs, dataset)?)
}

/// Rolls a diverged local target back to `to` (`on_divergence = "rollback"`).
pub(super) fn rollback(
    zfs: &mut RealZfs,
    dataset: &str,
    to: &str,
    destroy: &[String],
) -> Result<(), ReplError> {
    receive::rollback(zfs, dataset, to, destroy)?;
    tracing::warn!(%dataset, %to, destroyed = destroy.len(), "rolled a diverged replica back");
    Ok(())
}

/// Sends `snapshot` (from `from`, at `(object, offset)` when resuming) into
/// `target_snapshot` on this box; returns the stream's bytes. An interrupted stream leaves
/// the target's `receive_resume_token`, as over the network.
pub(super) fn stream(
    zfs: &RealZfs,
    spec: &StreamSpec<'_>,
    limiter: &mut Option<Limiter>,
) -> Result<u64, ReplError> {
    let &StreamSpec {
        snapshot,
        from,
        flags,
        resume_at: (object, offset),
        target_snapshot,
        resume,
    } = spec;
    let dataset = target_snapshot.split('@').next().unwrap_or(target_snapshot);
    let new = receive::first_receive(zfs, dataset, resume);
    let relay_err = |source: io::Error| ReplError::Relay {
        snapshot: snapshot.to_owned(),
        source,
    };
    let (send_r, send_w) = io::pipe().map_err(relay_err)?;
    let (recv_r, recv_w) = io::pipe().map_err(relay_err)?;
    proto::widen_pipe(&send_r);
    proto::widen_pipe(&recv_r);
    let lzc = zfs.lzc();
    let (sent, received, relayed) = std::thread::scope(|s| {
        let sender = s.spawn(move || {
            let r = lzc.send_resume(snapshot, from, send_w.as_fd(), flags, object, offset);
            drop(send_w);
            r
        });
        let receiver = s.spawn(move || {
            let r = lzc.receive_resumable(target_snapshot, None, false, flags.raw, recv_r.as_fd());
            drop(recv_r);
            r
        });
        let relayed = relay(&send_r, &recv_w, |n| {
            if let Some(l) = limiter.as_mut() {
                l.take(n);
            }
        });
        // Closing both ends ends the other threads whatever happened: a receive waiting
        // for more sees the stream end (and keeps what arrived, resumable), a send
        // waiting to write fails with EPIPE.
        drop(recv_w);
        drop(send_r);
        (
            joined(sender.join(), "lzc_send"),
            joined(receiver.join(), "lzc_receive"),
            relayed,
        )
    });
    let bytes = outcome(snapshot, target_snapshot, sent, received, relayed)?;
    tracing::info!(snapshot = %target_snapshot, bytes, resume, "received");
    if new {
        receive::settle_new_replica(zfs, dataset);
    }
    Ok(bytes)
}

/// Starts `argv` (`zfs receive -s -u DATASET`) with its stdin piped for the stream and its
/// stderr kept for the error message.
pub(super) fn spawn_resumable_receive(argv: &[&str]) -> io::Result<std::process::Child> {
    let (bin, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::other("an empty zfs receive command"))?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
}

/// Sends every snapshot after `dataset@from` up to `dataset@to` into `target_ds` as one
/// stream: `zfs send -L -e -c [-w] -I` into `zfs receive -s -u`, the tools because
/// libzfs_core has no range send, joined by the same splice relay (counted, paced). The
/// receive is resumable: a cut stream leaves the token of the snapshot in flight, the
/// ones before it landed. Returns the stream's bytes.
pub(super) fn range(
    zfs: &RealZfs,
    dataset: &str,
    (from, to): (&str, &str),
    target_ds: &str,
    raw: bool,
    limiter: &mut Option<Limiter>,
) -> Result<u64, ReplError> {
    let bin = zfs.cli().zfs.as_str();
    let recv_argv = [bin, "receive", "-s", "-u", target_ds];
    let target_snapshot = format!("{target_ds}@{to}");
    let mut sender = RangeSend::spawn(zfs, dataset, (from, to), raw)?;
    let mut receiver = match spawn_resumable_receive(&recv_argv) {
        Ok(c) => c,
        Err(e) => {
            sender.kill();
            return Err(ReplError::Receive {
                snapshot: target_snapshot,
                source: spawn_err(&recv_argv, e),
            });
        }
    };
    let to_full = sender.snapshot.clone();
    let (Some(send_out), Some(recv_in)) = (sender.stdout.take(), receiver.stdin.take()) else {
        sender.kill();
        let _ = receiver.kill();
        let _ = receiver.wait();
        return Err(ReplError::Relay {
            snapshot: to_full,
            source: io::Error::other("the zfs children have no pipes"),
        });
    };
    proto::widen_pipe(&recv_in);
    let recv_stderr = stderr_text(receiver.stderr.take());
    let relayed = relay(&send_out, &recv_in, |n| {
        if let Some(l) = limiter.as_mut() {
            l.take(n);
        }
    });
    // As in `stream`: closing both ends ends the children whatever happened.
    drop(recv_in);
    drop(send_out);
    let sent = sender.finish();
    let received = finished(&mut receiver, &recv_argv, recv_stderr);
    let bytes = outcome(&to_full, &target_snapshot, sent, received, relayed)?;
    tracing::info!(snapshot = %target_snapshot, from, bytes, "received a range");
    Ok(bytes)
}

/// `zfs send -L -e -c [-w] -I dataset@from dataset@to` running, its stream on `stdout`:
/// the sending half of a range, for the local relay and for the network transports.
pub(super) struct RangeSend {
    child: Child,
    argv: Vec<String>,
    /// `dataset@to`, for errors.
    pub snapshot: String,
    /// The stream; the caller takes it and drops it when done (a send still writing then
    /// fails with EPIPE instead of hanging).
    pub stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
}

impl RangeSend {
    pub(super) fn spawn(
        zfs: &RealZfs,
        dataset: &str,
        (from, to): (&str, &str),
        raw: bool,
    ) -> Result<Self, ReplError> {
        let bin = zfs.cli().zfs.as_str();
        let (from_full, to_full) = (format!("{dataset}@{from}"), format!("{dataset}@{to}"));
        let mut argv = vec![bin, "send", "-L", "-e", "-c"];
        if raw {
            argv.push("-w");
        }
        argv.extend(["-I", from_full.as_str(), to_full.as_str()]);
        let mut child = Command::new(bin)
            .args(argv.iter().skip(1))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ReplError::Send {
                snapshot: to_full.clone(),
                source: spawn_err(&argv, e),
            })?;
        let stdout = child.stdout.take();
        if let Some(out) = &stdout {
            proto::widen_pipe(out);
        }
        let stderr = stderr_text(child.stderr.take());
        Ok(Self {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            child,
            snapshot: to_full,
            stdout,
            stderr: Some(stderr),
        })
    }

    /// Waits for the send to end (after its stream was read or dropped): its exit status
    /// and stderr as an error when it failed.
    pub(super) fn finish(mut self) -> Result<(), ZfsError> {
        drop(self.stdout.take());
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let argv: Vec<&str> = self.argv.iter().map(String::as_str).collect();
        finished_with(&mut self.child, &argv, stderr)
    }

    /// Stops a send whose stream nobody will read.
    pub(super) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.finish();
    }
}

/// Collects a child's stderr in a thread, so that a chatty child never blocks on it.
fn stderr_text(e: Option<ChildStderr>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = e {
            let _ = e.read_to_string(&mut text);
        }
        text
    })
}

fn spawn_err(argv: &[&str], source: io::Error) -> ZfsError {
    ZfsError::Command(crate::command::CommandError::Spawn {
        command: argv.join(" "),
        source,
    })
}

/// Waits for `child`; its status and the stderr its thread collected as the error.
pub(super) fn finished(
    child: &mut Child,
    argv: &[&str],
    stderr: JoinHandle<String>,
) -> Result<(), ZfsError> {
    let text = stderr.join().unwrap_or_default();
    finished_with(child, argv, text)
}

fn finished_with(child: &mut Child, argv: &[&str], stderr: String) -> Result<(), ZfsError> {
    match child.wait() {
        Ok(st) if st.success() => Ok(()),
        Ok(st) => Err(ZfsError::Command(crate::command::CommandError::Failed(
            crate::command::CommandFailure {
                command: argv.join(" "),
                status: st.code(),
                stdout: String::new(),
                stderr,
            },
        ))),
        Err(e) => Err(spawn_err(argv, e)),
    }
}

fn joined(
    r: std::thread::Result<Result<(), crate::zfs::lzc::LzcError>>,
    call: &str,
) -> Result<(), ZfsError> {
    match r {
        Ok(r) => r.map_err(ZfsError::from),
        Err(_) => Err(ZfsError::Parse {
            command: call.into(),
            line: String::new(),
            why: "the thread panicked".into(),
        }),
    }
}

/// Moves everything `from` holds into `to` until `from` ends, by splice(2) (pages move
/// between the pipes, nothing is copied), and tells `pace` each move's size. Returns the
/// bytes moved. EPIPE means the receive stopped reading.
fn relay(from: impl AsFd, to: impl AsFd, mut pace: impl FnMut(usize)) -> Result<u64, Errno> {
    let mut bytes = 0u64;
    loop {
        let n = match splice(
            &from,
            None,
            &to,
            None,
            proto::PIPE_SIZE,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_MORE,
        ) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        bytes += n as u64;
        pace(n);
    }
}

/// Which failure a run reports. Each side's failure makes the others fail too (a dead
/// receive breaks the relay with EPIPE and then the send; a failed send ends the stream
/// early and the receive refuses the truncated stream), so the report names the side
/// that failed first: the receive when the relay saw EPIPE, else the send, else the
/// receive, else the relay itself.
fn outcome(
    snapshot: &str,
    target_snapshot: &str,
    sent: Result<(), ZfsError>,
    received: Result<(), ZfsError>,
    relayed: Result<u64, Errno>,
) -> Result<u64, ReplError> {
    let receive_err = |source| ReplError::Receive {
        snapshot: target_snapshot.to_owned(),
        source,
    };
    let send_err = |source| ReplError::Send {
        snapshot: snapshot.to_owned(),
        source,
    };
    match (sent, received, relayed) {
        (_, Err(e), Err(Errno::EPIPE)) => Err(receive_err(e)),
        (Err(e), _, _) => Err(send_err(e)),
        (Ok(()), Err(e), _) => Err(receive_err(e)),
        (Ok(()), Ok(()), Err(e)) => Err(ReplError::Relay {
            snapshot: snapshot.to_owned(),
            source: e.into(),
        }),
        (Ok(()), Ok(()), Ok(bytes)) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::zfs::lzc::LzcError;

    fn failed(op: &'static str, errno: i32) -> Result<(), ZfsError> {
        Err(ZfsError::Lzc(LzcError::Failed {
            op,
            target: "x".into(),
            source: io::Error::from_raw_os_error(errno),
            per_item: Vec::new(),
        }))
    }

    /// The relay moves a stream longer than both pipes whole, in order, counting it and
    /// pacing every move, and ends at the writer's end.
    #[test]
    fn the_relay_moves_a_stream_whole_and_paces_it() {
        let data: Vec<u8> = (0..3 * proto::PIPE_SIZE + 4321)
            .map(|i| (i % 253) as u8)
            .collect();
        let (send_r, mut send_w) = io::pipe().unwrap();
        let (mut recv_r, recv_w) = io::pipe().unwrap();
        let mut paced = 0usize;
        let (moved, got) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                send_w.write_all(&data).unwrap();
                drop(send_w);
            });
            let reader = s.spawn(move || {
                let mut got = Vec::new();
                recv_r.read_to_end(&mut got).unwrap();
                got
            });
            let moved = relay(&send_r, &recv_w, |n| paced += n).unwrap();
            drop(recv_w);
            writer.join().unwrap();
            (moved, reader.join().unwrap())
        });
        assert_eq!(moved, data.len() as u64);
        assert_eq!(paced, data.len());
        assert!(got == data, "the stream arrived changed");
    }

    /// A reader that is gone (the receive gave up) stops the relay with EPIPE.
    #[test]
    fn the_relay_stops_when_the_receive_is_gone() {
        let (send_r, mut send_w) = io::pipe().unwrap();
        let (recv_r, recv_w) = io::pipe().unwrap();
        drop(recv_r);
        send_w.write_all(b"stream").unwrap();
        drop(send_w);
        assert_eq!(relay(&send_r, &recv_w, |_| {}), Err(Errno::EPIPE));
    }

    #[test]
    fn the_side_that_failed_first_is_reported() {
        let o = |sent, received, relayed| {
            outcome("src/a@s", "dst/a@s", sent, received, relayed).map_err(|e| e.to_string())
        };
        assert_eq!(o(Ok(()), Ok(()), Ok(7)), Ok(7));
        // The receive refused the stream: the relay and then the send broke on EPIPE.
        let e = o(failed("send", 32), failed("receive", 17), Err(Errno::EPIPE)).unwrap_err();
        assert!(e.starts_with("receiving dst/a@s failed"), "{e}");
        // The send failed: the receive then saw a truncated stream.
        let e = o(failed("send", 2), failed("receive", 5), Ok(3)).unwrap_err();
        assert!(e.starts_with("sending src/a@s failed"), "{e}");
        let e = o(Ok(()), failed("receive", 5), Ok(3)).unwrap_err();
        assert!(e.starts_with("receiving dst/a@s failed"), "{e}");
        let e = o(Ok(()), Ok(()), Err(Errno::EIO)).unwrap_err();
        assert!(e.contains("lzc_send and lzc_receive"), "{e}");
    }
}
