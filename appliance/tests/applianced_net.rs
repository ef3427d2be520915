//! `applctl status net` and `GET /api/v1/network/status` with a real `netd serve`:
//!
//! ```text
//!   client ns                         router ns (netd serve)
//!   lan1 ── udhcpc ──────veth────── lan0, netd names it lan: 192.168.1.1/24, DHCP, nftables
//! ```
//!
//! netd applies the config, a DHCP client in its own namespace takes a lease, and
//! applianced (in the test's namespace, talking to netd over its Unix socket) passes netd's
//! status document through: over its socket to `applctl status net [--json]`, and over
//! HTTPS to a viewer's token and `applctl --remote`. With netd gone, both say so.
//!
//! Needs root (network namespaces, nftables) and busybox's udhcpc; it fails, never skips,
//! without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use appliance::api::tls;
use reqwest::StatusCode;
use serde_json::Value;

use common::{
    Children, VIEWER_PW, applctl, client_trusting, free_port, read_logs, sibling_bins, token,
    users_toml, wait_for,
};

const BASE: &str = r#"version = 1

[interfaces.lan]
device = "lan0"
addresses = ["192.168.1.1/24"]

[dhcp.lan]
start = "192.168.1.100"
end = "192.168.1.150"
lease_time = "1h"

[firewall.zones.lan]
interfaces = ["lan"]
input = "accept"
forward = "drop"

[[firewall.rules]]
name = "lan-ssh"
from = "lan"
protocol = "tcp"
ports = [22]
action = "accept"
"#;

/// A named network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Self {
        let name = format!("appl-net-{role}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// netd's status as applctl shows it, over applianced's socket.
fn net_json(socket: &Path) -> Value {
    let (code, out, err) = applctl(&[
        "status".as_ref(),
        "net".as_ref(),
        "--json".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn leases(doc: &Value) -> Vec<Value> {
    doc["net"]["dhcp"]["leases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netds_status_reaches_applctl_and_the_api() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it makes network namespaces and nftables rules for netd"
    );
    assert!(
        Command::new("udhcpc").arg("--help").output().is_ok(),
        "this test needs udhcpc (Debian package udhcpc)"
    );
    let (netd, _) = sibling_bins();
    let (dir, store) = common::daemon_dir();
    let p = |name: &str| dir.path().join(name);
    let log = |name: &str| std::fs::File::create(p(name)).unwrap();
    let first = store
        .commit(&format!("{BASE}\n{}", users_toml()), "test: base")
        .unwrap();
    store.activate(first).unwrap();

    let router = Netns::new("router");
    let client = Netns::new("client");
    sh(&format!(
        "ip -n {r} link add lan0 type veth peer name lan1 netns {c} && ip -n {c} link set lan1 up",
        r = router.0,
        c = client.0
    ));

    let mut children = Children(Vec::new());
    children.0.push(
        Command::new("ip")
            .args(["netns", "exec", &router.0])
            .arg(&netd)
            .args(common::netd_serve_args(dir.path()))
            .stdin(Stdio::null())
            .stderr(log("netd.log"))
            .spawn()
            .unwrap(),
    );
    wait_for(&mut children, &p("run/netd.sock"), dir.path());
    let api = free_port();
    children.start_applianced(dir.path(), &api.to_string());
    wait_for(&mut children, &p("run/api-fingerprint"), dir.path());
    let socket = p("run/applianced.sock");

    // A client takes a lease from netd's DHCP server (udhcpc quits once it has one).
    let out = Command::new("ip")
        .args(["netns", "exec", &client.0])
        .args([
            "udhcpc",
            "-i",
            "lan1",
            "-n",
            "-q",
            "-f",
            "-t",
            "10",
            "-T",
            "1",
            "-s",
            "/bin/true",
            "-x",
            "hostname:laptop",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udhcpc got no lease: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        read_logs(dir.path())
    );

    // The lease file is written after the ACK went out: wait for it to show.
    let mut doc = net_json(&socket);
    for _ in 0..50 {
        if !leases(&doc).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        doc = net_json(&socket);
    }
    assert_eq!(doc["daemon"], "netd", "{doc:#}");
    assert_eq!(doc["generation"].as_u64(), Some(first), "{doc:#}");
    let lan = doc["net"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "lan")
        .unwrap_or_else(|| panic!("no link lan in {doc:#}"))
        .clone();
    assert_eq!(lan["addresses"], serde_json::json!(["192.168.1.1/24"]));
    assert!(lan["rx_bytes"].as_u64().unwrap() > 0, "{lan}");
    let lease = leases(&doc)
        .into_iter()
        .find(|l| l["hostname"] == "laptop")
        .unwrap_or_else(|| panic!("no lease of laptop in {doc:#}"));
    assert_eq!(lease["active"], true);
    let ip = lease["ip"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("192.168.1.1"), "{ip}");
    let rules = doc["net"]["firewall_rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["rule"].as_str().unwrap().contains("lan-ssh")),
        "the rule counters list the config's rule: {rules:#?}"
    );

    // The same as tables.
    let status_net = || {
        applctl(&[
            "status".as_ref(),
            "net".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
        ])
    };
    let (code, text, err) = status_net();
    assert_eq!(code, 0, "{text}{err}");
    for want in [
        &format!("netd: generation {first}"),
        "192.168.1.1/24",
        "laptop",
        ip.as_str(),
        "active",
        "lan-ssh",
        "Firewall rule counters",
        "WireGuard",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }

    // Over HTTPS, for a viewer: the API's document and applctl --remote.
    let http = client_trusting(&p("api").join(tls::CERT_FILE));
    let base = format!("https://{api}/api/v1");
    let r = http
        .get(format!("{base}/network/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let viewer = token(&http, &base, "victor", VIEWER_PW).await;
    let as_viewer = async || {
        http.get(format!("{base}/network/status"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap()
    };
    let r = as_viewer().await;
    assert_eq!(r.status(), StatusCode::OK);
    let remote: Value = r.json().await.unwrap();
    assert!(
        leases(&remote).iter().any(|l| l["ip"] == ip.as_str()),
        "{remote:#}"
    );
    assert!(remote["net"]["firewall_rules"].is_array(), "{remote:#}");
    let token_file = p("viewer.token");
    std::fs::write(&token_file, format!("{viewer}\n")).unwrap();
    let fingerprint = std::fs::read_to_string(p("run/api-fingerprint")).unwrap();
    let url = format!("https://{api}");
    let fingerprint = fingerprint.trim();
    let remote_args: Vec<&OsStr> = vec![
        "status".as_ref(),
        "net".as_ref(),
        "--remote".as_ref(),
        url.as_ref(),
        "--token-file".as_ref(),
        token_file.as_os_str(),
        "--fingerprint".as_ref(),
        fingerprint.as_ref(),
    ];
    let (code, text, err) = applctl(&remote_args);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains("laptop") && text.contains("lan-ssh"),
        "{text}"
    );

    // netd gone: applctl exits 1 naming it, the API answers 503 naming it.
    let mut netd_child = children.0.remove(0);
    netd_child.kill().unwrap();
    netd_child.wait().unwrap();
    let (code, out, err) = status_net();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("netd does not answer"), "{err}");
    let r = as_viewer().await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("netd does not answer"),
        "{body}"
    );
}
