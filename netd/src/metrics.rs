//! netd's status document and its Prometheus text: links with their addresses and byte
//! counters, the WAN lease, IPv6 (SLAAC uplinks and advertised prefixes), DHCP leases,
//! WireGuard peers, firewall rule counters. The document is built from what netd reads
//! back (the links adapter's [`Observed`], the kernel's rule dump, the lease files, the WireGuard
//! status), and the metrics are rendered from the document, so the two never disagree.
//! docs/network.md ("status and metrics") documents the shape.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use appliance::Config;
use appliance::model::{Addressed, Ipv6Mode};
use ipnet::IpNet;
use serde_json::{Value, json};

use crate::firewall::{Firewall, Nft, RuleCounters};
use crate::links::{Links, Netlink, Observed};
use crate::wireguard::{KernelWg, WgKernel, cli::peer_names_of, cli::status_json};

/// Where [`collect`] reads the files of the DHCP services, and what it includes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// The DHCP state directory: the LAN server's `leases.json` and the WAN client's
    /// `wan-<link>.json`.
    pub dhcp_dir: Option<&'a Path>,
    /// The applied config: peer names, the WAN's DHCP links, the advertised links.
    pub cfg: Option<&'a Config>,
    /// Whether to read the firewall's rule counters (one netlink rule dump).
    pub counters: bool,
}

