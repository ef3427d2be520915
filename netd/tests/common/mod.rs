//! Helpers shared by the namespace tests of this crate: the preflight checks, a command
//! runner that fails the test loudly, network namespaces deleted on drop, and the lab
//! pieces several tests build alike (`netd serve` and its control socket, dnsmasq as a
//! WAN's DHCP server).

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

/// A child killed and reaped on drop, so that a failing test leaves no daemon behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 200 ms until it gives a value; fails the test after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// `netd serve` in `ns`, listening on `socket`, with everything it keeps under `dir`: the
/// store in `config/`, and its firewall state, DHCP, WAN DNS and WireGuard files beside it.
/// The caller adds where its output goes and spawns it.
pub fn netd_serve(ns: &Netns, dir: &Path, socket: &Path) -> Command {
    let mut c = ns.command(env!("CARGO_BIN_EXE_netd"));
    c.arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--data-dir")
        .arg(dir.join("config"))
        .arg("--firewall-state")
        .arg(dir.join("firewall.json"))
        .arg("--dhcp-dir")
        .arg(dir.join("dhcp"))
        .arg("--wan-dns-file")
        .arg(dir.join("wan-dns.json"))
        .arg("--wireguard-dir")
        .arg(dir.join("wireguard"));
    c
}

/// Waits for `netd serve` to open its control socket.
pub fn wait_for_socket(socket: &Path) {
    wait_until("netd serve's socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });
}

/// `method target` on a control socket with a JSON `body` (empty for none): the status
/// code and the response body.
pub fn request(socket: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: netd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// GET `target` on the control socket, which must answer 200: the body.
pub fn get(socket: &Path, target: &str) -> String {
    let (code, body) = request(socket, "GET", target, "");
    assert_eq!(code, 200, "{target}: {body}");
    body
}

/// `netd serve`'s status document.
pub fn status(socket: &Path) -> Value {
    serde_json::from_str(&get(socket, "/v1/status")).unwrap()
}

/// An "internet" namespace and a router namespace joined by a veth: `up0` on the internet
/// side, up at 203.0.113.1/24 (where the tests run dnsmasq), and `wan_device` in the router.
pub fn internet_and_router(wan_device: &str) -> (Netns, Netns) {
    let internet = Netns::new("internet");
    let router = Netns::new("router");
    internet.ip(&format!(
        "link add up0 type veth peer name {wan_device} netns {}",
        router.name
    ));
    internet.ip("addr add 203.0.113.1/24 dev up0");
    internet.ip("link set up0 up");
    (internet, router)
}

/// dnsmasq in `ns` as the WAN's DHCP server on `up0`, in the foreground, without DNS, with
/// its lease database at `leases`. The caller adds the range and options, and spawns it.
pub fn dnsmasq(ns: &Netns, leases: &Path) -> Command {
    let mut c = ns.command("dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--port=0",
        "--user=root",
        "--pid-file",
        "--interface=up0",
        "--bind-interfaces",
        "--dhcp-authoritative",
    ])
    .arg(format!("--dhcp-leasefile={}", leases.display()));
    c
}
