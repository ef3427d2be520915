//! The advertiser: which links get advertisements and what they say (pure), and one
//! thread per link with a raw ICMPv6 socket that sends them periodically and answers
//! router solicitations.

use std::collections::BTreeSet;
use std::io::IoSliceMut;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use appliance::Config;
use appliance::model::{Addressed, Ipv6Mode};
use ipnet::{IpNet, Ipv6Net};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

use super::packet::{PrefixInfo, Rdnss, RouterAdvert, RouterSolicit};

/// How long clients keep the router as their default (RFC 4861's default, 3 × 600 s).
pub const ROUTER_LIFETIME: u16 = 1800;
/// The longest wait between two unsolicited advertisements (RFC 4861's MaxRtrAdvInterval).
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
/// The first few advertisements come faster, so that a link just up is served soon
/// (MAX_INITIAL_RTR_ADVERT_INTERVAL and MAX_INITIAL_RTR_ADVERTISEMENTS).
const INITIAL_INTERVAL: Duration = Duration::from_secs(16);
const INITIAL_COUNT: u32 = 3;
/// At most one advertisement per this interval (MIN_DELAY_BETWEEN_RAS).
const MIN_DELAY: Duration = Duration::from_secs(3);
const VALID_LIFETIME: u32 = 86_400;
const PREFERRED_LIFETIME: u32 = 14_400;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// A LAN link to advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertLink {
    pub name: String,
    /// Its static global addresses; their prefixes are advertised.
    pub addresses: Vec<Ipv6Net>,
    pub mtu: Option<u32>,
    /// Prefixes this link advertised under the previous config and no longer does: sent
    /// with zero lifetimes so that clients deprecate their addresses in them at once
    /// (RFC 4862 §5.5.3 keeps such an address valid for 2 more hours, not preferred).
    pub retired: Vec<Ipv6Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum Ipv6Error {
    #[error(
        "cannot open a raw ICMPv6 socket on {link}: {source}; netd needs CAP_NET_RAW for router advertisements"
    )]
    Socket {
        link: String,
        source: std::io::Error,
    },
}

fn is_global(a: &Ipv6Addr) -> bool {
    let first = a.segments()[0];
    !(a.is_loopback() || a.is_multicast() || a.is_unspecified() || first & 0xffc0 == 0xfe80)
}

/// The links that get advertisements, in config order: LAN links with a static global
/// IPv6 address. Uplinks (`gateway6`, or a zone with masquerade) are left out.
pub fn advertised_links(cfg: &Config) -> Vec<AdvertLink> {
    let uplinks: BTreeSet<&str> = cfg
        .firewall
        .zones
        .values()
        .filter(|z| z.masquerade)
        .flat_map(|z| z.interfaces.iter().map(|i| i.as_str()))
        .chain(
            cfg.interfaces
                .iter()
                .filter(|(_, i)| i.gateway6.is_some())
                .map(|(n, _)| n.as_str()),
        )
        .collect();
    let links = cfg
        .interfaces
        .iter()
        .map(|(n, i)| (n.as_str(), i as &dyn Addressed))
        .chain(
            cfg.bridges
                .iter()
                .map(|(n, b)| (n.as_str(), b as &dyn Addressed)),
        )
        .chain(
            cfg.vlans
                .iter()
                .map(|(n, v)| (n.as_str(), v as &dyn Addressed)),
        );
    links
        .filter(|(name, a)| !uplinks.contains(name) && a.ipv6_mode() == Ipv6Mode::Static)
        .filter_map(|(name, a)| {
            let addresses: Vec<Ipv6Net> = a
                .addresses()
                .iter()
                .filter_map(|c| match c.net() {
                    IpNet::V6(n) if is_global(&n.addr()) => Some(n),
                    _ => None,
                })
                .collect();
            (!addresses.is_empty()).then(|| AdvertLink {
                name: name.to_string(),
                addresses,
                mtu: a.mtu().map(|m| u32::from(m.get())),
                retired: Vec::new(),
            })
        })
        .collect()
}

/// `new` with, per link that `old` advertised too, the prefixes it advertised there and
/// `new` does not: what a restart after a config change must retire.
pub fn with_retired(old: &[AdvertLink], new: &[AdvertLink]) -> Vec<AdvertLink> {
    let prefixes = |l: &AdvertLink| -> Vec<Ipv6Net> {
        let mut p: Vec<Ipv6Net> = l.addresses.iter().map(Ipv6Net::trunc).collect();
        p.dedup();
        p
    };
    new.iter()
        .map(|n| {
            let mut link = n.clone();
            let keep = prefixes(n);
            if let Some(o) = old.iter().find(|o| o.name == n.name) {
                link.retired = prefixes(o)
                    .into_iter()
                    .filter(|p| !keep.contains(p))
                    .collect();
            }
            link
        })
        .collect()
}

