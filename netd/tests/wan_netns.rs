//! The WAN DHCPv4 client against a real server: an "internet" namespace runs dnsmasq on
//! one end of a veth, a router namespace runs `netd wan-dhcp` on the other. Root, `ip`
//! (iproute2) and `dnsmasq` are required; the test fails, never skips, without them.
//!
//! dnsmasq's shortest lease is 2 minutes; T1 and T2 (options 58, 59) are set to a few
//! seconds so that renewals, and the NAK after the server's range moved, come quickly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Netns, require_root, require_working, run};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

const CONFIG: &str = r#"version = 1
[interfaces.wan]
device = "wan"
ipv4 = "dhcp"
"#;

struct Lab {
    internet: Netns,
    router: Netns,
    dir: tempfile::TempDir,
    dnsmasq: Option<Child>,
    netd: Option<Child>,
}

fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::wait_until(what, TIMEOUT, f)
}

fn stop(child: &mut Option<Child>, name: &str) {
    if let Some(mut c) = child.take() {
        run(&["kill", "-TERM", &c.id().to_string()]);
        let status = c.wait().unwrap();
        assert!(status.success(), "{name} exited with {status} on SIGTERM");
    }
}

impl Lab {
    fn new() -> Self {
        require_root();
        require_working(&["ip", "-V"], "iproute2");
        require_working(&["dnsmasq", "--version"], "dnsmasq");
        let (internet, router) = common::internet_and_router("wan");
        router.ip("link set wan up");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("appliance.toml"), CONFIG).unwrap();
        Self {
            internet,
            router,
            dir,
            dnsmasq: None,
            netd: None,
        }
    }

    fn dns_file(&self) -> PathBuf {
        self.dir.path().join("run/wan-dns.json")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// dnsmasq serving `start..end`, with a fresh lease database when `forget` is set.
    fn start_dnsmasq(&mut self, start: &str, end: &str, forget: bool) {
        let leases = self.dir.path().join("dnsmasq.leases");
        if forget {
            let _ = std::fs::remove_file(&leases);
        }
        let child = common::dnsmasq(&self.internet, &leases)
            .args([
                "--log-dhcp",
                "--log-facility=-",
                &format!("--dhcp-range={start},{end},255.255.255.0,2m"),
                &format!("--dhcp-option=option:router,{SERVER}"),
                "--dhcp-option=option:dns-server,192.0.2.53,192.0.2.54",
                "--dhcp-option=option:T1,4",
                "--dhcp-option=option:T2,6",
            ])
            .spawn()
            .unwrap();
        self.dnsmasq = Some(child);
    }

    fn start_netd(&mut self) {
        let child = self
            .router
            .command(env!("CARGO_BIN_EXE_netd"))
            .arg("wan-dhcp")
            .arg("--config")
            .arg(self.dir.path().join("appliance.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--dns-file")
            .arg(self.dns_file())
            .env("RUST_LOG", "netd=debug,info")
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.netd = Some(child);
    }

    /// The IPv4 addresses on the router's `wan`.
    fn addresses(&self) -> Vec<Ipv4Addr> {
        let v = self.router.json("-4 addr show dev wan");
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["local"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The only address, once it lies in `lo..=hi`.
    fn wait_for_address(&self, lo: Ipv4Addr, hi: Ipv4Addr) -> Ipv4Addr {
        wait_until(
            &format!("one address in {lo}..{hi} on wan"),
            || match self.addresses()[..] {
                [a] if (lo..=hi).contains(&a) => Some(a),
                _ => None,
            },
        )
    }

    fn default_route(&self) -> Option<Value> {
        let v = self.router.json("-4 route show default");
        v.as_array()?.first().cloned()
    }

    fn dns(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(self.dns_file()).ok()?).ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in [&mut self.netd, &mut self.dnsmasq] {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn wan_lease_route_dns_renewal_nak_restart_and_release() {
    let mut lab = Lab::new();
    lab.start_dnsmasq("203.0.113.100", "203.0.113.150", true);
    lab.start_netd();

    // Bound: the address, the default route (proto dhcp), the DNS file, the stored lease.
    let first = lab.wait_for_address(ip("203.0.113.100"), ip("203.0.113.150"));
    let route = wait_until("the default route", || lab.default_route());
    assert_eq!(route["gateway"], SERVER.to_string());
    assert_eq!(route["dev"], "wan");
    assert_eq!(route["protocol"], "dhcp");
    let dns = wait_until("the DNS file", || lab.dns());
    assert_eq!(dns["version"], 1);
    assert_eq!(
        dns["links"]["wan"]["servers"],
        serde_json::json!(["192.0.2.53", "192.0.2.54"])
    );
    let stored = lab.state_dir().join("wan-wan.json");
    wait_until("the stored lease", || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&stored).ok()?).ok()?;
        (v["lease"]["address"] == format!("{first}/24")).then_some(())
    });

    // Renewal at T1 (4 s) keeps the address: the stored lease's ACK time moves on.
    let acquired = |p: &Path| -> Option<u64> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
        v["lease"]["acquired"].as_u64()
    };
    let t0 = acquired(&stored).unwrap();
    wait_until("a renewal", || (acquired(&stored)? > t0).then_some(()));
    assert_eq!(lab.addresses(), [first]);

    // The server forgets the lease and serves another range: the next renewal gets a NAK,
    // netd drops the address and binds a new one from the new range.
    stop(&mut lab.dnsmasq, "dnsmasq");
    lab.start_dnsmasq("203.0.113.200", "203.0.113.220", true);
    let second = lab.wait_for_address(ip("203.0.113.200"), ip("203.0.113.220"));
    assert_ne!(first, second);
    let route = wait_until("the default route after the NAK", || lab.default_route());
    assert_eq!(route["gateway"], SERVER.to_string());

    // Stop: the lease is released and the address, route and DNS entry removed.
    stop(&mut lab.netd, "netd wan-dhcp");
    assert!(lab.addresses().is_empty(), "{:?}", lab.addresses());
    assert!(lab.default_route().is_none());
    assert_eq!(lab.dns().unwrap()["links"], serde_json::json!({}));
    let leases = lab.dir.path().join("dnsmasq.leases");
    wait_until("dnsmasq to drop the released lease", || {
        let text = std::fs::read_to_string(&leases).ok()?;
        (!text.contains(&second.to_string())).then_some(())
    });

    // A restart asks for the stored address and gets it back.
    lab.start_netd();
    let third = lab.wait_for_address(ip("203.0.113.200"), ip("203.0.113.220"));
    assert_eq!(third, second);
    stop(&mut lab.netd, "netd wan-dhcp");
    stop(&mut lab.dnsmasq, "dnsmasq");
}
