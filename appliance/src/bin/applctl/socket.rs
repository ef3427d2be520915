//! One HTTP/1.1 request over a daemon's Unix control socket, blocking: applctl makes one
//! request per run, so an async client and its runtime would be dead weight.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::CliError;

/// Status and body of a response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `method target` with an optional JSON body to `daemon`'s socket and reads the
/// whole response; errors name the daemon and the socket, with a hint for the usual cause.
pub fn request(
    daemon: &str,
    socket: &Path,
    timeout: Duration,
    method: &str,
    target: &str,
    body: Option<&Value>,
) -> Result<Reply, CliError> {
    let fail = |what: &str, e: std::io::Error| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => format!(" (is {daemon} running?)"),
            std::io::ErrorKind::PermissionDenied => " (it is root only)".to_owned(),
            _ => String::new(),
        };
        CliError::Failed(format!(
            "{what} {daemon}'s control socket {}: {e}{hint}",
            socket.display()
        ))
    };
    let mut s = UnixStream::connect(socket).map_err(|e| fail("cannot connect to", e))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("cannot use", e))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {daemon}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()))
        .map_err(|e| fail("cannot write to", e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| fail("cannot read from", e))?;
    parse_response(&raw)
        .ok_or_else(|| CliError::Failed(format!("{daemon} sent a malformed HTTP response")))
}

/// Status and body of an HTTP/1.1 response read to EOF (`Content-Length` or to the end).
fn parse_response(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(raw.get(..end)?).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw.get(end + 4..)?.to_vec();
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            let n: usize = v.trim().parse().ok()?;
            body.truncate(n);
        }
    }
    Some(Reply { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_by_content_length() {
        let r =
            parse_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}junk").unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, b"{}");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_none());
    }
}