/// The whole document from the kernel: links through `links`' adapter, the rules of
/// `firewall`'s table (only with `sources.counters`), the lease files, and WireGuard. A
/// part that cannot be read is reported as `{"error": ...}` in its place; the rest still
/// is. Blocking (netlink, nft): call it off the async runtime.
pub fn collect<N: Netlink, F: Nft>(
    links: &mut Links<N>,
    firewall: &Firewall<F>,
    sources: Sources<'_>,
) -> Value {
    let observed = links.netlink_mut().observe();
    let (links, ipv6) = match &observed {
        Ok(o) => (links_status(o, sysfs_counters), ipv6_status(o, sources.cfg)),
        Err(e) => (
            json!({ "error": e.to_string() }),
            json!({ "error": e.to_string() }),
        ),
    };
    let rules = if sources.counters {
        match firewall.rule_counters() {
            Ok(c) => rules_status(c.as_ref()),
            Err(e) => json!({ "error": e.to_string() }),
        }
    } else {
        Value::Null
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dhcp = sources
        .dhcp_dir
        .map_or(Value::Null, |d| leases_status(&d.join("leases.json"), now));
    let wan = match (sources.cfg, sources.dhcp_dir) {
        (Some(cfg), Some(dir)) => wan_status(cfg, dir),
        _ => json!([]),
    };
    let mut doc = document(links, dhcp, wireguard_status(sources.cfg), rules);
    if let Some(o) = doc.as_object_mut() {
        o.insert("wan".into(), wan);
        o.insert("ipv6".into(), ipv6);
    }
    doc
}

/// One entry per link of `cfg` with `ipv4 = "dhcp"`: the lease its client keeps in
/// `dhcp_dir` (`null` before the first).
pub fn wan_status(cfg: &Config, dhcp_dir: &Path) -> Value {
    let entries: Vec<Value> = crate::wan::cli::dhcp_links(cfg)
        .into_iter()
        .map(|link| {
            let lease = crate::wan::files::load_lease(dhcp_dir, &link).map(|l| {
                json!({
                    "address": l.address.to_string(),
                    "router": l.router.map(|r| r.to_string()),
                    "dns": l.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "server": l.server.to_string(),
                    "acquired": l.acquired,
                    "expires": l.expires(),
                    "renew_at": l.acquired.saturating_add(l.t1_secs),
                    "rebind_at": l.acquired.saturating_add(l.t2_secs),
                })
            });
            json!({ "link": link, "lease": lease })
        })
        .collect();
    Value::Array(entries)
}

/// The links of `cfg` (interfaces, VLANs, bridges) with their IPv6 mode.
fn ipv6_modes(cfg: &Config) -> Vec<(String, Ipv6Mode)> {
    let mut out = Vec::new();
    let mut add = |name: &dyn std::fmt::Display, a: &dyn Addressed| {
        out.push((name.to_string(), a.ipv6_mode()));
    };
    cfg.interfaces.iter().for_each(|(n, i)| add(n, i));
    cfg.vlans.iter().for_each(|(n, v)| add(n, v));
    cfg.bridges.iter().for_each(|(n, b)| add(n, b));
    out
}

fn is_global_v6(net: &IpNet) -> bool {
    match net {
        IpNet::V6(n) => {
            let a = n.addr();
            !(a.is_loopback() || a.is_multicast() || a.segments()[0] & 0xffc0 == 0xfe80)
        }
        IpNet::V4(_) => false,
    }
}

/// IPv6: the SLAAC uplinks as the kernel has them (switches, global addresses, the
/// default router learned from advertisements), the LAN links netd advertises and their
/// prefixes, and whether the box forwards IPv6.
pub fn ipv6_status(observed: &Observed, cfg: Option<&Config>) -> Value {
    let Some(cfg) = cfg else {
        return json!({ "slaac": [], "advertised": [], "forwarding": observed.forwarding.map(|f| f.ipv6) });
    };
    let slaac: Vec<Value> = ipv6_modes(cfg)
        .into_iter()
        .filter(|(_, m)| *m == Ipv6Mode::Slaac)
        .map(|(link, _)| {
            let conf = observed.ipv6.get(&link);
            let addresses: Vec<String> = observed
                .addresses
                .iter()
                .filter(|a| a.link == link && is_global_v6(&a.net))
                .map(|a| a.net.to_string())
                .collect();
            let router = observed
                .routes
                .iter()
                .find(|r| {
                    r.dev.as_deref() == Some(link.as_str())
                        && matches!(r.dst, IpNet::V6(d) if d.prefix_len() == 0)
                })
                .and_then(|r| r.gateway)
                .map(|g| g.to_string());
            json!({
                "link": link,
                "accept_ra": conf.map(|c| c.accept_ra),
                "autoconf": conf.map(|c| c.autoconf),
                "addresses": addresses,
                "default_router": router,
            })
        })
        .collect();
    let advertised: Vec<Value> = crate::ipv6::advertised_links(cfg)
        .iter()
        .map(|l| {
            let ra = crate::ipv6::advert(l, None, crate::ipv6::ROUTER_LIFETIME);
            json!({
                "link": l.name,
                "prefixes": ra.prefixes.iter().map(|p| p.prefix.to_string()).collect::<Vec<_>>(),
                "dns": ra.rdnss.and_then(|r| r.servers.first().map(ToString::to_string)),
            })
        })
        .collect();
    json!({
        "slaac": slaac,
        "advertised": advertised,
        "forwarding": observed.forwarding.map(|f| f.ipv6),
    })
}

/// WireGuard tunnels netd owns, as `netd wg status --json` shows them.
pub fn wireguard_status(cfg: Option<&Config>) -> Value {
    match KernelWg::new().and_then(|mut k| k.observe()) {
        Ok(o) => {
            let names = cfg.map(peer_names_of).unwrap_or_default();
            status_json(&o, &names, SystemTime::now())
        }
        Err(e) => json!({ "interfaces": [], "error": e.to_string() }),
    }
}

/// The links netd owns (created or adopted), with state, MTU, MAC, addresses and the
/// kernel's byte counters (`/sys/class/net/<link>/statistics`, when readable).
pub fn links_status(observed: &Observed, counters: impl Fn(&str) -> Option<(u64, u64)>) -> Value {
    let links: Vec<Value> = observed
        .links
        .iter()
        .filter(|l| l.owned())
        .map(|l| {
            let addresses: Vec<String> = observed
                .addresses
                .iter()
                .filter(|a| a.link == l.name)
                .map(|a| a.net.to_string())
                .collect();
            let (rx, tx) = counters(&l.name).unzip();
            json!({
                "name": l.name,
                "kind": l.kind.as_deref().unwrap_or("nic"),
                "up": l.up,
                "mtu": l.mtu,
                "mac": l.mac.map(|m| m.to_string()),
                "master": l.master,
                "addresses": addresses,
                "rx_bytes": rx,
                "tx_bytes": tx,
            })
        })
        .collect();
    Value::Array(links)
}

/// The kernel's byte counters of a link: (received, sent).
pub fn sysfs_counters(link: &str) -> Option<(u64, u64)> {
    let read = |which: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{link}/statistics/{which}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("rx_bytes")?, read("tx_bytes")?))
}

