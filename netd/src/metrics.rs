//! netd's status document and its Prometheus text: links with their addresses and byte
//! counters, DHCP leases, WireGuard peers, firewall rule counters. The document is built
//! from what netd reads back (the links adapter's [`Observed`], nft's listing, the lease
//! file, the WireGuard status), and the metrics are rendered from the document, so the two
//! never disagree.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use appliance::Config;
use serde_json::{Value, json};

use crate::firewall::{Firewall, Nft, rule_counters};
use crate::links::{Links, Netlink, Observed};
use crate::wireguard::{KernelWg, WgKernel, cli::peer_names_of, cli::status_json};

/// The whole document from the kernel: links through `links`' adapter, the rules of
/// `firewall`'s table, the lease file, and WireGuard (peers named after `cfg`). A part
/// that cannot be read is reported as `{"error": ...}` in its place; the rest still is.
/// Blocking (netlink, nft): call it off the async runtime.
pub fn collect<N: Netlink, F: Nft>(
    links: &mut Links<N>,
    firewall: &Firewall<F>,
    lease_file: Option<&Path>,
    cfg: Option<&Config>,
) -> Value {
    let links = match links.netlink_mut().observe() {
        Ok(o) => links_status(&o, sysfs_counters),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let rules = match firewall.listing() {
        Ok(l) => rules_status(l.as_ref()),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dhcp = lease_file.map_or(Value::Null, |p| leases_status(p, now));
    document(links, dhcp, wireguard_status(cfg), rules)
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

/// Packets and bytes per firewall rule, from nft's listing of netd's table (`None`: no
/// table yet).
pub fn rules_status(listing: Option<&Value>) -> Value {
    let rules: Vec<Value> = listing
        .map(rule_counters)
        .unwrap_or_default()
        .into_iter()
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
            {"name": "laptop", "public_key": "abc=", "rx_bytes": 5, "tx_bytes": 6, "last_handshake": 900},
            {"name": null, "public_key": "d\"e", "rx_bytes": 0, "tx_bytes": 0, "last_handshake": null}]}]});
        let listing = json!({"nftables": [
            {"rule": {"comment": "wan-ping", "expr": [{"counter": {"packets": 3, "bytes": 252}}]}},
            {"rule": {"comment": "wan-ping", "expr": [{"counter": {"packets": 1, "bytes": 104}}]}}]});
        document(links, dhcp, wg, rules_status(Some(&listing)))
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
