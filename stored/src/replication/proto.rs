//! The replication protocol between a sender and stored's receiver, inside mutual TLS.
//!
//! Every frame is a kind byte, a big-endian u32 length and that many bytes. `MSG` frames
//! carry one JSON [`Request`] or [`Reply`]; a send stream follows a `Receive` request as
//! `DATA` frames closed by `END` (complete) or `ABORT` (the sender's `lzc_send` failed).
//! The sender asks, the receiver answers each request with one reply:
//!
//! ```text
//! Hello{job, datasets}  -> Ok{features} | Error
//! State{dataset}        -> State{exists, snapshots with GUIDs, resume token, written}
//! Rollback{dataset,..}  -> Ok | Error
//! AbortPartial{dataset, toguid} -> Ok | Error
//! Receive{snapshot,..} DATA.. END -> Received{bytes} | Error
//! ReceiveRange{dataset, base, snapshots,..} -> Ok | Error, then DATA.. END -> Received | Error
//! Bye                   -> (none: the receiver mounts what waited, then closes)
//! ```
//!
//! Versioning: [`VERSION`] stays 1, since every version-1 message still means what it
//! meant. Requests added since are optional features: the receiver lists those it takes
//! in its answer to `Hello` (`{"type":"ok","features":[..]}`, which a version-1 sender
//! reads as a plain `ok`: serde ignores the unknown field), and a sender uses one only
//! when it is listed. A receiver older than the list answers a bare `ok`, read as no
//! features, and gets the version-1 requests alone; it never sees a request it would
//! fail to parse (it would end the connection on one).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

use super::plan::TargetState;

pub const VERSION: u32 = 1;
/// The feature of [`Request::ReceiveRange`].
pub const FEATURE_RANGE: &str = "range";
/// What this receiver takes beyond version 1, announced in its answer to `Hello`.
pub const FEATURES: &[&str] = &[FEATURE_RANGE];
/// Data frames are at most this big; JSON messages may be bigger (a state with many
/// snapshots) up to [`MAX_FRAME`]. As big as the pipes ([`PIPE_SIZE`]) so that one read of
/// the send pipe makes one frame, and each frame costs one header and one pass through
/// rustls rather than many small ones.
pub const CHUNK: usize = PIPE_SIZE;
const MAX_FRAME: u32 = 64 << 20;
/// The kind byte and the length before every frame's payload.
pub const HEAD: usize = 5;
/// The pipes between lzc and the socket. Linux's default of 64 KiB costs a switch between
/// the lzc thread and the socket thread per 64 KiB; 1 MiB is the unprivileged maximum
/// (`/proc/sys/fs/pipe-max-size`).
pub const PIPE_SIZE: usize = 1 << 20;

const MSG: u8 = 1;
const DATA: u8 = 2;
const END: u8 = 3;
const ABORT: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello {
        version: u32,
        job: String,
        /// The target datasets the job writes (each with its descendants).
        datasets: Vec<String>,
    },
    State {
        dataset: String,
    },
    Rollback {
        dataset: String,
        /// Short name of the common snapshot.
        to: String,
        /// Short names of the newer snapshots to destroy first.
        destroy: Vec<String>,
    },
    /// Abort the interrupted receive into `dataset` whose token names `toguid`: the
    /// source cannot continue it. A receiver older than this message ends the connection
    /// on it (an unknown request), and the run fails as before.
    AbortPartial {
        dataset: String,
        toguid: u64,
    },
    Receive {
        /// Full name of the snapshot to create on the target.
        snapshot: String,
        raw: bool,
        resume: bool,
    },
    /// Every snapshot after `base` up to the last of `snapshots`, as one `zfs send -I`
    /// stream, into `dataset` (`zfs receive -s -u`). Only to a receiver that listed
    /// [`FEATURE_RANGE`]. The receiver checks first that `base` (name and GUID) is the
    /// target's newest snapshot, with nothing written since and no interrupted receive,
    /// and answers `Ok` before the stream or `Error` instead of it; after the stream it
    /// checks that every snapshot of the list landed with its GUID.
    ReceiveRange {
        /// The target dataset.
        dataset: String,
        base: RangeSnap,
        /// Oldest first; the stream carries exactly these.
        snapshots: Vec<RangeSnap>,
        raw: bool,
    },
    Bye,
}

/// A snapshot of a range: short name (after `@`) and GUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSnap {
    pub name: String,
    pub guid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Done or accepted. `features` is set only in the answer to `Hello` (see the module's
    /// versioning); absent, as from a version-1 receiver, it reads as none.
    Ok {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    State(TargetState),
    Received {
        bytes: u64,
    },
    Error {
        message: String,
    },
}

impl Reply {
    /// `Ok` without features: every answer but the one to `Hello`.
    pub fn ok() -> Self {
        Self::Ok {
            features: Vec::new(),
        }
    }

    /// The answer to `Hello`: `Ok` with what this receiver takes beyond version 1.
    pub fn welcome() -> Self {
        Self::Ok {
            features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    /// Whether this answer to `Hello` lists `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        matches!(self, Self::Ok { features } if features.iter().any(|f| f == feature))
    }
}

#[derive(Debug)]
pub enum Frame {
    Msg(Vec<u8>),
    Data(Vec<u8>),
    End,
    Abort,
}

fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too big"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

pub fn send_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    write_frame(w, MSG, &body)?;
    w.flush()
}

pub fn send_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    write_frame(w, DATA, data)
}