/// The DHCP server's leases (`leases.json`), each with whether it holds at `now` (Unix
/// seconds). A missing file is no leases; an unreadable one is reported in `error`.
pub fn leases_status(path: &Path, now: u64) -> Value {
    match appliance::leases::read(path) {
        Ok(leases) => {
            let list: Vec<Value> = leases
                .iter()
                .map(|l| {
                    json!({
                        "mac": l.mac.to_string(),
                        "ip": l.ip.to_string(),
                        "hostname": l.hostname,
                        "expires": l.expires,
                        "active": l.is_active(now),
                    })
                })
                .collect();
            json!({ "leases": list })
        }
        Err(e) => json!({ "leases": [], "error": e.to_string() }),
    }
}

/// Packets and bytes per firewall rule, from the kernel's rules of netd's table (`None`:
/// no table yet).
pub fn rules_status(counters: Option<&RuleCounters>) -> Value {
    let rules: Vec<Value> = counters
        .into_iter()
        .flatten()
        .map(|(rule, (packets, bytes))| json!({"rule": rule, "packets": packets, "bytes": bytes}))
        .collect();
    Value::Array(rules)
}

/// The status document: `links`, `dhcp`, `wireguard` (the shape of `netd wg status
/// --json`) and `firewall_rules`.
pub fn document(links: Value, dhcp: Value, wireguard: Value, rules: Value) -> Value {
    json!({
        "links": links,
        "dhcp": dhcp,
        "wireguard": wireguard,
        "firewall_rules": rules,
    })
}

/// A label value in the exposition format: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
    samples: Vec<(String, u64)>,
}

