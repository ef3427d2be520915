//! The WAN DHCPv4 client against a real server: an "internet" namespace runs dnsmasq on
//! one end of a veth, a router namespace runs `netd wan-dhcp` on the other. Root, `ip`
//! (iproute2) and `dnsmasq` are required; the test fails, never skips, without them.
//!
//! dnsmasq's shortest lease is 2 minutes; T1 and T2 (options 58, 59) are set to a few
//! seconds so that renewals, the NAK after the server's range moved, and the rebind to a
//! second server come quickly.

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
        self.start_server(
            "dnsmasq.leases",
            &format!("--dhcp-range={start},{end},255.255.255.0,2m"),
            SERVER,
            "192.0.2.53,192.0.2.54",
            forget,
            (4, 6),
        );
    }

    /// dnsmasq with lease database `leases` (in the test's directory), `range`, `router`
    /// as the router option, `dns` as the DNS servers and T1, T2 in seconds.
    fn start_server(
        &mut self,
        leases: &str,
        range: &str,
        router: Ipv4Addr,
        dns: &str,
        forget: bool,
        (t1, t2): (u32, u32),
    ) {
        let leases = self.dir.path().join(leases);
        if forget {
            let _ = std::fs::remove_file(&leases);
        }
        let child = common::dnsmasq(&self.internet, &leases)
            .args([
                "--log-dhcp",
                "--log-facility=-",
                range,
                &format!("--dhcp-option=option:router,{router}"),
                &format!("--dhcp-option=option:dns-server,{dns}"),
                &format!("--dhcp-option=option:T1,{t1}"),
                &format!("--dhcp-option=option:T2,{t2}"),
            ])
            .spawn()
            .unwrap();
        self.dnsmasq = Some(child);
    }

    /// The lease netd stored, once there is one.
    fn stored_lease(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.state_dir().join("wan-wan.json")).ok()?;
        serde_json::from_str::<Value>(&text)
            .ok()?
            .get("lease")
            .cloned()
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

/// RFC 2131 4.4.5: the granting server is gone, so the unicast renewal at T1 goes nowhere
/// and the broadcast at T2 reaches another server on the link, which takes the lease over
/// (dnsmasq with `--dhcp-authoritative` accepts a rebinding REQUEST for an address of its
/// range it has no record of). The client keeps its address, and takes the new server's
/// router, DNS servers and identifier (its DHCPRELEASE goes there).
#[test]
fn wan_rebinds_to_a_second_server_once_the_first_is_gone() {
    const SECOND: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    let mut lab = Lab::new();
    // T1 8 s, T2 12 s: time enough to swap the servers before T1, and a renewal the first
    // server still answered only moves the timers on.
    lab.start_server(
        "first.leases",
        "--dhcp-range=203.0.113.100,203.0.113.150,255.255.255.0,2m",
        SERVER,
        "192.0.2.53,192.0.2.54",
        true,
        (8, 12),
    );
    lab.start_netd();
    let first = lab.wait_for_address(ip("203.0.113.100"), ip("203.0.113.150"));
    let lease = wait_until("the stored lease", || {
        lab.stored_lease()
            .filter(|l| l["address"] == format!("{first}/24"))
    });
    assert_eq!(lease["server"], SERVER.to_string());

    // The first server goes, with its address: a unicast renewal to 203.0.113.1 is lost.
    // The second answers on 203.0.113.2, the same link and subnet.
    stop(&mut lab.dnsmasq, "the first dnsmasq");
    lab.internet.ip(&format!("addr del {SERVER}/24 dev up0"));
    lab.internet.ip(&format!("addr add {SECOND}/24 dev up0"));
    lab.start_server(
        "second.leases",
        "--dhcp-range=203.0.113.100,203.0.113.150,255.255.255.0,2m",
        SECOND,
        "192.0.2.63",
        true,
        (8, 12),
    );

    // The rebind: same address, the second server's identifier, router and DNS servers.
    let lease = common::wait_until(
        "a lease from the second server",
        Duration::from_secs(120),
        || {
            lab.stored_lease()
                .filter(|l| l["server"] == SECOND.to_string())
        },
    );
    assert_eq!(lease["address"], format!("{first}/24"));
    assert_eq!(lease["router"], SECOND.to_string());
    assert_eq!(lease["dns"], serde_json::json!(["192.0.2.63"]));
    assert_eq!(lab.addresses(), [first], "the address never left the link");
    let route = wait_until("the default route via the second server", || {
        lab.default_route()
            .filter(|r| r["gateway"] == SECOND.to_string())
    });
    assert_eq!(route["protocol"], "dhcp");
    assert_eq!(
        lab.router
            .json("-4 route show default")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let dns = wait_until("the second server's DNS servers", || {
        lab.dns()
            .filter(|d| d["links"]["wan"]["servers"] == serde_json::json!(["192.0.2.63"]))
    });
    assert_eq!(dns["version"], 1);
    let leases = lab.dir.path().join("second.leases");
    assert!(
        std::fs::read_to_string(&leases)
            .unwrap()
            .contains(&first.to_string()),
        "the second server has the lease"
    );

    // Stop: the release goes to the second server, which forgets the lease.
    stop(&mut lab.netd, "netd wan-dhcp");
    assert!(lab.addresses().is_empty(), "{:?}", lab.addresses());
    wait_until("the second dnsmasq to drop the released lease", || {
        let text = std::fs::read_to_string(&leases).ok()?;
        (!text.contains(&first.to_string())).then_some(())
    });
    stop(&mut lab.dnsmasq, "the second dnsmasq");
}
