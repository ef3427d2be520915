//! applianced under a systemd-like supervisor: the real binary given `NOTIFY_SOCKET` (a
//! datagram socket this test binds) and `WATCHDOG_USEC`, as a `Type=notify` unit with
//! `WatchdogSec=` would. It must say READY=1 only once its Unix socket and API listen, ping
//! the watchdog, and say STOPPING=1 on SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, free_port};

/// The next notification; the read timeout only turns a hang into a failure.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("no notification from applianced within 60 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn applianced_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let addr = free_port();
    let socket = run.join("applianced.sock");
    let child = common::applianced(dir.path(), &addr.to_string())
        .env("NOTIFY_SOCKET", &notify_path)
        // 0.4 s: pings every 0.2 s, so the test sees one soon after READY.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon(child);

    assert_eq!(next(&notify), "READY=1");
    // READY means both the transactions' socket and the API accept connections.
    UnixStream::connect(&socket).expect("the Unix socket is not listening at READY=1");
    TcpStream::connect(addr).expect("the API is not listening at READY=1");

    let status = next(&notify);
    assert!(
        status.starts_with("STATUS=serving"),
        "second notification: {status}"
    );
    assert_eq!(next(&notify), "WATCHDOG=1");

    let pid = daemon.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    // Watchdog pings may still be in flight before the signal is seen.
    let mut last = next(&notify);
    while last == "WATCHDOG=1" {
        last = next(&notify);
    }
    assert_eq!(last, "STOPPING=1");
    let exit = daemon.0.wait().unwrap();
    assert!(
        exit.success(),
        "applianced exited with {exit} after SIGTERM"
    );
    assert!(!socket.exists(), "the Unix socket was left behind");
}