impl Family<'_> {
    fn render(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, v) in &self.samples {
            let _ = writeln!(out, "{}{{{labels}}} {v}", self.name);
        }
    }
}

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The document as Prometheus text (families without samples are left out).
pub fn prometheus(doc: &Value) -> String {
    let links = items(doc, "links");
    let link_label = |l: &Value| format!("link=\"{}\"", label(s(l, "name")));
    let per_link = |key: &str| -> Vec<(String, u64)> {
        links
            .iter()
            .filter_map(|l| Some((link_label(l), u(l, key)?)))
            .collect()
    };
    let up: Vec<(String, u64)> = links
        .iter()
        .map(|l| {
            let on = l.get("up").and_then(Value::as_bool).unwrap_or(false);
            (link_label(l), u64::from(on))
        })
        .collect();

    let leases = doc
        .get("dhcp")
        .map(|d| items(d, "leases"))
        .unwrap_or_default();
    let active = leases
        .iter()
        .filter(|l| l.get("active").and_then(Value::as_bool) == Some(true))
        .count();
    let lease_samples = if doc.get("dhcp").is_some_and(|d| !d.is_null()) {
        vec![
            ("state=\"active\"".to_string(), active as u64),
            (
                "state=\"expired\"".to_string(),
                (leases.len() - active) as u64,
            ),
        ]
    } else {
        Vec::new()
    };

    let mut peers: Vec<(String, &Value)> = Vec::new();
    if let Some(wg) = doc.get("wireguard") {
        for i in items(wg, "interfaces") {
            for p in items(i, "peers") {
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                peers.push((
                    format!(
                        "interface=\"{}\",public_key=\"{}\",peer=\"{}\"",
                        label(s(i, "name")),
                        label(s(p, "public_key")),
                        label(name)
                    ),
                    p,
                ));
            }
        }
    }
    let per_peer = |key: &str| -> Vec<(String, u64)> {
        peers
            .iter()
            .filter_map(|(l, p)| Some((l.clone(), u(p, key)?)))
            .collect()
    };

    let wan: Vec<(String, u64)> = items(doc, "wan")
        .iter()
        .filter_map(|w| {
            let expires = w.get("lease").and_then(|l| u(l, "expires"))?;
            Some((format!("link=\"{}\"", label(s(w, "link"))), expires))
        })
        .collect();
    let advertised: Vec<(String, u64)> = doc
        .get("ipv6")
        .map(|v| items(v, "advertised"))
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                format!("link=\"{}\"", label(s(a, "link"))),
                items(a, "prefixes").len() as u64,
            )
        })
        .collect();

    let rules = items(doc, "firewall_rules");
    let per_rule = |key: &str| -> Vec<(String, u64)> {
        rules
            .iter()
            .filter_map(|r| Some((format!("rule=\"{}\"", label(s(r, "rule"))), u(r, key)?)))
            .collect()
    };

    let families = [
        Family {
            name: "netd_link_up",
            kind: "gauge",
            help: "Whether a link netd owns is administratively up.",
            samples: up,
        },
        Family {
            name: "netd_link_mtu_bytes",
            kind: "gauge",
            help: "The MTU of a link netd owns.",
            samples: per_link("mtu"),
        },
        Family {
            name: "netd_link_receive_bytes_total",
            kind: "counter",
            help: "Bytes received on a link netd owns.",
            samples: per_link("rx_bytes"),
        },
        Family {
            name: "netd_link_transmit_bytes_total",
            kind: "counter",
            help: "Bytes sent on a link netd owns.",
            samples: per_link("tx_bytes"),
        },
        Family {
            name: "netd_wan_lease_expiry_seconds",
            kind: "gauge",
            help: "Unix time at which the WAN's DHCP lease ends.",
            samples: wan,
        },
        Family {
            name: "netd_ipv6_advertised_prefixes",
            kind: "gauge",
            help: "Prefixes in netd's router advertisements on a LAN link.",
            samples: advertised,
        },
        Family {
            name: "netd_dhcp_leases",
            kind: "gauge",
            help: "DHCP leases in the lease file, by whether they still hold.",
            samples: lease_samples,
        },
        Family {
            name: "netd_wireguard_peer_receive_bytes_total",
            kind: "counter",
            help: "Bytes received from a WireGuard peer.",
            samples: per_peer("rx_bytes"),
        },
        Family {
            name: "netd_wireguard_peer_transmit_bytes_total",
            kind: "counter",
            help: "Bytes sent to a WireGuard peer.",
            samples: per_peer("tx_bytes"),
        },
        Family {
            name: "netd_wireguard_peer_last_handshake_seconds",
            kind: "gauge",
            help: "Unix time of a WireGuard peer's last handshake (absent: none yet).",
            samples: per_peer("last_handshake"),
        },
        Family {
            name: "netd_wireguard_peer_last_handshake_age_seconds",
            kind: "gauge",
            help: "Seconds since a WireGuard peer's last handshake (absent: none yet).",
            samples: per_peer("last_handshake_seconds_ago"),
        },
        Family {
            name: "netd_firewall_rule_packets_total",
            kind: "counter",
            help: "Packets matched by a firewall rule (by its name in the config).",
            samples: per_rule("packets"),
        },
        Family {
            name: "netd_firewall_rule_bytes_total",
            kind: "counter",
            help: "Bytes matched by a firewall rule (by its name in the config).",
            samples: per_rule("bytes"),
        },
    ];
    let mut out = String::new();
    for f in &families {
        f.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::{Address, FakeNetlink, Netlink};

    fn sample() -> Value {
        let mut k =
            FakeNetlink::with_nics(&[("lan", [2, 0, 0, 0, 0, 1]), ("other", [2, 0, 0, 0, 0, 2])]);
        k.apply_foreign(|o| {
            if let Some(l) = o.links.iter_mut().find(|l| l.name == "lan") {
                l.alias = Some("appliance nic eth1".into());
                l.up = true;
            }
            o.addresses.push(Address {
                link: "lan".into(),
                net: "192.168.1.1/24".parse().unwrap(),
            });
        });
        let observed = k.observe().unwrap();
        let links = links_status(&observed, |name| (name == "lan").then_some((100, 200)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "leases": [
                {"mac": "52:54:00:00:00:0a", "ip": "192.168.1.100", "hostname": "alpha", "expires": 2000},
                {"mac": "52:54:00:00:00:0b", "ip": "192.168.1.101", "expires": 500},
                {"mac": "52:54:00:00:00:0c", "ip": "192.168.1.5"}]}"#,
        )
        .unwrap();
        let dhcp = leases_status(&path, 1000);
        let wg = json!({"interfaces": [{"name": "wg0", "peers": [
            {"name": "laptop", "public_key": "abc=", "rx_bytes": 5, "tx_bytes": 6, "last_handshake": 900, "last_handshake_seconds_ago": 100},
            {"name": null, "public_key": "d\"e", "rx_bytes": 0, "tx_bytes": 0, "last_handshake": null}]}]});
        let listing = json!({"nftables": [
            {"rule": {"comment": "wan-ping", "expr": [{"counter": {"packets": 3, "bytes": 252}}]}},
            {"rule": {"comment": "wan-ping", "expr": [{"counter": {"packets": 1, "bytes": 104}}]}}]});
        let counters = crate::firewall::rule_counters(&listing);
        let mut doc = document(links, dhcp, wg, rules_status(Some(&counters)));
        doc["wan"] = json!([{"link": "wan", "lease": {"address": "203.0.113.7/24", "expires": 5000}},
            {"link": "wan2", "lease": null}]);
        doc["ipv6"] =
            json!({"slaac": [], "advertised": [{"link": "lan", "prefixes": ["2001:db8:2::/64"]}]});
        doc
    }

    const ROUTER: &str = r#"version = 1
[interfaces.wan]
device = "eth0"
ipv4 = "dhcp"
ipv6 = "slaac"
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "2001:db8:2::1/64"]
"#;

    #[test]
    fn the_wan_lease_comes_from_the_clients_file() {
        let cfg = appliance::load_str(ROUTER).unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            wan_status(&cfg, dir.path()),
            json!([{"link": "wan", "lease": null}])
        );
        let lease = crate::wan::Lease {
            address: "203.0.113.7/24".parse().unwrap(),
            router: Some("203.0.113.1".parse().unwrap()),
            dns: vec!["203.0.113.53".parse().unwrap()],
            server: "203.0.113.1".parse().unwrap(),
            acquired: 1000,
            lease_secs: 3600,
            t1_secs: 1800,
            t2_secs: 3150,
        };
        crate::wan::files::store_lease(dir.path(), "wan", &lease).unwrap();
        let w = wan_status(&cfg, dir.path());
        assert_eq!(
            w[0]["lease"],
            json!({"address": "203.0.113.7/24", "router": "203.0.113.1",
                "dns": ["203.0.113.53"], "server": "203.0.113.1", "acquired": 1000,
                "expires": 4600, "renew_at": 2800, "rebind_at": 4150}),
            "{w}"
        );
    }

    #[test]
    fn ipv6_shows_the_slaac_uplink_and_the_advertised_prefixes() {
        let cfg = appliance::load_str(ROUTER).unwrap();
        let mut k =
            FakeNetlink::with_nics(&[("wan", [2, 0, 0, 0, 0, 1]), ("lan", [2, 0, 0, 0, 0, 2])]);
        k.apply_foreign(|o| {
            for (link, net) in [
                ("wan", "2001:db8:1::1/64"),
                ("wan", "fe80::1/64"),
                ("lan", "2001:db8:2::1/64"),
            ] {
                o.addresses.push(Address {
                    link: link.into(),
                    net: net.parse().unwrap(),
                });
            }
            o.routes.push(crate::links::Route {
                dst: "::/0".parse().unwrap(),
                gateway: Some("fe80::fe".parse().unwrap()),
                dev: Some("wan".into()),
                metric: 1024,
                protocol: 9,
            });
            o.ipv6.insert("wan".into(), crate::links::Ipv6Conf::SLAAC);
        });
        let v = ipv6_status(&k.observe().unwrap(), Some(&cfg));
        assert_eq!(
            v["slaac"],
            json!([{"link": "wan", "accept_ra": 2, "autoconf": true,
                "addresses": ["2001:db8:1::1/64"], "default_router": "fe80::fe"}]),
            "{v}"
        );
        assert_eq!(
            v["advertised"],
            json!([{"link": "lan", "prefixes": ["2001:db8:2::/64"], "dns": "2001:db8:2::1"}]),
            "{v}"
        );
    }

    #[test]
    fn the_document_lists_owned_links_leases_peers_and_rules() {
        let doc = sample();
        let links = doc["links"].as_array().unwrap();
        assert_eq!(links.len(), 1, "only the link netd owns: {doc:#}");
        assert_eq!(links[0]["name"], "lan");
        assert_eq!(links[0]["addresses"], json!(["192.168.1.1/24"]));
        assert_eq!(links[0]["rx_bytes"], 100);
        let leases = doc["dhcp"]["leases"].as_array().unwrap();
        let active: Vec<bool> = leases
            .iter()
            .map(|l| l["active"].as_bool().unwrap())
            .collect();
        assert_eq!(active, [true, false, true], "a static lease never expires");
        assert_eq!(leases[0]["hostname"], "alpha");
        // Both families of one config rule add up.
        assert_eq!(
            doc["firewall_rules"],
            json!([{"rule": "wan-ping", "packets": 4, "bytes": 356}])
        );
    }

    #[test]
    fn prometheus_text_follows_the_document() {
        let text = prometheus(&sample());
        for line in [
            "# TYPE netd_link_up gauge",
            "netd_link_up{link=\"lan\"} 1",
            "netd_link_mtu_bytes{link=\"lan\"} 1500",
            "netd_link_receive_bytes_total{link=\"lan\"} 100",
            "netd_link_transmit_bytes_total{link=\"lan\"} 200",
            "netd_dhcp_leases{state=\"active\"} 2",
            "netd_dhcp_leases{state=\"expired\"} 1",
            "netd_wireguard_peer_receive_bytes_total{interface=\"wg0\",public_key=\"abc=\",peer=\"laptop\"} 5",
            "netd_wireguard_peer_last_handshake_seconds{interface=\"wg0\",public_key=\"abc=\",peer=\"laptop\"} 900",
            "netd_wireguard_peer_last_handshake_age_seconds{interface=\"wg0\",public_key=\"abc=\",peer=\"laptop\"} 100",
            "netd_wan_lease_expiry_seconds{link=\"wan\"} 5000",
            "netd_ipv6_advertised_prefixes{link=\"lan\"} 1",
            // A label value with a quote is escaped.
            "netd_wireguard_peer_transmit_bytes_total{interface=\"wg0\",public_key=\"d\\\"e\",peer=\"\"} 0",
            "# TYPE netd_firewall_rule_packets_total counter",
            "netd_firewall_rule_packets_total{rule=\"wan-ping\"} 4",
            "netd_firewall_rule_bytes_total{rule=\"wan-ping\"} 356",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // A peer without a handshake has no handshake sample.
        assert_eq!(
            text.matches("netd_wireguard_peer_last_handshake_seconds{")
                .count(),
            1,
            "{text}"
        );
        // Every sample line belongs to a family announced before it.
        let mut typed = std::collections::BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split('{').next().unwrap();
                assert!(typed.contains(name), "{l}");
            }
        }
    }

    #[test]
    fn an_empty_document_has_no_samples_and_a_bad_lease_file_says_why() {
        let doc = document(json!([]), json!(null), json!(null), json!([]));
        assert_eq!(
            prometheus(&doc)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .count(),
            0
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        std::fs::write(&path, "{not json").unwrap();
        let d = leases_status(&path, 0);
        assert!(d["error"].as_str().is_some(), "{d}");
        // No file yet: no leases, no error.
        let none = leases_status(&dir.path().join("absent.json"), 0);
        assert_eq!(none, json!({"leases": []}), "{none}");
    }
}
