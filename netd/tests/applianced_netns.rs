#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! Commit-confirm with real processes: `netd serve` and `applianced` run in a router
//! namespace, `applctl` drives them, and an admin namespace tries to reach the router:
//!
//! ```text
//!   admin ns                      router ns
//!   eth0 192.168.1.2 ──veth── lan0 192.168.1.1 (set by netd), TCP listener :7000
//! ```
//!
//! A firewall change that drops the admin's traffic, applied with a short confirm window
//! and never confirmed, must be reverted by applianced on its own; a confirmed one stays;
//! a change netd cannot apply leaves netd on the previous generation.
//!
//! Needs root, iproute2 and nftables; without them the test fails saying what is missing.

mod common;

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::Netns;

const PORT: u16 = 7000;
/// Short, so the test is quick; long enough for applctl to return and a probe to fail.
const WINDOW_SECS: u64 = 4;

const BASE: &str = r#"version = 1

[interfaces.lan]
device = "lan0"
addresses = ["192.168.1.1/24"]

[firewall.zones.lan]
interfaces = ["lan"]
input = "accept"
forward = "drop"
"#;

fn cut_off() -> String {
    BASE.replace("input = \"accept\"", "input = \"drop\"")
}

/// The binaries of the appliance crate beside netd's, built first when `cargo test` did
/// not build them.
fn appliance_bin(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_netd")).with_file_name(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "-p", "appliance", "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "building {name}: {out:?}");
    bin
}