/// Sends `frame[HEAD..]` as one data frame, its header written into `frame[..HEAD]`: the
/// header and the payload go through one write, not a tiny TLS record of their own.
fn send_data_in_place(w: &mut impl Write, frame: &mut [u8]) -> io::Result<()> {
    let len = frame
        .len()
        .checked_sub(HEAD)
        .and_then(|n| u32::try_from(n).ok());
    let (Some(len), Some(head)) = (len, frame.get_mut(..HEAD)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a data frame needs room for its header and at most 4 GiB",
        ));
    };
    let [a, b, c, d] = len.to_be_bytes();
    head.copy_from_slice(&[DATA, a, b, c, d]);
    w.write_all(frame)
}

/// Copies a send stream from `from` (the pipe lzc_send writes) to `to` as data frames, one
/// per read, until `from` ends; `pace` gets each frame's size before it goes out (the
/// bandwidth limit). Returns the bytes copied. The caller ends the stream ([`send_end`]).
pub fn send_stream(
    from: &mut impl Read,
    to: &mut impl Write,
    mut pace: impl FnMut(usize),
) -> io::Result<u64> {
    // Read straight behind the header's room: a frame goes out in one write.
    let mut frame = vec![0u8; HEAD + CHUNK];
    let mut bytes = 0u64;
    loop {
        let n = match from.read(frame.get_mut(HEAD..).unwrap_or_default()) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pace(n);
        send_data_in_place(to, frame.get_mut(..HEAD + n).unwrap_or_default())?;
        bytes += n as u64;
    }
}

/// Copies the data frames of one stream from `from` into `to` (the pipe lzc_receive reads)
/// up to its `END` (returns true) or `ABORT` (false: the sender's lzc_send failed),
/// counting the payload in `bytes` (also when the link breaks). Once a write to `to`
/// fails (the receive gave up), the rest of the stream is read and dropped, so that the
/// connection stays usable.
pub fn receive_stream(
    from: &mut impl Read,
    to: &mut impl Write,
    bytes: &mut u64,
) -> io::Result<bool> {
    let mut buf = Vec::new();
    let mut broken = false;
    loop {
        let (kind, len) = read_frame_into(from, &mut buf)?;
        match kind {
            Kind::Data => {
                *bytes += len as u64;
                if !broken && to.write_all(buf.get(..len).unwrap_or_default()).is_err() {
                    broken = true;
                }
            }
            Kind::End => return Ok(true),
            Kind::Abort => return Ok(false),
            Kind::Msg => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message inside a stream",
                ));
            }
        }
    }
}

/// Grows a pipe to [`PIPE_SIZE`]; a smaller pipe only costs speed, so a refusal is logged.
pub fn widen_pipe(fd: impl AsFd) {
    let size = i32::try_from(PIPE_SIZE).unwrap_or(i32::MAX);
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)) {
        tracing::debug!(error = %e, "cannot grow a replication pipe to 1 MiB");
    }
}

pub fn send_end(w: &mut impl Write, complete: bool) -> io::Result<()> {
    write_frame(w, if complete { END } else { ABORT }, &[])?;
    w.flush()
}

pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut body = Vec::new();
    let (kind, len) = read_frame_into(r, &mut body)?;
    body.truncate(len);
    Ok(match kind {
        Kind::Msg => Frame::Msg(body),
        Kind::Data => Frame::Data(body),
        Kind::End => Frame::End,
        Kind::Abort => Frame::Abort,
    })
}

/// A frame's kind, its payload left in the caller's buffer by [`read_frame_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Msg,
    Data,
    End,
    Abort,
}

/// Reads one frame into `buf[..len]` and returns its kind and `len`. `buf` only grows, so
/// a stream of data frames reuses one buffer instead of allocating and zeroing each.
pub fn read_frame_into(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<(Kind, usize)> {
    let mut head = [0u8; HEAD];
    r.read_exact(&mut head)?;
    let [kind, a, b, c, d] = head;
    let len = u32::from_be_bytes([a, b, c, d]);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit; is the peer a stored?"),
        ));
    }
    let kind = match kind {
        MSG => Kind::Msg,
        DATA => Kind::Data,
        END => Kind::End,
        ABORT => Kind::Abort,
        k => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown frame kind {k}"),
            ));
        }
    };
    let len = len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    r.read_exact(buf.get_mut(..len).unwrap_or_default())?;
    Ok((kind, len))
}

