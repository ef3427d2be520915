//! The dnsd binary answering names of DHCP clients from netd's lease file: A and PTR for
//! live leases in the local domain, nothing for expired leases or unusable hostnames, the
//! config's names winning over a client's claim, and a rewritten file taken up while dnsd
//! runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance::leases::{self, Lease};
use appliance::types::MacAddr;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn lease(mac: &str, ip: &str, host: &str, expires: Option<u64>) -> Lease {
    Lease {
        mac: MacAddr::parse(mac).unwrap(),
        ip: ip.parse().unwrap(),
        hostname: Some(host.to_owned()),
        expires,
    }
}

/// Asks over UDP until something answers (dnsd may still be starting).
fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut m = Message::query();
    m.metadata.id = 77;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let bytes = m.to_vec().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        sock.send_to(&bytes, server).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Message::from_vec(&buf[..n]).unwrap();
        }
    }
    panic!("no answer from {server} within 20 s");
}

fn data(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::PTR(p) => p.0.to_ascii(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Polls until `name` answers `want` (the file is checked every two seconds).
fn wait_for(server: SocketAddr, name: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = data(&ask(server, name, RecordType::A));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still answers {got:?}, not {want:?}, 20 s after the lease file changed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(dir: &Path, addr: SocketAddr) -> Daemon {
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_dnsd"))
            .arg("--config")
            .arg(dir.join("appliance.toml"))
            .arg("--lists-dir")
            .arg(dir.join("lists"))
            .arg("--leases")
            .arg(dir.join("dhcp/leases.json"))
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn lease_names_are_served_and_follow_the_lease_file() {
    let dir = tempfile::tempdir().unwrap();
    // No upstream: a name that is not local fails at once with SERVFAIL.
    std::fs::write(
        dir.path().join("appliance.toml"),
        r#"
version = 1
[system]
hostname = "gw"
domain = "home.arpa"
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24"]
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5"]
"#,
    )
    .unwrap();
    let file = dir.path().join("dhcp/leases.json");
    let t = now();
    leases::write(
        &file,
        &[
            lease(
                "52:54:00:00:00:01",
                "192.168.1.50",
                "Laptop",
                Some(t + 3600),
            ),
            lease("52:54:00:00:00:02", "192.168.1.51", "gone", Some(t - 10)),
            lease("52:54:00:00:00:03", "192.168.1.52", "John's Phone", None),
            // Claims of the config's name, the router's name and the NAS's address.
            lease("52:54:00:00:00:04", "192.168.1.60", "nas", None),
            lease("52:54:00:00:00:05", "192.168.1.61", "gw", None),
            lease("52:54:00:00:00:06", "192.168.1.5", "impostor", None),
        ],
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _d = start(dir.path(), addr);

    let r = ask(addr, "laptop.home.arpa.", RecordType::A);
    assert_eq!(data(&r), ["192.168.1.50"]);
    assert!(r.metadata.authoritative);
    let r = ask(addr, "50.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&r), ["laptop.home.arpa."]);
    for name in ["gone.home.arpa.", "laptop."] {
        let r = ask(addr, name, RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{name}");
    }
    let r = ask(addr, "51.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "expired");
    let r = ask(addr, "52.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::ServFail,
        "no name for an unusable hostname"
    );
    // The config wins.
    assert_eq!(
        data(&ask(addr, "nas.home.arpa.", RecordType::A)),
        ["192.168.1.5"]
    );
    assert_eq!(
        data(&ask(addr, "gw.home.arpa.", RecordType::A)),
        ["192.168.1.1"]
    );
    assert_eq!(
        data(&ask(addr, "5.1.168.192.in-addr.arpa.", RecordType::PTR)),
        ["nas.home.arpa."]
    );
    let r = ask(addr, "61.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::ServFail,
        "a client named like the router gets no reverse name"
    );
    assert_eq!(
        data(&ask(addr, "impostor.home.arpa.", RecordType::A)),
        ["192.168.1.5"],
        "the client keeps its name; only the reverse name is the config's"
    );

    // netd hands out a new lease and the laptop's runs out: dnsd follows without a restart.
    leases::write(
        &file,
        &[
            lease("52:54:00:00:00:01", "192.168.1.50", "laptop", Some(t - 1)),
            lease("52:54:00:00:00:07", "192.168.1.70", "phone", Some(t + 3600)),
        ],
    )
    .unwrap();
    wait_for(addr, "phone.home.arpa.", &["192.168.1.70"]);
    let r = ask(addr, "laptop.home.arpa.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
}
