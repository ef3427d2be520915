//! The dnsd binary as systemd runs it: it blocks from the compiled lists in /data right
//! after a start, before any download can succeed, stops cleanly on SIGTERM, and refuses
//! an invalid config with exit code 2.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::Command;
use std::time::{Duration, Instant};

use appliance::model::ListFormat;
use common::{Killed, answers, ask_until, dnsd, free_addr};
use dnsd::compiled::CompiledList;
use hickory_proto::rr::RecordType;

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

    let addr = free_addr();
    let started = Instant::now();
    let d = Killed::spawn(
        dnsd(&cfg_path)
            // Not the system's /run/appliance/dnsd.sock, which another test may hold.
            .arg("--control")
            .arg(cfg_path.with_file_name("dnsd.sock"))
            .arg("--lists-dir")
            .arg(&lists)
            .arg("--listen")
            .arg(addr.to_string()),
    );
    let r = ask_until(
        addr,
        "x.ads.example.",
        RecordType::A,
        started + Duration::from_secs(10),
    )
    .expect("dnsd did not answer within 10 s of its start");
    assert_eq!(answers(&r), ["0.0.0.0"], "{r:?}");
    eprintln!("blocked {:?} after the start", started.elapsed());

    // SIGTERM: a clean stop with exit code 0.
    assert_eq!(d.terminate(Duration::from_secs(10)).code(), Some(0));
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

/// With DNS off dnsd must still tell systemd it is ready (dnsd.service is required by
/// appliance-healthy.target) and keep its control socket for applianced, serving no DNS.
#[test]
fn with_dns_disabled_it_says_ready_and_keeps_its_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("appliance.toml");
    std::fs::write(&cfg_path, "version = 1\n[dns]\nenabled = false\n").unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let control = dir.path().join("control.sock");
    let d = Killed::spawn(
        dnsd(&cfg_path)
            .arg("--lists-dir")
            .arg(dir.path().join("lists"))
            .arg("--control")
            .arg(&control)
            .env("NOTIFY_SOCKET", &notify_path),
    );
    let mut said = Vec::new();
    while !said.iter().any(|m: &String| m.starts_with("STATUS=")) {
        let mut buf = [0u8; 4096];
        let n = notify
            .recv(&mut buf)
            .expect("dnsd sent no READY and STATUS within 20 s");
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(said, ["READY=1", "STATUS=DNS disabled"]);

    let mut s = UnixStream::connect(&control).expect("no control socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /v1/status HTTP/1.1\r\nHost: dnsd\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"dnsd\""), "{reply}");

    assert_eq!(d.terminate(Duration::from_secs(10)).code(), Some(0));
}
