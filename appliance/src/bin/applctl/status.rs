//! `applctl status net`: netd's status document, as applianced passes it through (its Unix
//! socket's `GET /v1/status/netd`, or the API's `GET /api/v1/network/status`), rendered as
//! tables: links, DHCP leases, WireGuard peers, firewall rule counters.
//!
//! netd decides what the document holds; every field is read as optional, so a part netd
//! leaves out (or reports as `{"error": ...}`) shows as such and the rest still renders.

use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::Value;

/// What `applctl status` shows beyond the overview.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatusOf {
    /// netd: links, addresses, leases, WireGuard peers, firewall rule counters.
    Net,
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn items<'a>(v: Option<&'a Value>, key: &str) -> &'a [Value] {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// 1536 → `1.5 KiB`; absent → `-`.
pub fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else {
        return "-".into();
    };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS.get(unit).unwrap_or(&"?"))
    }
}

/// 4000 → `1h6m`, 75 → `1m15s`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::from("  ");
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// A part of the document netd could not read: `{"error": "..."}` (or an array/object
/// with an `error` beside what it could read).
fn part_error(out: &mut String, part: Option<&Value>) {
    if let Some(e) = part.and_then(|p| s(p, "error")) {
        let _ = writeln!(out, "  (netd could not read this: {e})");
    }
}