struct Lab {
    router: Netns,
    admin: Netns,
    dir: tempfile::TempDir,
    applctl: PathBuf,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Lab {
    fn new() -> Self {
        common::require_root();
        common::require_working(&["ip", "netns", "list"], "iproute2");
        common::require_working(&["nft", "--version"], "nftables");
        let (applianced, applctl) = (appliance_bin("applianced"), appliance_bin("applctl"));
        let router = Netns::new("router");
        let admin = Netns::new("admin");
        router.ip(&format!(
            "link add lan0 type veth peer name eth0 netns {}",
            admin.name
        ));
        admin.ip("addr add 192.168.1.2/24 dev eth0");
        admin.ip("link set eth0 up");
        let mut lab = Self {
            router,
            admin,
            dir: tempfile::tempdir().unwrap(),
            applctl,
            children: Vec::new(),
        };
        // Generation 1, active before any daemon starts: netd applies it at start.
        std::fs::write(lab.path("base.toml"), BASE).unwrap();
        std::fs::write(lab.path("cut.toml"), cut_off()).unwrap();
        let out = lab.applctl(&["config", "save", lab.path("base.toml").to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let dir = lab.dir.path().to_owned();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let netd = lab
            .router
            .command(env!("CARGO_BIN_EXE_netd"))
            .args(["serve", "--socket"])
            .arg(lab.path("netd.sock"))
            .arg("--data-dir")
            .arg(lab.path("config"))
            .arg("--firewall-state")
            .arg(lab.path("firewall.json"))
            .stderr(log("netd.log"))
            .spawn()
            .unwrap();
        lab.children.push(netd);
        let applianced = lab
            .router
            .command(applianced.to_str().unwrap())
            .arg("--socket")
            .arg(lab.path("applianced.sock"))
            .arg("--state-dir")
            .arg(lab.path("state"))
            .arg("--data-dir")
            .arg(lab.path("config"))
            .arg("--netd-socket")
            .arg(lab.path("netd.sock"))
            .arg("--dnsd-socket")
            .arg(lab.path("dnsd.sock"))
            .arg("--stored-socket")
            .arg(lab.path("stored.sock"))
            // The API's accounts, certificate and fingerprint stay in the test's directory.
            .arg("--api-dir")
            .arg(lab.path("api"))
            .arg("--fingerprint-file")
            .arg(lab.path("api-fingerprint"))
            // tracing writes to stderr, as under systemd.
            .stderr(log("applianced.log"))
            .spawn()
            .unwrap();
        lab.children.push(applianced);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(lab.path("netd.sock").exists() && lab.path("applianced.sock").exists()) {
            assert!(
                Instant::now() < deadline,
                "the daemons did not open their sockets; netd: {}\napplianced: {}",
                lab.read("netd.log"),
                lab.read("applianced.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The listener the admin tries to reach.
        let (tx, rx) = std::sync::mpsc::channel();
        lab.router.spawn(move || {
            let l = TcpListener::bind(("0.0.0.0", PORT)).unwrap();
            tx.send(()).unwrap();
            for conn in l.incoming() {
                drop(conn);
            }
        });
        rx.recv().unwrap();
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn applctl(&self, args: &[&str]) -> Output {
        Command::new(&self.applctl)
            .args(args)
            .env("APPLIANCE_CONFIG_DIR", self.path("config"))
            .env("APPLIANCED_SOCKET", self.path("applianced.sock"))
            .output()
            .unwrap()
    }

    fn status(&self) -> Value {
        let out = self.applctl(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Whether the admin gets a TCP connection to the router now.
    fn admin_reaches(&self) -> bool {
        self.admin
            .spawn(|| {
                let addr = SocketAddr::from(([192, 168, 1, 1], PORT));
                TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                    .map(|mut s| {
                        let _ = s.read(&mut [0; 1]);
                    })
                    .is_ok()
            })
            .join()
            .unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "applctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_unconfirmed_lockout_is_reverted_and_a_confirmed_change_stays() {
    let lab = Lab::new();
    assert!(
        lab.admin_reaches(),
        "netd did not apply generation 1: {}",
        lab.read("netd.log")
    );
    assert_eq!(lab.status()["daemons"][0]["status"]["generation"], 1);

    // The lockout: applied, the admin is cut off, nobody confirms.
    let window = format!("{WINDOW_SECS}s");
    let applied = Instant::now();
    let out = ok(&lab.applctl(&[
        "apply",
        lab.path("cut.toml").to_str().unwrap(),
        "--confirm",
        &window,
    ]));
    assert!(out.contains("generation 2"), "{out}");
    assert!(
        !lab.admin_reaches(),
        "the firewall change did not cut the admin off"
    );
    let s = lab.status();
    assert_eq!(s["pending"]["generation"], 2, "{s}");
    // Reachable again within the window plus 2 s, without any confirm.
    let limit = applied + Duration::from_secs(WINDOW_SECS + 2);
    while !lab.admin_reaches() {
        assert!(
            Instant::now() < limit,
            "the admin is still cut off {} s after the apply; applianced: {}",
            WINDOW_SECS + 2,
            lab.read("applianced.log")
        );
    }
    let back = applied.elapsed();
    let s = lab.status();
    assert_eq!(s["active"], 1, "{s}");
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(s["daemons"][0]["status"]["generation"], 1, "{s}");
    let log = lab.read("applianced.log");
    let revert = log
        .lines()
        .find(|l| l.contains("no confirm in time: reverted"))
        .unwrap_or_else(|| panic!("applianced did not log the revert: {log}"));
    println!(
        "lockout reverted; admin back {:.1} s after the apply ({WINDOW_SECS} s window); {revert}",
        back.as_secs_f64()
    );

    // The same change, confirmed: it stays past the window.
    ok(&lab.applctl(&[
        "apply",
        lab.path("cut.toml").to_str().unwrap(),
        "--confirm",
        &window,
    ]));
    let out = ok(&lab.applctl(&["confirm"]));
    assert!(out.contains("confirmed"), "{out}");
    std::thread::sleep(Duration::from_secs(WINDOW_SECS + 1));
    let s = lab.status();
    assert_eq!(s["active"], 3, "{s}");
    assert!(s["pending"].is_null(), "{s}");
    assert_eq!(s["daemons"][0]["status"]["generation"], 3, "{s}");
    assert!(!lab.admin_reaches(), "the confirmed change did not stay");

    // A change netd refuses (a device the router does not have): netd's plan, which also
    // dry-runs the table with `nft -c`, refuses it, so applianced stops before any apply
    // and netd stays on generation 3.
    std::fs::write(lab.path("bad.toml"), BASE.replace("lan0", "nosuch0")).unwrap();
    let out = lab.applctl(&[
        "apply",
        lab.path("bad.toml").to_str().unwrap(),
        "--confirm",
        &window,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan of generation") && err.contains("on netd"),
        "{err}"
    );
    let s = lab.status();
    assert_eq!(s["active"], 3, "{s}");
    assert_eq!(s["daemons"][0]["status"]["generation"], 3, "{s}");
    assert!(s["pending"].is_null(), "{s}");

    // Back to generation 1 by rollback.
    ok(&lab.applctl(&["rollback", "1"]));
    assert!(lab.admin_reaches());
}
