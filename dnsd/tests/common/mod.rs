//! Helpers shared by dnsd's integration tests: the dnsd binary as a child process that is
//! killed when the test ends, free ports, the host tools a test needs, and plain DNS
//! questions over UDP.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::model::ListFormat;
use dnsd::compiled::CompiledList;
use dnsd::policy::{Lists, Policy};
use dnsd::server::Resolver;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// The start of every test config: the gateway `gw.home.arpa` on the LAN 192.168.1.1/24;
/// a test appends its own `[dns]` section.
pub const GATEWAY: &str = r#"
version = 1
[system]
hostname = "gw"
domain = "home.arpa"
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24"]
"#;

/// The list `ads` compiled from `entries` (one name a line), as the only list.
pub fn ads_lists(entries: &str) -> Lists {
    let mut lists = Lists::new();
    let list = CompiledList::compile(dnsd::lists::parse(entries, ListFormat::Auto)).unwrap();
    lists.insert("ads".into(), Arc::new(list));
    lists
}

/// The filter policy of `cfg` with [`ads_lists`].
pub fn policy_with_ads(cfg: &appliance::Config, entries: &str) -> Arc<Policy> {
    Arc::new(Policy::build(cfg, &ads_lists(entries)).unwrap())
}

/// A resolver for `cfg` filtering with [`policy_with_ads`].
pub fn resolver_with_ads(cfg: &appliance::Config, entries: &str) -> Arc<Resolver> {
    Arc::new(Resolver::new(cfg, policy_with_ads(cfg, entries)))
}

/// A child process killed on drop, so that a failing test leaves no daemon behind.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    pub fn spawn(cmd: &mut Command) -> Self {
        Killed(cmd.spawn().unwrap())
    }

    /// Stops the process with SIGTERM, as systemd does, and returns how it exited.
    pub fn terminate(mut self, within: Duration) -> ExitStatus {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not stop within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics if the process has already exited: a daemon that died would otherwise show
    /// up later as a confusing timeout.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(s) = self.0.try_wait().unwrap() {
            panic!("{what} exited: {s}");
        }
    }
}

/// The dnsd binary under test reading `config`, logging warnings to the test's stderr; the
/// caller adds the rest of the command line and starts it with [`Killed::spawn`].
pub fn dnsd(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dnsd"));
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// A port on `ip` that is free for both UDP and TCP at the time of the check (DNS servers
/// listen on both).
pub fn free_port(ip: &str) -> u16 {
    loop {
        let udp = UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// `127.0.0.1:<a port free for UDP and TCP>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")))
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of a host tool, or a failure that names the Debian package to install: a test
/// that cannot run must fail, not pass.
pub fn require(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is needed by this test and is not installed: apt-get install -y {package}"
            )
        })
}

/// A recursive query for `name` and `qtype`.
pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

/// Asks over UDP, resending every 200 ms until something answers or `deadline` passes (a
/// daemon may still be starting); `None` if nothing answered.
pub fn ask_until(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    deadline: Instant,
) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let bytes = query(name, qtype).to_vec().unwrap();
    while Instant::now() < deadline {
        sock.send_to(&bytes, server).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Message::from_vec(&buf[..n]).ok();
        }
    }
    None
}

/// Like [`ask_until`] with 20 s, failing the test when nothing answers.
pub fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    ask_until(
        server,
        name,
        qtype,
        Instant::now() + Duration::from_secs(20),
    )
    .unwrap_or_else(|| panic!("no answer from {server} for {name} within 20 s"))
}

/// The answer section as text: addresses for A and AAAA, names for PTR, anything else as
/// its debug form.
pub fn answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::PTR(p) => p.0.to_ascii(),
            other => format!("{other:?}"),
        })
        .collect()
}
