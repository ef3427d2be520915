//! The replication protocol between a sender and stored's receiver, inside mutual TLS.
//!
//! Every frame is a kind byte, a big-endian u32 length and that many bytes. `MSG` frames
//! carry one JSON [`Request`] or [`Reply`]; a send stream follows a `Receive` request as
//! `DATA` frames closed by `END` (complete) or `ABORT` (the sender's `lzc_send` failed).
//! The sender asks, the receiver answers each request with one reply:
//!
//! ```text
//! Hello{job, datasets}  -> Ok | Error
//! State{dataset}        -> State{exists, snapshots with GUIDs, resume token, written}
//! Rollback{dataset,..}  -> Ok | Error
//! Receive{snapshot,..} DATA.. END -> Received{bytes} | Error
//! Bye
//! ```

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::plan::TargetState;

pub const VERSION: u32 = 1;
/// Data frames are at most this big; JSON messages may be bigger (a state with many
/// snapshots) up to [`MAX_FRAME`].
pub const CHUNK: usize = 256 * 1024;
const MAX_FRAME: u32 = 64 << 20;

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
    Receive {
        /// Full name of the snapshot to create on the target.
        snapshot: String,
        raw: bool,
        resume: bool,
    },
    Bye,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Ok,
    State(TargetState),
    Received { bytes: u64 },
    Error { message: String },
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

pub fn send_end(w: &mut impl Write, complete: bool) -> io::Result<()> {
    write_frame(w, if complete { END } else { ABORT }, &[])?;
    w.flush()
}

pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let [kind, a, b, c, d] = head;
    let len = u32::from_be_bytes([a, b, c, d]);
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit; is the peer a stored?"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    match kind {
        MSG => Ok(Frame::Msg(body)),
        DATA => Ok(Frame::Data(body)),
        END => Ok(Frame::End),
        ABORT => Ok(Frame::Abort),
        k => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {k}"),
        )),
    }
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
        send_data(&mut buf, b"stream").unwrap();
        send_end(&mut buf, true).unwrap();
        let mut r = buf.as_slice();
        let req: Request = read_msg(&mut r).unwrap();
        assert!(matches!(req, Request::Receive { raw: true, .. }));
        assert!(matches!(read_frame(&mut r).unwrap(), Frame::Data(d) if d == b"stream"));
        assert!(matches!(read_frame(&mut r).unwrap(), Frame::End));
        assert!(read_frame(&mut r).is_err());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let buf = [MSG, 0xff, 0xff, 0xff, 0xff];
        let e = read_frame(&mut buf.as_slice()).unwrap_err();
        assert!(e.to_string().contains("over the limit"));
    }
}
