//! The control socket of the real dnsd binary: dnsmasq as its upstream on loopback, queries
//! sent with dig, then stats, log, check, pause/resume, reload and metrics over the socket,
//! the query log across a restart, and `applctl dns ...` against the same daemon.
//!
//! Needs the Debian packages dnsmasq-base and bind9-dnsutils; a missing tool fails the
//! test. The applctl test needs the applctl binary, which `cargo test --workspace` builds;
//! alone, this test builds it with cargo.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use appliance::model::ListFormat;
use common::{Killed, dnsd, free_port, require};
use dnsd::compiled::CompiledList;
use serde_json::{Value, json};

const UPSTREAM_IP: &str = "127.0.0.53";

fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(require("dig", "bind9-dnsutils"))
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=2",
            "+short",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "dig {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// dnsmasq answering the test names, started and checked with dig.
fn dnsmasq() -> (Killed, SocketAddr) {
    let bin = require("dnsmasq", "dnsmasq-base");
    for _ in 0..5 {
        let port = free_port(UPSTREAM_IP);
        let addr: SocketAddr = format!("{UPSTREAM_IP}:{port}").parse().unwrap();
        let child = Killed(
            Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--pid-file=",
                    &format!("--listen-address={UPSTREAM_IP}"),
                    &format!("--port={port}"),
                    "--local-ttl=300",
                    "--address=/fwd.test/192.0.2.10",
                    "--address=/ads.test/192.0.2.66",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let out = Command::new(require("dig", "bind9-dnsutils"))
                .args([&format!("@{UPSTREAM_IP}"), "-p", &port.to_string()])
                .args(["+time=1", "+tries=1", "+short", "fwd.test"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "192.0.2.10" {
                return (child, addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("dnsmasq did not start on {UPSTREAM_IP}");
}

/// One HTTP/1.1 request over the control socket: status and JSON (or text) body.
fn http(sock: &Path, method: &str, target: &str, body: Option<Value>) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    // One write: the server may answer (and close) as soon as it has what it reads, so a
    // request written piece by piece could meet a closed socket.
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: dnsd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn get(sock: &Path, target: &str) -> Value {
    let (status, body) = http(sock, "GET", target, None);
    assert_eq!(status, 200, "GET {target}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A POST whose body comes a moment after its head, as from a slow client: the status the
/// daemon answers once it has read the whole request.
fn post_late_body(sock: &Path, target: &str, body: &str) -> u16 {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: dnsd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(body.as_bytes())
        .expect("the daemon closed the connection before reading the body");
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

fn post(sock: &Path, target: &str, body: Value) -> (u16, Value) {
    let (status, body) = http(sock, "POST", target, Some(body));
    (status, serde_json::from_str(&body).unwrap())
}

struct Setup {
    dir: tempfile::TempDir,
    upstream: (Killed, SocketAddr),
    dns: SocketAddr,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let upstream = dnsmasq();
        let url = "http://127.0.0.1:9/hosts.txt";
        let cfg = format!(
            "version = 1\n[dns]\nupstreams = [\"{}\"]\nquery_log_size = 262144\n\
             [dns.lists.ads]\nurl = \"{url}\"\nformat = \"hosts\"\n\
             [dns.groups.kids]\ncidrs = [\"127.0.0.9/32\"]\nlists = [\"ads\"]\n",
            upstream.1
        );
        std::fs::write(dir.path().join("appliance.toml"), cfg).unwrap();
        let lists = dir.path().join("lists");
        let list =
            CompiledList::compile(dnsd::lists::parse("0.0.0.0 ads.test\n", ListFormat::Hosts))
                .unwrap();
        list.save(&lists.join("ads.bin")).unwrap();
        let meta = dnsd::fetch::ListMeta {
            source: url.to_string(),
            checked_at: u64::MAX / 2,
            ..Default::default()
        };
        std::fs::write(lists.join("ads.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
        let dns = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap();
        Self { dir, upstream, dns }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("run/dnsd.sock")
    }

    fn spawn(&self, dns: SocketAddr, log: &str) -> Killed {
        let d = self.dir.path();
        Killed::spawn(
            dnsd(&d.join("appliance.toml"))
                .arg("--lists-dir")
                .arg(d.join("lists"))
                .arg("--listen")
                .arg(dns.to_string())
                .arg("--control")
                .arg(self.sock())
                .arg("--query-log")
                .arg(d.join(log)),
        )
    }

    /// Starts dnsd and waits until its socket answers.
    fn start(&self) -> Killed {
        let child = self.spawn(self.dns, "querylog");
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(self.sock()).is_err() {
            assert!(Instant::now() < deadline, "no control socket within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }
}

/// Polls `GET target` until `ok` holds (the writer thread fills stats and log shortly
/// after each answer).
fn wait_for(sock: &Path, target: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = get(sock, target);
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "GET {target} never satisfied: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(d: Killed) {
    assert_eq!(d.terminate(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn the_control_socket_reports_explains_pauses_and_keeps_the_log_across_a_restart() {
    let s = Setup::new();
    let sock = s.sock();
    let d = s.start();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);

    assert_eq!(dig(s.dns, &["fwd.test"]), "192.0.2.10");
    assert_eq!(dig(s.dns, &["fwd.test"]), "192.0.2.10");
    assert_eq!(dig(s.dns, &["ads.test"]), "0.0.0.0");
    assert_eq!(dig(s.dns, &["x.ads.test"]), "0.0.0.0");

    let stats = wait_for(&sock, "/stats", |v| {
        v["query_log"]["records"].as_u64() >= Some(4)
    });
    let q = &stats["queries"];
    assert_eq!(q["blocked"], 2, "{stats:#}");
    assert_eq!(q["forwarded"], 1, "{stats:#}");
    assert_eq!(q["cached"], 1, "{stats:#}");
    assert_eq!(stats["blocked_share"], 0.5);
    assert_eq!(stats["top_domains"][0]["name"], "fwd.test");
    assert_eq!(stats["top_domains"][0]["count"], 2);
    let blocked: Vec<&str> = stats["top_blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(blocked, ["ads.test", "x.ads.test"]);
    assert_eq!(stats["top_clients"][0]["client"], "127.0.0.1");
    assert_eq!(stats["top_clients"][0]["count"], 4);
    let up = &stats["upstreams"][0];
    assert_eq!(up["upstream"], s.upstream.1.to_string());
    assert_eq!(up["answers"], 1);
    assert_eq!(up["latency_samples"], 1);
    assert!(up["latency_p50_ms"].as_f64().is_some(), "{up}");

    let log = get(&sock, "/log?limit=10");
    let recs = log["records"].as_array().unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0]["name"], "x.ads.test", "newest first: {log:#}");
    assert_eq!(recs[0]["outcome"], "blocked");
    assert_eq!(recs[0]["source"], "list ads");
    assert_eq!(recs[0]["rule"], "ads.test");
    assert_eq!(recs[0]["type"], "A");
    assert_eq!(recs[0]["rcode"], "NOERROR");
    assert_eq!(recs[2]["outcome"], "cached");
    assert_eq!(recs[3]["outcome"], "forwarded");
    assert_eq!(recs[3]["upstream"], s.upstream.1.to_string());
    let only = get(&sock, "/log?domain=ads.test&client=127.0.0.1");
    assert_eq!(only["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&sock, "/log?limit=1")["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(get(&sock, "/log?client=10.0.0.1")["records"], json!([]));

    let c = get(&sock, "/check?name=x.ads.test");
    assert_eq!(c["blocked"], true);
    assert_eq!(c["source"], "list ads");
    assert_eq!(c["rule"], "ads.test");
    assert!(
        c["explanation"].as_str().unwrap().contains("list ads"),
        "{c}"
    );
    let c = get(&sock, "/check?name=fwd.test&client=127.0.0.9");
    assert_eq!(c["blocked"], false);
    assert_eq!(c["group"], "kids");

    // Bad requests name their parameter.
    for (target, param) in [
        ("/check", "name"),
        ("/check?name=a%20b", "name"),
        ("/check?name=x.test&client=nope", "client"),
        ("/log?limit=abc", "limit"),
        ("/log?limit=0", "limit"),
        ("/log?domain=", "domain"),
        ("/stats?top=1000", "top"),
    ] {
        let (status, body) = http(&sock, "GET", target, None);
        assert_eq!(status, 400, "{target}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["parameter"], param, "{target}: {body}");
    }
    let (status, v) = post(&sock, "/pause", json!({ "minutes": 0 }));
    assert_eq!(
        (status, v["parameter"].as_str()),
        (400, Some("minutes")),
        "{v}"
    );
    let (status, v) = post(&sock, "/pause", json!({ "minutes": 5, "group": "nope" }));
    assert_eq!(
        (status, v["parameter"].as_str()),
        (400, Some("group")),
        "{v}"
    );
    let (status, _) = post(&sock, "/pause", json!({ "minutes": 5, "extra": 1 }));
    assert_eq!(status, 400);
    let (status, v) = post(&sock, "/reload", json!({ "force": true }));
    assert_eq!(status, 400, "a reload takes no fields: {v}");
    assert_eq!(http(&sock, "GET", "/nope", None).0, 404);
    assert_eq!(http(&sock, "GET", "/pause", None).0, 405);
    assert_eq!(http(&sock, "POST", "/stats", None).0, 405);
    // Every answer waits for the body, an error's too (hyper drops the connection of an
    // unread body, and a client still writing it met EPIPE).
    assert_eq!(post_late_body(&sock, "/stats", "{}"), 405);
    assert_eq!(post_late_body(&sock, "/resume", "{}"), 200);

    // Pause: the blocked name resolves upstream; resume: blocked again.
    let (status, v) = post(&sock, "/pause", json!({ "minutes": 5 }));
    assert_eq!(status, 200, "{v}");
    assert_eq!(dig(s.dns, &["ads.test"]), "192.0.2.66");
    let c = get(&sock, "/check?name=ads.test");
    assert_eq!(
        (c["blocked"].as_bool(), c["paused"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(get(&sock, "/status")["pauses"][0]["group"], Value::Null);
    let (status, _) = post(&sock, "/resume", json!({}));
    assert_eq!(status, 200);
    assert_eq!(dig(s.dns, &["ads.test"]), "0.0.0.0");
    // A group's pause leaves the other clients blocked.
    let (status, _) = post(&sock, "/pause", json!({ "minutes": 5, "group": "kids" }));
    assert_eq!(status, 200);
    assert_eq!(
        get(&sock, "/check?name=ads.test&client=127.0.0.9")["paused"],
        true
    );
    assert_eq!(get(&sock, "/check?name=ads.test")["blocked"], true);

    let (status, v) = post(&sock, "/reload", json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["restart_needed_for"], json!([]));
    assert_eq!(
        get(&sock, "/check?name=ads.test&client=127.0.0.9")["paused"],
        true,
        "a reload keeps pauses"
    );

    let (status, metrics) = http(&sock, "GET", "/metrics", None);
    assert_eq!(status, 200);
    for line in [
        "dnsd_queries_total{outcome=\"blocked\"} 3\n",
        "dnsd_blocklist_rules{list=\"ads\"} 1\n",
        "# TYPE dnsd_query_duration_seconds histogram\n",
        "# TYPE dnsd_upstream_duration_seconds histogram\n",
        "dnsd_querylog_dropped_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    let status = get(&sock, "/status");
    assert_eq!(status["lists"][0]["name"], "ads");
    let before = wait_for(&sock, "/log?limit=100", |v| {
        v["records"].as_array().unwrap().len() == 6
    });

    // The log survives a restart.
    stop(d);
    assert!(!sock.exists(), "the socket is removed on a clean stop");
    let d = s.start();
    let after = get(&sock, "/log?limit=100");
    assert_eq!(after["records"], before["records"]);
    drop(d);
}

#[test]
fn a_second_dnsd_serves_dns_and_leaves_a_live_socket_alone() {
    let s = Setup::new();
    let sock = s.sock();
    let _first = s.start();
    let other: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let second = s.spawn(other, "querylog2");
    // Its start has no socket to wait for: ask until it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(require("dig", "bind9-dnsutils"))
            .args([&format!("@{}", other.ip()), "-p", &other.port().to_string()])
            .args(["+time=1", "+tries=1", "+short", "ads.test"])
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0.0.0.0");
            break;
        }
        assert!(Instant::now() < deadline, "the second dnsd never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(second);
    assert_eq!(get(&sock, "/status")["lists"][0]["name"], "ads");
}

/// The applctl binary beside dnsd's, built first when `cargo test` did not build it.
fn applctl() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_dnsd")).with_file_name("applctl");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "-p", "appliance", "--bin", "applctl"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "building applctl: {out:?}");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

fn applctl_run(bin: &Path, sock: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("dns")
        .args(args)
        .env("DNSD_SOCKET", sock)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn applctl_dns_drives_the_daemon() {
    let bin = applctl();
    let s = Setup::new();
    let sock = s.sock();
    let _d = s.start();
    assert_eq!(dig(s.dns, &["ads.test"]), "0.0.0.0");
    assert_eq!(dig(s.dns, &["fwd.test"]), "192.0.2.10");
    wait_for(&sock, "/stats", |v| {
        v["query_log"]["records"].as_u64() >= Some(2)
    });

    let o = applctl_run(&bin, &sock, &["stats"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("queries 2: blocked 1 (50.0%)"), "{t}");
    assert!(t.contains("Top blocked:\n         1  ads.test\n"), "{t}");

    let o = applctl_run(&bin, &sock, &["log", "--domain", "ads.test"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("ads.test  blocked by ads.test of list ads  NOERROR"),
        "{t}"
    );
    assert!(!t.contains("fwd.test"), "{t}");

    let o = applctl_run(&bin, &sock, &["log", "--json", "--limit", "1"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["records"][0]["name"], "fwd.test");

    let o = applctl_run(&bin, &sock, &["check", "www.ads.test"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("www.ads.test is blocked for group default by rule ads.test of list ads"),
        "{}",
        text(&o)
    );
    let o = applctl_run(&bin, &sock, &["check", "fwd.test", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["blocked"], false);

    let o = applctl_run(&bin, &sock, &["pause", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(dig(s.dns, &["ads.test"]), "192.0.2.66");
    let o = applctl_run(&bin, &sock, &["resume"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(dig(s.dns, &["ads.test"]), "0.0.0.0");
    let o = applctl_run(&bin, &sock, &["reload"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("reloaded"), "{}", text(&o));

    // Bad input exits 2 with dnsd's reason; no daemon exits 1.
    let o = applctl_run(&bin, &sock, &["pause", "5", "--group", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no group \"nope\""), "{}", text(&o));
    let o = applctl_run(&bin, &sock, &["check", "not a name"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = applctl_run(&bin, &sock, &["pause", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = Command::new(&bin)
        .args(["dns", "stats", "--socket"])
        .arg(s.dir.path().join("absent.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot connect"), "{}", text(&o));
}