/// Reads one JSON message; a data frame here is a protocol error.
pub fn read_msg<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<T> {
    match read_frame(r)? {
        Frame::Msg(body) => {
            serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected a message, got {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        send_msg(
            &mut buf,
            &Request::Receive {
                snapshot: "b/a@s".into(),
                raw: true,
                resume: false,
            },
        )
        .unwrap();
        send_data_in_place(&mut buf, &mut b"-----a longer stream".to_vec()).unwrap();
        send_data(&mut buf, b"stream").unwrap();
        send_end(&mut buf, true).unwrap();
        assert!(send_data_in_place(&mut buf, &mut [0u8; 4]).is_err());
        let mut r = buf.as_slice();
        let req: Request = read_msg(&mut r).unwrap();
        assert!(matches!(req, Request::Receive { raw: true, .. }));
        // One buffer for both data frames: the second, shorter one is read into its front.
        let mut reused = Vec::new();
        let (kind, len) = read_frame_into(&mut r, &mut reused).unwrap();
        assert_eq!(
            (kind, &reused[..len]),
            (Kind::Data, &b"a longer stream"[..])
        );
        let (kind, len) = read_frame_into(&mut r, &mut reused).unwrap();
        assert_eq!((kind, &reused[..len]), (Kind::Data, &b"stream"[..]));
        assert!(matches!(read_frame(&mut r).unwrap(), Frame::End));
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let buf = [MSG, 0xff, 0xff, 0xff, 0xff];
        let e = read_frame(&mut buf.as_slice()).unwrap_err();
        assert!(e.to_string().contains("over the limit"));
    }

    /// A stream is framed and unframed whole, whatever the reads return, and a refused
    /// write (lzc_receive gave up) drains the stream instead of cutting the connection.
    #[test]
    fn streams_round_trip_and_a_failed_receive_drains() {
        let data: Vec<u8> = (0..3 * CHUNK + 12345).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        let mut paced = Vec::new();
        let sent = send_stream(&mut data.as_slice(), &mut wire, |n| paced.push(n)).unwrap();
        send_end(&mut wire, true).unwrap();
        send_msg(&mut wire, &Request::Bye).unwrap();
        assert_eq!(sent, data.len() as u64);
        assert_eq!(paced.iter().sum::<usize>(), data.len());
        assert!(paced.iter().all(|n| *n <= CHUNK));

        let mut r = wire.as_slice();
        let mut out = Vec::new();
        let mut got = 0;
        let complete = receive_stream(&mut r, &mut out, &mut got).unwrap();
        assert_eq!((complete, got, out == data), (true, sent, true));
        assert_eq!(read_msg::<Request>(&mut r).unwrap(), Request::Bye);

        struct Refuses;
        impl Write for Refuses {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut r = wire.as_slice();
        let mut got = 0;
        let complete = receive_stream(&mut r, &mut Refuses, &mut got).unwrap();
        assert_eq!((complete, got), (true, sent));
        assert_eq!(read_msg::<Request>(&mut r).unwrap(), Request::Bye);
    }

    /// The messages as a version-1 stored (before features) defines them.
    mod v1 {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Reply {
            Ok,
            Received { bytes: u64 },
            Error { message: String },
        }

        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Request {
            Hello {
                version: u32,
                job: String,
                datasets: Vec<String>,
            },
            Bye,
        }
    }

    fn through<T: Serialize, U: for<'de> Deserialize<'de>>(msg: &T) -> io::Result<U> {
        let mut wire = Vec::new();
        send_msg(&mut wire, msg)?;
        read_msg(&mut wire.as_slice())
    }

    /// Old and new peers understand each other's answer to Hello: a version-1 sender
    /// reads the features list as a plain ok, this sender reads a version-1 ok as no
    /// features (so it sends no range), and a version-1 receiver's `ok` is what this
    /// receiver still sends for everything but Hello.
    #[test]
    fn the_features_list_is_invisible_to_version_1_peers() {
        let welcome = Reply::welcome();
        assert!(welcome.has_feature(FEATURE_RANGE));
        assert_eq!(through::<_, v1::Reply>(&welcome).unwrap(), v1::Reply::Ok);

        let old: Reply = through(&v1::Reply::Ok).unwrap();
        assert_eq!(old, Reply::ok());
        assert!(!old.has_feature(FEATURE_RANGE));

        let mut wire = Vec::new();
        send_msg(&mut wire, &Reply::ok()).unwrap();
        assert_eq!(&wire[HEAD..], br#"{"type":"ok"}"#);
        assert!(!Reply::Received { bytes: 1 }.has_feature(FEATURE_RANGE));
    }

    /// Why the sender asks first: a version-1 receiver cannot parse a range request (it
    /// would end the connection), while it still parses the hello this sender sends.
    #[test]
    fn a_version_1_receiver_cannot_read_a_range_request() {
        let hello = Request::Hello {
            version: VERSION,
            job: "j".into(),
            datasets: vec!["b/a".into()],
        };
        assert!(matches!(
            through::<_, v1::Request>(&hello).unwrap(),
            v1::Request::Hello { version: 1, .. }
        ));
        let range = Request::ReceiveRange {
            dataset: "b/a".into(),
            base: RangeSnap {
                name: "s0".into(),
                guid: 1,
            },
            snapshots: vec![RangeSnap {
                name: "s1".into(),
                guid: 2,
            }],
            raw: false,
        };
        let e = through::<_, v1::Request>(&range).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(through::<_, Request>(&range).unwrap(), range);
    }
}
