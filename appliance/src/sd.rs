//! The systemd service notification protocol (sd_notify(3)) without libsystemd: one
//! datagram per message to `$NOTIFY_SOCKET`. Every daemon unit is `Type=notify` with a
//! `WatchdogSec=`, so a daemon says READY=1 once it serves, and pings the watchdog from the
//! task that does its real work, so a wedged daemon is restarted rather than left running.
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op, so tests and a shell can
//! run the daemons unchanged.

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract name (@…); check the unit's environment"
    )]
    BadAddress(String),
    #[error("cannot send {what:?} to systemd at {socket}: {source}")]
    Send {
        what: String,
        socket: String,
        source: std::io::Error,
    },
}

/// Where notifications go: the socket systemd gave the service.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// The notifier of this process, `None` when not started by systemd with a notify socket.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        Some(Notifier::new(socket))
    }

    /// A notifier sending to `socket`: a path, or `@name` for the abstract namespace.
    pub fn new(socket: impl AsRef<OsStr>) -> Notifier {
        Notifier {
            socket: socket.as_ref().to_string_lossy().into_owned(),
        }
    }

    fn address(&self) -> Result<SocketAddr, NotifyError> {
        let bad = || NotifyError::BadAddress(self.socket.clone());
        if let Some(name) = self.socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
        } else if self.socket.starts_with('/') {
            SocketAddr::from_pathname(&self.socket).map_err(|_| bad())
        } else {
            Err(bad())
        }
    }

    /// Sends one message (newline-separated `KEY=value` assignments).
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        let send_err = |source| NotifyError::Send {
            what: message.to_owned(),
            socket: self.socket.clone(),
            source,
        };
        let addr = self.address()?;
        let sock = UnixDatagram::unbound().map_err(send_err)?;
        sock.send_to_addr(message.as_bytes(), &addr)
            .map_err(send_err)?;
        Ok(())
    }
}

/// Sends `message` if systemd listens; a failure is logged, since a daemon that cannot
/// notify still serves (systemd then times it out and says so in the journal).
fn notify(message: &str) {
    if let Some(n) = Notifier::from_env()
        && let Err(e) = n.send(message)
    {
        tracing::warn!(error = %e, "systemd notification lost");
    }
}

/// The service is serving (Type=notify units are "active" from here on).
pub fn ready() {
    notify("READY=1");
}

/// The service is going down on purpose.
pub fn stopping() {
    notify("STOPPING=1");
}

/// A one-line state shown by `systemctl status`.
pub fn status(msg: &str) {
    // A newline would start a new assignment.
    notify(&format!("STATUS={}", msg.replace('\n', " ")));
}

/// Tells systemd the service is alive (resets the WatchdogSec= timer).
pub fn watchdog_ping() {
    notify("WATCHDOG=1");
}

/// The watchdog timeout systemd expects pings within, `None` when there is none for this
/// process. Ping at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    interval_from(&usec, pid.as_deref(), std::process::id())
}

/// WATCHDOG_USEC/WATCHDOG_PID read as sd_watchdog_enabled(3) does: a PID that is not ours
/// means the variables were inherited from a parent and are not for us.
fn interval_from(usec: &str, pid: Option<&str>, own: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != own
    {
        return None;
    }
    match usec.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(us) => Some(Duration::from_micros(us)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(&path);
        n.send("READY=1").unwrap();
        n.send("WATCHDOG=1").unwrap();
        assert_eq!(receive(&server), "READY=1");
        assert_eq!(receive(&server), "WATCHDOG=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("appliance-sd-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::new(format!("@{name}"))
            .send("STATUS=serving")
            .unwrap();
        assert_eq!(receive(&server), "STATUS=serving");
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let e = Notifier::new(&path).send("READY=1").unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn a_relative_socket_is_refused() {
        let e = Notifier::new("notify").send("READY=1").unwrap_err();
        assert!(matches!(e, NotifyError::BadAddress(_)), "{e}");
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        assert_eq!(
            interval_from("30000000", None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            interval_from("30000000", Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(interval_from("30000000", Some("8"), 7), None);
        assert_eq!(interval_from("0", None, 7), None);
        assert_eq!(interval_from("soon", None, 7), None);
        assert_eq!(interval_from("30000000", Some("x"), 7), None);
    }
}