/// The whole document as text. `now` is Unix seconds, for lease lifetimes.
pub fn render_net(doc: &Value, now: u64) -> String {
    let mut out = String::new();
    let generation = u(doc, "generation").map_or_else(|| "none".into(), |g| g.to_string());
    let _ = write!(out, "netd: generation {generation}");
    if let Some(v) = s(doc, "version") {
        let _ = write!(out, ", version {v}");
    }
    if let Some(up) = u(doc, "uptime_seconds") {
        let _ = write!(out, ", up {}", span(up));
    }
    out.push('\n');
    if let Some(e) = s(doc, "last_error") {
        let _ = writeln!(out, "last apply failed: {e}");
    }
    let Some(net) = doc.get("net").filter(|n| n.is_object()) else {
        out.push_str("netd sent no network state (an older netd?)\n");
        return out;
    };

    out.push_str("\nLinks\n");
    let links = net.get("links");
    part_error(&mut out, links);
    let rows: Vec<Vec<String>> = links
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| {
            let state = match l.get("up").and_then(Value::as_bool) {
                Some(true) => "up",
                Some(false) => "down",
                None => "?",
            };
            let mut addrs: Vec<&str> = items(Some(l), "addresses")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if addrs.is_empty() {
                addrs.push("-");
            }
            vec![
                s(l, "name").unwrap_or("?").to_owned(),
                s(l, "kind").unwrap_or("-").to_owned(),
                state.to_owned(),
                u(l, "mtu").map_or_else(|| "-".into(), |m| m.to_string()),
                s(l, "mac").unwrap_or("-").to_owned(),
                s(l, "master").unwrap_or("-").to_owned(),
                bytes(u(l, "rx_bytes")),
                bytes(u(l, "tx_bytes")),
                addrs.join(" "),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  none\n");
    } else {
        table(
            &mut out,
            &[
                "NAME",
                "KIND",
                "STATE",
                "MTU",
                "MAC",
                "MASTER",
                "RX",
                "TX",
                "ADDRESSES",
            ],
            &rows,
        );
    }

    wan_and_ipv6(&mut out, net, now);

    out.push_str("\nDHCP leases\n");
    let dhcp = net.get("dhcp").filter(|d| !d.is_null());
    part_error(&mut out, dhcp);
    let rows: Vec<Vec<String>> = items(dhcp, "leases")
        .iter()
        .map(|l| {
            let expires = match u(l, "expires") {
                Some(t) if t > now => format!("in {}", span(t - now)),
                Some(t) => format!("{} ago", span(now - t)),
                None => "-".into(),
            };
            let state = match l.get("active").and_then(Value::as_bool) {
                Some(true) => "active",
                Some(false) => "expired",
                None => "?",
            };
            vec![
                s(l, "ip").unwrap_or("?").to_owned(),
                s(l, "mac").unwrap_or("-").to_owned(),
                s(l, "hostname").unwrap_or("-").to_owned(),
                state.to_owned(),
                expires,
            ]
        })
        .collect();
    match (dhcp, rows.is_empty()) {
        (None, _) => out.push_str("  no DHCP server runs\n"),
        (Some(_), true) => out.push_str("  none\n"),
        (Some(_), false) => table(
            &mut out,
            &["ADDRESS", "MAC", "HOSTNAME", "STATE", "EXPIRES"],
            &rows,
        ),
    }

    out.push_str("\nWireGuard\n");
    let wg = net.get("wireguard").filter(|w| !w.is_null());
    part_error(&mut out, wg);
    let tunnels = items(wg, "interfaces");
    if tunnels.is_empty() {
        out.push_str("  no tunnels\n");
    }
    for t in tunnels {
        let _ = write!(out, "  {}", s(t, "name").unwrap_or("?"));
        if let Some(p) = u(t, "listen_port") {
            let _ = write!(out, ", port {p}");
        }
        let addrs: Vec<&str> = items(Some(t), "addresses")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !addrs.is_empty() {
            let _ = write!(out, ", {}", addrs.join(" "));
        }
        if let Some(k) = s(t, "public_key") {
            let _ = write!(out, ", public key {k}");
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = items(Some(t), "peers")
            .iter()
            .map(|p| {
                let handshake = match (u(p, "last_handshake_seconds_ago"), u(p, "last_handshake")) {
                    (Some(ago), _) => format!("{} ago", span(ago)),
                    (None, Some(at)) if at <= now => format!("{} ago", span(now - at)),
                    _ => "never".into(),
                };
                let allowed: Vec<&str> = items(Some(p), "allowed_ips")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                vec![
                    s(p, "name")
                        .map(str::to_owned)
                        .or_else(|| {
                            s(p, "public_key").map(|k| format!("{}…", k.get(..8).unwrap_or(k)))
                        })
                        .unwrap_or_else(|| "?".into()),
                    s(p, "endpoint").unwrap_or("-").to_owned(),
                    handshake,
                    bytes(u(p, "rx_bytes")),
                    bytes(u(p, "tx_bytes")),
                    if allowed.is_empty() {
                        "-".into()
                    } else {
                        allowed.join(" ")
                    },
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("    no peers\n");
        } else {
            let mut t = String::new();
            table(
                &mut t,
                &["PEER", "ENDPOINT", "HANDSHAKE", "RX", "TX", "ALLOWED IPS"],
                &rows,
            );
            for l in t.lines() {
                let _ = writeln!(out, "  {l}");
            }
        }
    }

    out.push_str("\nFirewall rule counters\n");
    let rules = net.get("firewall_rules");
    part_error(&mut out, rules);
    if rules.is_none_or(Value::is_null) {
        out.push_str("  not reported by this netd\n");
        return out;
    }
    let rows: Vec<Vec<String>> = rules
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(r, "rule").unwrap_or("?").to_owned(),
                u(r, "packets").map_or_else(|| "-".into(), |p| p.to_string()),
                bytes(u(r, "bytes")),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  none (no ruleset applied yet)\n");
    } else {
        table(&mut out, &["RULE", "PACKETS", "BYTES"], &rows);
    }
    out
}

fn list(v: &Value, key: &str) -> String {
    let l: Vec<&str> = items(Some(v), key)
        .iter()
        .filter_map(Value::as_str)
        .collect();
    if l.is_empty() {
        "-".into()
    } else {
        l.join(" ")
    }
}

/// The WAN's DHCP leases and the IPv6 state, when this netd reports them.
fn wan_and_ipv6(out: &mut String, net: &Value, now: u64) {
    if let Some(wan) = net.get("wan").filter(|w| !w.is_null()) {
        out.push_str("\nWAN (DHCP client)\n");
        part_error(out, Some(wan));
        let rows: Vec<Vec<String>> = wan
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                let link = s(w, "link").unwrap_or("?").to_owned();
                match w.get("lease").filter(|l| l.is_object()) {
                    None => vec![link, "no lease".into(), "-".into(), "-".into(), "-".into()],
                    Some(l) => vec![
                        link,
                        s(l, "address").unwrap_or("?").to_owned(),
                        s(l, "router").unwrap_or("-").to_owned(),
                        list(l, "dns"),
                        match u(l, "expires") {
                            Some(t) if t > now => format!("in {}", span(t - now)),
                            Some(t) => format!("{} ago", span(now - t)),
                            None => "-".into(),
                        },
                    ],
                }
            })
            .collect();
        if rows.is_empty() {
            out.push_str("  no link takes its address by DHCP\n");
        } else {
            table(out, &["LINK", "ADDRESS", "ROUTER", "DNS", "EXPIRES"], &rows);
        }
    }
    if let Some(v6) = net.get("ipv6").filter(|v| !v.is_null()) {
        out.push_str("\nIPv6\n");
        part_error(out, Some(v6));
        if let Some(f) = v6.get("forwarding").and_then(Value::as_bool) {
            let _ = writeln!(out, "  forwarding {}", if f { "on" } else { "off" });
        }
        for l in items(Some(v6), "slaac") {
            let _ = writeln!(
                out,
                "  {}: SLAAC, addresses {}, default router {}",
                s(l, "link").unwrap_or("?"),
                list(l, "addresses"),
                s(l, "default_router").unwrap_or("none yet")
            );
        }
        for l in items(Some(v6), "advertised") {
            let _ = writeln!(
                out,
                "  {}: router advertisements, prefixes {}, DNS {}",
                s(l, "link").unwrap_or("?"),
                list(l, "prefixes"),
                s(l, "dns").unwrap_or("-")
            );
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_document_renders_every_table() {
        let doc = json!({
            "daemon": "netd", "version": "0.1.0", "generation": 4, "last_error": null,
            "uptime_seconds": 3700,
            "net": {
                "links": [{"name": "lan", "kind": "nic", "up": true, "mtu": 1500,
                    "mac": "52:54:00:00:00:01", "master": null,
                    "addresses": ["192.168.1.1/24"], "rx_bytes": 2048, "tx_bytes": 10}],
                "dhcp": {"leases": [{"mac": "52:54:00:00:00:99", "ip": "192.168.1.100",
                    "hostname": "laptop", "expires": 1_000_100, "active": true}]},
                "wireguard": {"interfaces": [{"name": "wg0", "listen_port": 51820,
                    "addresses": ["10.8.0.1/24"], "public_key": "PUB", "peers": [
                        {"name": "phone", "public_key": "KEY", "endpoint": "198.51.100.7:4000",
                         "allowed_ips": ["10.8.0.2/32"], "last_handshake_seconds_ago": 75,
                         "rx_bytes": 1_048_576, "tx_bytes": 0}]}]},
                "firewall_rules": [{"rule": "input_lan ssh", "packets": 12, "bytes": 840}],
                "wan": [{"link": "wan", "lease": {"address": "203.0.113.7/24",
                    "router": "203.0.113.1", "dns": ["203.0.113.53"], "expires": 1_003_600}},
                    {"link": "wan2", "lease": null}],
                "ipv6": {"forwarding": true, "slaac": [{"link": "wan",
                    "addresses": ["2001:db8::7/64"], "default_router": "fe80::1"}],
                    "advertised": [{"link": "lan", "prefixes": ["2001:db8:2::/64"],
                    "dns": "2001:db8:2::1"}]}
            }
        });
        let text = render_net(&doc, 1_000_000);
        for want in [
            "netd: generation 4, version 0.1.0, up 1h1m",
            "lan   nic   up     1500",
            "2.0 KiB",
            "192.168.1.1/24",
            "192.168.1.100  52:54:00:00:00:99  laptop    active  in 1m40s",
            "wg0, port 51820, 10.8.0.1/24, public key PUB",
            "phone  198.51.100.7:4000  1m15s ago  1.0 MiB  0 B",
            "input_lan ssh  12       840 B",
            "wan   203.0.113.7/24  203.0.113.1  203.0.113.53  in 1h0m",
            "wan2  no lease",
            "forwarding on",
            "wan: SLAAC, addresses 2001:db8::7/64, default router fe80::1",
            "lan: router advertisements, prefixes 2001:db8:2::/64, DNS 2001:db8:2::1",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn absent_and_failed_parts_still_render_the_rest() {
        let doc = json!({
            "generation": null,
            "last_error": "firewall: nft refused",
            "net": {"links": {"error": "netlink: permission denied"}, "dhcp": null,
                    "wireguard": {"interfaces": [], "error": "no kernel module"},
                    "firewall_rules": []}
        });
        let text = render_net(&doc, 0);
        for want in [
            "netd: generation none",
            "last apply failed: firewall: nft refused",
            "(netd could not read this: netlink: permission denied)",
            "no DHCP server runs",
            "(netd could not read this: no kernel module)",
            "no tunnels",
            "none (no ruleset applied yet)",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(render_net(&json!({}), 0).contains("sent no network state"));
    }

    #[test]
    fn sizes_and_spans() {
        assert_eq!(bytes(None), "-");
        assert_eq!(bytes(Some(1023)), "1023 B");
        assert_eq!(bytes(Some(1536)), "1.5 KiB");
        assert_eq!(span(59), "59s");
        assert_eq!(span(3600 * 25), "1d1h");
    }
}