/// What netd advertises on `link`: `router_lifetime` 0 says goodbye (RFC 4861 §6.2.5).
pub fn advert(link: &AdvertLink, mac: Option<[u8; 6]>, router_lifetime: u16) -> RouterAdvert {
    let mut prefixes: Vec<PrefixInfo> = Vec::new();
    for a in &link.addresses {
        let prefix = a.trunc();
        if prefixes.iter().any(|p| p.prefix == prefix) {
            continue;
        }
        prefixes.push(PrefixInfo {
            prefix,
            on_link: true,
            // SLAAC makes 64-bit interface identifiers: only a /64 can be autonomous.
            autonomous: prefix.prefix_len() == 64,
            valid_lifetime: VALID_LIFETIME,
            preferred_lifetime: PREFERRED_LIFETIME,
        });
    }
    for prefix in &link.retired {
        if prefixes.iter().any(|p| p.prefix == *prefix) {
            continue;
        }
        prefixes.push(PrefixInfo {
            prefix: *prefix,
            on_link: true,
            autonomous: prefix.prefix_len() == 64,
            valid_lifetime: 0,
            preferred_lifetime: 0,
        });
    }
    RouterAdvert {
        cur_hop_limit: 64,
        managed: false,
        other: false,
        router_lifetime,
        reachable_time: 0,
        retrans_timer: 0,
        source_mac: mac,
        mtu: link.mtu,
        prefixes,
        rdnss: link.addresses.first().map(|a| Rdnss {
            // RFC 8106 §5.1: at least 3 × MaxRtrAdvInterval... kept equal to the
            // router's lifetime so that both go together.
            lifetime: u32::from(ROUTER_LIFETIME),
            servers: vec![a.addr()],
        }),
    }
}

fn link_mac(name: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes.try_into().ok()
}

fn open(link: &AdvertLink, index: u32) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(link.name.as_bytes()))?;
    // Neighbour discovery is only valid with hop limit 255, both ways.
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&ALL_ROUTERS, index)?;
    setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true).map_err(std::io::Error::from)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(s)
}

/// A solicitation on `s`, if one arrives before the read timeout: only ICMPv6 type 133
/// with hop limit 255 that parses.
fn receive_solicit(s: &Socket) -> Option<(RouterSolicit, Option<SocketAddrV6>)> {
    let mut buf = [0u8; 1500];
    let mut cmsg = nix::cmsg_space!(i32);
    let (len, hops, from) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg =
            recvmsg::<SockaddrIn6>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
                .ok()?;
        let hops = msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::Ipv6HopLimit(h) => Some(h),
            _ => None,
        });
        (msg.bytes, hops, msg.address.map(SocketAddrV6::from))
    };
    if hops != Some(255) {
        return None;
    }
    let bytes = buf.get(..len)?;
    match RouterSolicit::parse(bytes) {
        Ok(rs) => Some((rs, from)),
        Err(e) => {
            if bytes.first() == Some(&super::packet::ROUTER_SOLICIT) {
                tracing::debug!(error = %e, "dropped a malformed router solicitation");
            }
            None
        }
    }
}

