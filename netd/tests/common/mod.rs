//! Helpers shared by the namespace tests of this crate: the preflight checks, a command
//! runner that fails the test loudly, and network namespaces deleted on drop.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

/// Fails the test unless it runs as root: a skipped namespace test would look like a
/// passing one.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the namespace tests need root (euid {euid}); run them as root, as CI does"
    );
}

/// Fails the test unless `argv` runs and exits with status 0, naming the Debian `package`
/// that provides it.
pub fn require_working(argv: &[&str], package: &str) {
    let ok = Command::new(argv[0])
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{}` does not work: install Debian's {package}",
        argv.join(" ")
    );
}

/// Runs `argv`, fails the test with its stderr unless it succeeds, and returns its stdout.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number no other call in this process returns.
pub fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A network namespace, deleted on drop. Names carry the test binary, the pid and a
/// counter so that tests running in parallel (and leftovers of a killed run) never collide.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with its loopback up.
    pub fn new(role: &str) -> Self {
        let name = format!(
            "{}-{role}-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            unique()
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip("link set lo up");
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`, its output.
    pub fn ip(&self, args: &str) -> String {
        let mut argv = vec!["ip", "-n", &self.name];
        argv.extend(args.split_whitespace());
        run(&argv)
    }

    /// `ip -j -n <ns> <args>`, parsed.
    pub fn json(&self, args: &str) -> Value {
        serde_json::from_str(&self.ip(&format!("-j {args}"))).unwrap()
    }

    /// `sh -c <script>` in this namespace, its output.
    pub fn sh(&self, script: &str) -> String {
        run(&["ip", "netns", "exec", &self.name, "sh", "-c", script])
    }

    /// `program` to be run in this namespace; add its arguments.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    /// Connects from this namespace to `to:port` and reads until the server closes: the
    /// test servers write the peer address they saw, so this tells whether (and to what)
    /// the source address was translated.
    pub fn seen_as(&self, to: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<String> {
        self.spawn(move || {
            let mut s = TcpStream::connect_timeout(&SocketAddr::from((to, port)), timeout)?;
            s.set_read_timeout(Some(timeout))?;
            let mut seen = String::new();
            s.read_to_string(&mut seen)?;
            Ok(seen)
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
