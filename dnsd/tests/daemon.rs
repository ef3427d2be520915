//! The dnsd binary as systemd runs it: it blocks from the compiled lists in /data right
//! after a start, before any download can succeed, stops cleanly on SIGTERM, and refuses
//! an invalid config with exit code 2.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance::model::ListFormat;
use dnsd::compiled::CompiledList;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP at the time of the check.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Asks `name` over UDP, retrying until `deadline`; `None` if nothing answered.
fn ask(server: SocketAddr, name: &str, deadline: Instant) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let bytes = m.to_vec().unwrap();
    while Instant::now() < deadline {
        sock.send_to(&bytes, server).unwrap();
        let mut buf = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Message::from_vec(&buf[..n]).ok();
        }
    }
    None
}

fn a_records(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn blocks_from_the_stored_lists_before_any_download_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // The list server is unreachable: only the stored copy can block.
    let url = "http://127.0.0.1:9/hosts.txt";
    let cfg = format!(
        "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[dns.lists.ads]\nurl = \"{url}\"\nformat = \"hosts\"\n"
    );
    let cfg_path = dir.path().join("appliance.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let lists = dir.path().join("lists");
    let list = CompiledList::compile(dnsd::lists::parse(
        "0.0.0.0 ads.example\n",
        ListFormat::Hosts,
    ))
    .unwrap();
    list.save(&lists.join("ads.bin")).unwrap();
    let meta = dnsd::fetch::ListMeta {
        source: url.to_string(),
        checked_at: 0,
        ..Default::default()
    };
    std::fs::write(lists.join("ads.json"), serde_json::to_vec(&meta).unwrap()).unwrap();

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let mut d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_dnsd"))
            .arg("--config")
            .arg(&cfg_path)
            .arg("--lists-dir")
            .arg(&lists)
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let r = ask(addr, "x.ads.example.", started + Duration::from_secs(10))
        .expect("dnsd did not answer within 10 s of its start");
    assert_eq!(a_records(&r), ["0.0.0.0"], "{r:?}");
    eprintln!("blocked {:?} after the start", started.elapsed());

    // SIGTERM: a clean stop with exit code 0.
    let pid = d.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = d.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "dnsd did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_invalid_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("appliance.toml");
    std::fs::write(&cfg_path, "version = 1\n[dns]\nport = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dnsd"))
        .arg("--config")
        .arg(&cfg_path)
        .arg("--lists-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dns.port"), "{err}");
}
