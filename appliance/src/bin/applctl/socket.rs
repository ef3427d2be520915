//! One HTTP/1.1 request over a daemon's Unix control socket, blocking: applctl makes one
//! request per run, so an async client and its runtime would be dead weight.

use std::io::{Read, Write};
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
    let raw = exchange(&mut s, daemon, &[], method, target, body)
        .map_err(|e| fail("cannot talk to", e))?;
    parse_response(&raw)
        .ok_or_else(|| CliError::Failed(format!("{daemon} sent a malformed HTTP response")))
}

/// `s` escaped for a query string value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The reply as JSON, or the error `daemon` gave: 400/404/422 (a name, a generation or a
/// config that is wrong) is bad input, exit 2; anything else a failure, exit 1.
pub fn json_of(daemon: &str, r: Reply) -> Result<Value, CliError> {
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
        CliError::Failed(format!(
            "{daemon} answered {} with a body that is not JSON: {e}",
            r.status
        ))
    })?;
    if r.status == 200 {
        return Ok(v);
    }
    let msg = v
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_owned);
    match r.status {
        400 | 404 | 422 => Err(CliError::Invalid(msg)),
        _ => Err(CliError::Failed(format!(
            "{daemon}: {msg} (HTTP {})",
            r.status
        ))),
    }
}

/// Writes one request (with `headers` as `Name: value` lines) and reads the response to
/// EOF. An EOF without TLS close_notify is taken as the end when a whole response
/// arrived: HTTP/1.1 with `Connection: close` and a `Content-Length` delimits it already.
pub fn exchange(
    s: &mut (impl Read + Write),
    host: &str,
    headers: &[String],
    method: &str,
    target: &str,
    body: Option<&Value>,
) -> std::io::Result<Vec<u8>> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && complete(&raw) => Ok(raw),
        Err(e) => Err(e),
    }
}

/// Whether `raw` holds a head and all the body its Content-Length announces.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Some(head) = raw.get(..end).and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|n| raw.len() >= end + 4 + n)
}

/// Status and body of an HTTP/1.1 response read to EOF (`Content-Length` or to the end).
pub fn parse_response(raw: &[u8]) -> Option<Reply> {
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

    #[test]
    fn errors_map_to_exit_codes() {
        let bad = Reply {
            status: 422,
            body: br#"{"error":"no snapshot policy x"}"#.to_vec(),
        };
        assert!(
            matches!(json_of("stored", bad), Err(CliError::Invalid(m)) if m == "no snapshot policy x")
        );
        let conflict = Reply {
            status: 409,
            body: br#"{"error":"busy"}"#.to_vec(),
        };
        assert!(
            matches!(json_of("stored", conflict), Err(CliError::Failed(m)) if m == "stored: busy (HTTP 409)")
        );
    }
}