/// A pseudo-random delay in `[lo, hi)` (RFC 4861 wants the periodic advertisements of
/// routers on one link not to synchronise); the clock's nanoseconds are random enough.
fn jitter(lo: Duration, hi: Duration) -> Duration {
    let span = hi.saturating_sub(lo).as_millis().max(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    lo + Duration::from_millis(u64::try_from(u128::from(nanos) % span).unwrap_or(0))
}

fn serve_link(link: AdvertLink, stop: Arc<AtomicBool>, first: Option<Socket>) {
    let mut sent = 0u32;
    let mut next = Instant::now();
    let mut last: Option<Instant> = None;
    let mut socket: Option<(Socket, Option<[u8; 6]>)> = first.map(|s| {
        tracing::info!(link = %link.name, prefixes = ?link.addresses, "advertising");
        (s, link_mac(&link.name))
    });
    while !stop.load(Ordering::SeqCst) {
        // The link may not exist yet or be down: retried every 2 s.
        let Some((s, mac)) = &socket else {
            let opened = nix::net::if_::if_nametoindex(link.name.as_str())
                .map_err(std::io::Error::from)
                .and_then(|i| open(&link, i));
            match opened {
                Ok(s) => {
                    tracing::info!(link = %link.name, prefixes = ?link.addresses, "advertising");
                    socket = Some((s, link_mac(&link.name)));
                    next = Instant::now();
                }
                Err(e) => {
                    tracing::debug!(link = %link.name, error = %e, "cannot advertise yet");
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
            continue;
        };
        let now = Instant::now();
        let solicited = if now < next {
            receive_solicit(s).inspect(|(_, from)| {
                tracing::debug!(link = %link.name, ?from, "router solicitation");
            })
        } else {
            None
        };
        let due = Instant::now() >= next;
        if !(due || solicited.is_some()) {
            continue;
        }
        // Answered by multicast (RFC 4861 §6.2.6 allows it), one per MIN_DELAY.
        if solicited.is_some() && last.is_some_and(|l| l.elapsed() < MIN_DELAY) {
            continue;
        }
        let packet = advert(&link, *mac, ROUTER_LIFETIME).encode();
        match s.send_to(&packet, &SocketAddrV6::new(ALL_NODES, 0, 0, 0).into()) {
            Ok(_) => {
                sent += 1;
                last = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(link = %link.name, error = %e, "cannot send a router advertisement; reopening");
                socket = None;
                continue;
            }
        }
        if due {
            next = Instant::now()
                + if sent <= INITIAL_COUNT {
                    jitter(INITIAL_INTERVAL / 2, INITIAL_INTERVAL)
                } else {
                    jitter(MAX_INTERVAL / 3, MAX_INTERVAL)
                };
        }
    }
    // Leaving: tell the clients this router is no longer a default router.
    if let Some((s, mac)) = &socket {
        let bye = advert(&link, *mac, 0).encode();
        if let Err(e) = s.send_to(&bye, &SocketAddrV6::new(ALL_NODES, 0, 0, 0).into()) {
            tracing::warn!(link = %link.name, error = %e, "cannot send the final advertisement");
        }
    }
}

/// Advertises every link of [`advertised_links`] until `stop` is set, then sends each a
/// final advertisement with router lifetime 0. Returns at once when there is nothing to
/// advertise. A link that is missing or down is retried every 2 s; only a socket that
/// cannot be made at all (no CAP_NET_RAW) is an error.
pub fn run(cfg: &Config, stop: Arc<AtomicBool>) -> Result<(), Ipv6Error> {
    run_links(advertised_links(cfg), stop)
}

/// Opens the socket of every link now, then advertises on threads until `stop` is set
/// (the handle ends after the goodbyes). Unlike [`run_links`], a link whose socket cannot
/// be opened is an error before anything is sent: `netd serve` starts the advertiser
/// inside a generation's apply, after the links exist, and a failure must fail that apply.
pub fn start_links(
    links: Vec<AdvertLink>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, Ipv6Error> {
    let mut opened = Vec::new();
    for l in links {
        let socket = nix::net::if_::if_nametoindex(l.name.as_str())
            .map_err(std::io::Error::from)
            .and_then(|i| open(&l, i))
            .map_err(|source| Ipv6Error::Socket {
                link: l.name.clone(),
                source,
            })?;
        opened.push((l, socket));
    }
    Ok(std::thread::spawn(move || {
        let threads: Vec<_> = opened
            .into_iter()
            .map(|(l, s)| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || serve_link(l, stop, Some(s)))
            })
            .collect();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a router advertisement thread panicked");
            }
        }
    }))
}

/// [`run`] for links already chosen (`netd serve` adds the prefixes to retire).
pub fn run_links(links: Vec<AdvertLink>, stop: Arc<AtomicBool>) -> Result<(), Ipv6Error> {
    // Fail early and clearly without the capability, instead of retrying forever.
    if let Some(first) = links.first() {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(|source| {
            Ipv6Error::Socket {
                link: first.name.clone(),
                source,
            }
        })?;
    }
    let threads: Vec<_> = links
        .into_iter()
        .map(|l| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve_link(l, stop, None))
        })
        .collect();
    for t in threads {
        if t.join().is_err() {
            tracing::error!("a router advertisement thread panicked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(body: &str) -> Config {
        appliance::load_str(&format!("version = 1\n{body}")).unwrap()
    }

    const ROUTER: &str = r#"
[interfaces.wan]
device = "eth0"
ipv4 = "dhcp"
ipv6 = "slaac"

[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "2001:db8:1::1/64", "fe80::1/64", "2001:db8:9::1/56"]
mtu = 1400

[interfaces.up2]
device = "eth2"
addresses = ["2001:db8:2::1/64"]
gateway6 = "2001:db8:2::fe"

[interfaces.v4only]
device = "eth3"
addresses = ["192.168.3.1/24"]

[vlans.iot]
parent = "lan"
id = 20
addresses = ["2001:db8:20::1/64"]

[firewall.zones.wan]
interfaces = ["wan", "masq"]
masquerade = true

[interfaces.masq]
device = "eth4"
addresses = ["2001:db8:4::1/64"]
"#;

    #[test]
    fn lan_links_with_a_global_prefix_are_advertised_and_uplinks_never() {
        let links = advertised_links(&cfg(ROUTER));
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["lan", "iot"]);
        let lan = &links[0];
        assert_eq!(lan.mtu, Some(1400));
        // link-local and IPv4 addresses are not prefixes to advertise
        assert_eq!(lan.addresses.len(), 2);
    }

    #[test]
    fn the_advertisement_names_the_router_as_gateway_and_dns() {
        let links = advertised_links(&cfg(ROUTER));
        let ra = advert(&links[0], Some([2, 0, 0, 0, 0, 1]), ROUTER_LIFETIME);
        assert_eq!(ra.router_lifetime, 1800);
        assert!(!ra.managed && !ra.other);
        assert_eq!(ra.mtu, Some(1400));
        assert_eq!(ra.source_mac, Some([2, 0, 0, 0, 0, 1]));
        // A /56 is on-link, not autonomous: SLAAC needs a /64.
        let p: Vec<(String, bool)> = ra
            .prefixes
            .iter()
            .map(|p| (p.prefix.to_string(), p.autonomous))
            .collect();
        assert_eq!(
            p,
            [
                ("2001:db8:1::/64".to_string(), true),
                ("2001:db8:9::/56".to_string(), false)
            ]
        );
        assert!(ra.prefixes.iter().all(|p| p.on_link));
        assert_eq!(
            ra.rdnss.as_ref().unwrap().servers,
            ["2001:db8:1::1".parse::<Ipv6Addr>().unwrap()]
        );
        // It survives the wire.
        assert_eq!(RouterAdvert::parse(&ra.encode()).unwrap(), ra);
        // Goodbye: lifetime 0, the rest unchanged.
        let bye = advert(&links[0], None, 0);
        assert_eq!(bye.router_lifetime, 0);
        assert_eq!(bye.prefixes, ra.prefixes);
    }

    #[test]
    fn a_prefix_that_left_the_config_is_retired_with_zero_lifetimes() {
        let old = advertised_links(&cfg(ROUTER));
        let new = advertised_links(&cfg(
            &ROUTER.replace("\"2001:db8:1::1/64\", ", "\"2001:db8:5::1/64\", ")
        ));
        let next = with_retired(&old, &new);
        let lan = &next[0];
        assert_eq!(lan.name, "lan");
        assert_eq!(lan.retired, ["2001:db8:1::/64".parse::<Ipv6Net>().unwrap()]);
        // The iot VLAN kept its prefix: nothing to retire there.
        assert!(next[1].retired.is_empty());
        let ra = advert(lan, None, ROUTER_LIFETIME);
        let lifetimes: Vec<(String, u32, u32)> = ra
            .prefixes
            .iter()
            .map(|p| (p.prefix.to_string(), p.valid_lifetime, p.preferred_lifetime))
            .collect();
        assert_eq!(
            lifetimes,
            [
                (
                    "2001:db8:5::/64".to_string(),
                    VALID_LIFETIME,
                    PREFERRED_LIFETIME
                ),
                (
                    "2001:db8:9::/56".to_string(),
                    VALID_LIFETIME,
                    PREFERRED_LIFETIME
                ),
                ("2001:db8:1::/64".to_string(), 0, 0),
            ]
        );
        // A prefix that comes back is advertised again, not retired.
        let back = with_retired(&new, &old);
        assert_eq!(
            back[0].retired,
            ["2001:db8:5::/64".parse::<Ipv6Net>().unwrap()]
        );
    }

    #[test]
    fn the_default_config_advertises_nothing() {
        assert!(
            advertised_links(&appliance::load_str(appliance::DEFAULT_CONFIG).unwrap()).is_empty()
        );
    }

    #[test]
    fn jitter_stays_in_its_range() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(200), MAX_INTERVAL);
            assert!(d >= Duration::from_secs(200) && d < MAX_INTERVAL, "{d:?}");
        }
    }
}
