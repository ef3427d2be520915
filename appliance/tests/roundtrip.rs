//! Valid configs load, and survive a trip through `toml::to_string` unchanged.
//!
//! * `tests/valid/*.toml` are hand-written valid configs (`full.toml` uses every section).
//! * The property test generates valid configs of varied shape straight from the model
//!   types, checks that the cross-checks accept them (the generator is right about what is
//!   valid), and that serializing and loading gives the same config back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use appliance::model::*;
use appliance::types::*;
use appliance::{Config, load_str};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------
// Hand-written valid configs
// ---------------------------------------------------------------------------------------

fn load_file(path: &Path) -> Config {
    let src = std::fs::read_to_string(path).unwrap();
    let name = path.display().to_string();
    load_str(&src).unwrap_or_else(|d| panic!("{}", d.render(&src, &name, false)))
}

/// Serializes `cfg`, loads the text again and checks that nothing changed.
fn assert_round_trip(cfg: &Config, what: &str) {
    let text = toml::to_string(cfg).unwrap_or_else(|e| panic!("{what}: serializing: {e}"));
    let again = load_str(&text).unwrap_or_else(|d| {
        panic!(
            "{what}: the serialized config does not load:\n{}\n--- serialized ---\n{text}",
            d.render(&text, what, false)
        )
    });
    assert_eq!(&again, cfg, "{what}: changed by the round trip:\n{text}");
}

#[test]
fn valid_configs_load_and_round_trip() {
    let files = common::toml_files("valid");
    assert!(files.len() >= 3, "too few valid examples: {files:?}");
    for f in &files {
        let cfg = load_file(f);
        assert!(
            appliance::validate::check(&cfg).is_empty(),
            "{}",
            f.display()
        );
        assert_round_trip(&cfg, &f.display().to_string());
    }
}

#[test]
fn the_default_config_loads_and_round_trips() {
    let cfg = appliance::default_config()
        .unwrap_or_else(|d| panic!("{}", d.render(appliance::DEFAULT_CONFIG, "default", false)));
    assert!(!cfg.interfaces.is_empty());
    assert_round_trip(&cfg, "default config");
}

/// `full.toml` must keep using every section, or it stops testing them.
#[test]
fn the_full_example_uses_every_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valid/full.toml");
    let c = load_file(&path);
    assert!(!c.system.admin_ssh_keys.is_empty());
    assert!(c.interfaces.values().any(|i| i.device.is_some()));
    assert!(c.interfaces.values().any(|i| i.mac.is_some()));
    assert!(c.interfaces.values().any(|i| !i.routes.is_empty()));
    assert!(!c.vlans.is_empty());
    assert!(!c.bridges.is_empty());
    assert!(c.dhcp.values().any(|d| !d.static_leases.is_empty()));
    let fw = &c.firewall;
    assert!(fw.zones.len() >= 2);
    assert!(!fw.policies.is_empty());
    assert!(fw.rules.iter().any(|r| !r.ports.is_empty()));
    assert!(fw.rules.iter().any(|r| r.rate_limit.is_some()));
    assert!(fw.forwards.values().any(|f| f.to_port.is_some()));
    assert!(c.wireguard.values().any(|w| w.peers.len() >= 2));
    let dns = &c.dns;
    assert!(!dns.upstreams.is_empty());
    assert!(!dns.lists.is_empty());
    assert!(!dns.groups.is_empty());
    assert!(!dns.records.is_empty());
    assert!(!dns.forwarding.is_empty());
    assert!(!dns.allow.is_empty() && !dns.deny.is_empty());
    let st = &c.storage;
    assert!(!st.pools.is_empty());
    assert!(!st.datasets.is_empty());
    assert!(!st.users.is_empty());
    assert!(c.shares.values().any(|s| s.nfs.is_some()));
    assert!(c.shares.values().any(|s| s.smb.is_some()));
    assert!(!c.snapshots.is_empty());
    assert!(!c.replication.is_empty());
    assert!(c.update.channel.is_some() && c.update.install_window.is_some());
    assert!(!c.update.trusted_keys.is_empty());
    assert!(!c.api.users.is_empty());
    assert!(!c.api.listen.is_empty());
    assert!(c.logging.json && c.logging.loki_url.is_some() && !c.logging.loki_labels.is_empty());
}

// ---------------------------------------------------------------------------------------
// Generated valid configs
// ---------------------------------------------------------------------------------------

fn name(s: &str) -> Name {
    Name::parse(s).unwrap_or_else(|e| panic!("generator made a bad name {s:?}: {e:?}"))
}
fn ifname(s: &str) -> IfName {
    IfName::parse(s).unwrap_or_else(|e| panic!("generator made a bad link name {s:?}: {e:?}"))
}
fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap_or_else(|e| panic!("generator made a bad CIDR {s:?}: {e:?}"))
}
fn domain(s: &str) -> DomainName {
    DomainName::parse(s).unwrap_or_else(|e| panic!("generator made a bad domain {s:?}: {e:?}"))
}
fn dataset(s: &str) -> DatasetName {
    DatasetName::parse(s).unwrap_or_else(|e| panic!("generator made a bad dataset {s:?}: {e:?}"))
}
fn secret(s: &str) -> SecretPath {
    SecretPath::parse(s).unwrap()
}
fn port(p: u16) -> Port {
    Port::new(u64::from(p.max(1))).unwrap()
}
/// `len` ports from `first`, cut short at 65535.
fn range(first: u16, len: u16) -> PortRange {
    let last = (u32::from(first) + u32::from(len.max(1)) - 1).min(65535);
    PortRange {
        first: port(first),
        last: Port::new(u64::from(last)).unwrap(),
    }
}
fn mtu(m: u16) -> Mtu {
    Mtu::new(u64::from(m)).unwrap()
}
fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}
/// Picks element `i` (modulo the length) of a non-empty slice.
fn pick<T: Clone>(v: &[T], i: usize) -> T {
    v[i % v.len()].clone()
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..100_000_000).prop_map(secs),
        (1u64..500, select(vec![1u64, 60, 3600, 86_400, 604_800])).prop_map(|(n, m)| secs(n * m)),
        any::<u64>().prop_map(secs),
    ]
}
/// A duration of at least `min` seconds.
fn duration_from(min: u64) -> impl Strategy<Value = Duration> {
    duration().prop_map(move |d| secs(d.as_secs().max(min)))
}
fn size() -> impl Strategy<Value = Size> {
    prop_oneof![
        any::<u64>().prop_map(Size::from_bytes),
        (0u64..1 << 20).prop_map(Size::from_bytes),
        (1u64..4096, 0u32..5).prop_map(|(n, e)| Size::from_bytes(n << (10 * e))),
    ]
}
fn rate_limit() -> impl Strategy<Value = RateLimit> {
    (
        1u32..100_000,
        select(vec![
            RatePer::Second,
            RatePer::Minute,
            RatePer::Hour,
            RatePer::Day,
        ]),
        proptest::option::of(1u32..1000),
    )
        .prop_map(|(count, per, burst)| RateLimit { count, per, burst })
}
fn time_window() -> impl Strategy<Value = TimeWindow> {
    (0u8..24, 0u8..60, 0u8..24, 0u8..60)
        .prop_filter("empty window", |(a, b, c, d)| (a, b) != (c, d))
        .prop_map(|(h1, m1, h2, m2)| {
            TimeWindow::parse(&format!("{h1:02}:{m1:02}-{h2:02}:{m2:02}")).unwrap()
        })
}
fn label() -> impl Strategy<Value = String> {
    // Not xn--: URL parsing would decode it as punycode.
    "[a-z][a-z0-9-]{0,8}[a-z0-9]|[a-z]".prop_filter("punycode", |l| !l.starts_with("xn--"))
}
fn domain_name() -> impl Strategy<Value = DomainName> {
    proptest::collection::vec(label(), 1..4).prop_map(|l| domain(&l.join(".")))
}
fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}
fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u16; 8]>().prop_map(Ipv6Addr::from)
}
fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![ipv4().prop_map(IpAddr::V4), ipv6().prop_map(IpAddr::V6)]
}
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        domain_name().prop_map(|d| d.to_string()),
        ipv4().prop_map(|a| a.to_string()),
        ipv6().prop_map(|a| format!("[{a}]")),
    ]
}
fn endpoint() -> impl Strategy<Value = Endpoint> {
    (host(), 1u16..).prop_map(|(h, p)| Endpoint::parse(&format!("{h}:{p}")).unwrap())
}
fn upstream() -> impl Strategy<Value = Upstream> {
    let text = prop_oneof![
        ipv4().prop_map(|a| a.to_string()),
        (ipv4(), 1u16..).prop_map(|(a, p)| format!("{a}:{p}")),
        ipv6().prop_map(|a| a.to_string()),
        (ipv6(), 1u16..).prop_map(|(a, p)| format!("[{a}]:{p}")),
        (host(), proptest::option::of(1u16..)).prop_map(|(h, p)| match p {
            Some(p) => format!("tls://{h}:{p}"),
            None => format!("tls://{h}"),
        }),
        (ipv4(), domain_name()).prop_map(|(a, n)| format!("tls://{a}#{n}")),
        (
            host(),
            proptest::option::of(1u16..),
            "(/[a-z0-9-]{1,8}){0,2}"
        )
            .prop_map(|(h, p, path)| match p {
                Some(p) => format!("https://{h}:{p}{path}"),
                None => format!("https://{h}{path}"),
            }),
    ];
    text.prop_map(|s| Upstream::parse(&s).unwrap_or_else(|e| panic!("{s:?}: {e:?}")))
}
fn key32() -> impl Strategy<Value = Key32> {
    any::<[u8; 32]>().prop_map(Key32::from_bytes)
}
fn ssh_key() -> impl Strategy<Value = SshPublicKey> {
    (any::<[u8; 32]>(), "[a-z]{1,8}@[a-z]{1,8}").prop_map(|(k, comment)| {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&k);
        SshPublicKey::parse(&format!("ssh-ed25519 {} {comment}", STANDARD.encode(blob))).unwrap()
    })
}
fn password_hash() -> impl Strategy<Value = PasswordHash> {
    (
        1u32..1 << 20,
        1u32..10,
        1u32..8,
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(m, t, p, salt, hash)| {
            let b64 = |b: &[u8]| STANDARD.encode(b).trim_end_matches('=').to_owned();
            PasswordHash::parse(&format!(
                "$argon2id$v=19$m={m},t={t},p={p}${}${}",
                b64(&salt),
                b64(&hash)
            ))
            .unwrap()
        })
}
fn domain_pattern() -> impl Strategy<Value = DomainPattern> {
    prop_oneof![
        domain_name().prop_map(DomainPattern::Exact),
        domain_name().prop_map(DomainPattern::Wildcard),
        (label(), any::<bool>()).prop_map(|(l, anchored)| {
            let re = if anchored {
                format!("/^{l}[0-9]+\\./")
            } else {
                format!("/(ads|{l})\\.[a-z]+/")
            };
            DomainPattern::parse(&re).unwrap()
        }),
    ]
}
fn verdict() -> impl Strategy<Value = Verdict> {
    select(vec![Verdict::Accept, Verdict::Drop, Verdict::Reject])
}
fn fingerprint() -> impl Strategy<Value = Fingerprint> {
    any::<[u8; 32]>().prop_map(|b| Fingerprint::parse(&hex::encode(b)).unwrap())
}

// The shape of a config: raw choices that `build` turns into a valid config. References
// are indices taken modulo the number of things declared, so any choice is usable.

#[derive(Debug, Clone)]
struct VlanSpec {
    id: u16,
    addressed: bool,
    mtu: Option<u16>,
}

#[derive(Debug, Clone)]
struct IfaceSpec {
    by_mac: bool,
    v6: bool,
    explicit_v4: bool,
    mtu: Option<u16>,
    route: Option<Option<u32>>,
    gateway: bool,
    vlans: Vec<VlanSpec>,
}

fn iface_spec() -> impl Strategy<Value = IfaceSpec> {
    let vlan = (
        1u16..=4094,
        any::<bool>(),
        proptest::option::of(1280u16..=9216),
    )
        .prop_map(|(id, addressed, mtu)| VlanSpec { id, addressed, mtu });
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1280u16..=9216),
        proptest::option::of(proptest::option::of(any::<u32>())),
        any::<bool>(),
        proptest::collection::vec(vlan, 0..3),
    )
        .prop_map(
            |(by_mac, v6, explicit_v4, mtu, route, gateway, vlans)| IfaceSpec {
                by_mac,
                v6,
                explicit_v4,
                mtu,
                route,
                gateway,
                vlans,
            },
        )
}

#[derive(Debug, Clone)]
struct PeerSpec {
    key: Key32,
    extra_net: bool,
    endpoint: Option<Endpoint>,
    keepalive: Option<u64>,
    psk: bool,
    enabled: bool,
}

#[derive(Debug, Clone)]
struct WgSpec {
    listen: bool,
    key_file: bool,
    v6: bool,
    mtu: Option<u16>,
    peers: Vec<PeerSpec>,
}

fn wg_spec() -> impl Strategy<Value = WgSpec> {
    let peer = (
        key32(),
        any::<bool>(),
        proptest::option::of(endpoint()),
        proptest::option::of(1u64..=65535),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(key, extra_net, endpoint, keepalive, psk, enabled)| PeerSpec {
                key,
                extra_net,
                endpoint,
                keepalive,
                psk,
                enabled,
            },
        );
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1280u16..=9216),
        proptest::collection::vec(peer, 0..4),
    )
        .prop_map(|(listen, key_file, v6, mtu, peers)| WgSpec {
            listen,
            key_file,
            v6,
            mtu,
            peers,
        })
}

#[derive(Debug, Clone)]
struct LeaseSpec {
    mac: [u8; 6],
    host: u8,
    hostname: Option<DomainName>,
}

#[derive(Debug, Clone)]
struct DhcpSpec {
    first: u8,
    last: u8,
    lease_time: Duration,
    router: bool,
    dns: Option<bool>,
    domain: Option<DomainName>,
    leases: Vec<LeaseSpec>,
}

fn dhcp_spec() -> impl Strategy<Value = Option<DhcpSpec>> {
    let lease = (
        any::<[u8; 6]>(),
        2u8..=254,
        proptest::option::of(domain_name()),
    )
        .prop_map(|(mac, host, hostname)| LeaseSpec {
            mac,
            host,
            hostname,
        });
    proptest::option::of(
        (
            2u8..=254,
            2u8..=254,
            duration(),
            any::<bool>(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(domain_name()),
            proptest::collection::vec(lease, 0..4),
        )
            .prop_map(|(a, b, lease_time, router, dns, domain, leases)| DhcpSpec {
                first: a.min(b),
                last: a.max(b),
                lease_time,
                router,
                dns,
                domain,
                leases,
            }),
    )
}

#[derive(Debug, Clone)]
struct RuleSpec {
    name: Option<String>,
    from: Option<usize>,
    to: Option<usize>,
    protocol: Protocol,
    ports: Vec<(u16, u16)>,
    source_ports: Vec<(u16, u16)>,
    v6: bool,
    source: Vec<u8>,
    destination: Vec<u8>,
    rate_limit: Option<RateLimit>,
    log: bool,
    action: Verdict,
    enabled: bool,
}

fn port_ranges() -> impl Strategy<Value = Vec<(u16, u16)>> {
    proptest::collection::vec((1u16..=65535, 1u16..=100), 0..3)
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        (
            proptest::option::of("[a-z][a-z0-9-]{0,10}"),
            proptest::option::of(0usize..8),
            proptest::option::of(0usize..8),
            select(vec![
                Protocol::Any,
                Protocol::Tcp,
                Protocol::Udp,
                Protocol::TcpUdp,
                Protocol::Icmp,
                Protocol::Icmpv6,
            ]),
            port_ranges(),
            port_ranges(),
        ),
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..3),
            proptest::collection::vec(any::<u8>(), 0..3),
            proptest::option::of(rate_limit()),
            any::<bool>(),
            verdict(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (name, from, to, protocol, ports, source_ports),
                (v6, source, destination, rate_limit, log, action, enabled),
            )| RuleSpec {
                name,
                from,
                to,
                protocol,
                ports,
                source_ports,
                v6,
                source,
                destination,
                rate_limit,
                log,
                action,
                enabled,
            },
        )
}

#[derive(Debug, Clone)]
struct ForwardSpec {
    from_link: usize,
    to_link: usize,
    host: u8,
    protocol: ForwardProtocol,
    len: u16,
    to_port: Option<Option<u16>>,
    source: bool,
    hairpin: bool,
    enabled: bool,
}

fn forward_spec() -> impl Strategy<Value = ForwardSpec> {
    (
        0usize..16,
        0usize..16,
        2u8..=254,
        select(vec![
            ForwardProtocol::Tcp,
            ForwardProtocol::Udp,
            ForwardProtocol::TcpUdp,
        ]),
        1u16..=200,
        proptest::option::of(proptest::option::of(1u16..=60000)),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(from_link, to_link, host, protocol, len, to_port, source, hairpin, enabled)| {
                ForwardSpec {
                    from_link,
                    to_link,
                    host,
                    protocol,
                    len,
                    to_port,
                    source,
                    hairpin,
                    enabled,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct NetSpec {
    ifaces: Vec<IfaceSpec>,
    wan: bool,
    bridge: Option<(usize, bool)>,
    wg: Vec<WgSpec>,
    dhcp: Vec<Option<DhcpSpec>>,
    zone_prefix: String,
    zones: Vec<(Verdict, Verdict, Verdict, bool)>,
    link_zone: Vec<usize>,
    policies: Vec<(usize, usize, Verdict)>,
    rules: Vec<RuleSpec>,
    forwards: Vec<ForwardSpec>,
}

fn net_spec() -> impl Strategy<Value = NetSpec> {
    (
        (
            proptest::collection::vec(iface_spec(), 1..5),
            any::<bool>(),
            proptest::option::of((1usize..3, any::<bool>())),
            proptest::collection::vec(wg_spec(), 0..3),
            proptest::collection::vec(dhcp_spec(), 16),
        ),
        (
            select(vec!["z", "zone", "net-", "trust_"]).prop_map(str::to_owned),
            proptest::collection::vec((verdict(), verdict(), verdict(), any::<bool>()), 1..5),
            proptest::collection::vec(0usize..6, 16),
            proptest::collection::vec((0usize..8, 0usize..8, verdict()), 0..6),
            proptest::collection::vec(rule_spec(), 0..5),
            proptest::collection::vec(forward_spec(), 0..4),
        ),
    )
        .prop_map(
            |(
                (ifaces, wan, bridge, wg, dhcp),
                (zone_prefix, zones, link_zone, policies, rules, forwards),
            )| NetSpec {
                ifaces,
                wan,
                bridge,
                wg,
                dhcp,
                zone_prefix,
                zones,
                link_zone,
                policies,
                rules,
                forwards,
            },
        )
}

/// A client group: zones, links, cidrs (as indices), lists, blocking.
type GroupSpec = (Vec<usize>, Vec<usize>, Vec<u8>, Vec<usize>, bool);

#[derive(Debug, Clone)]
struct DnsSpec {
    enabled: bool,
    listen: Vec<(usize, Option<(IpAddr, u16)>)>,
    port: u16,
    dot_port: Option<u16>,
    doh_port: Option<u16>,
    upstreams: Vec<Upstream>,
    cache_size: u32,
    ttl: Option<(Option<Duration>, Option<Duration>)>,
    serve_stale: bool,
    blocking: bool,
    block_mode: BlockMode,
    block_addresses: Vec<IpAddr>,
    allow: Vec<DomainPattern>,
    deny: Vec<DomainPattern>,
    lists: Vec<(bool, ListFormat, Duration, bool)>,
    default_group: Option<(Vec<usize>, Option<BlockMode>, bool)>,
    groups: Vec<GroupSpec>,
    records: Vec<(DomainName, Vec<IpAddr>, Option<DomainName>, Duration)>,
    forwarding: Vec<(DomainName, Vec<Upstream>)>,
    query_log_size: Size,
    rate_limit: Option<RateLimit>,
}

fn block_mode() -> impl Strategy<Value = BlockMode> {
    select(vec![
        BlockMode::Null,
        BlockMode::Nxdomain,
        BlockMode::Nodata,
        BlockMode::Custom,
    ])
}

fn dns_spec() -> impl Strategy<Value = DnsSpec> {
    let list = (
        any::<bool>(),
        select(vec![
            ListFormat::Auto,
            ListFormat::Hosts,
            ListFormat::Domains,
            ListFormat::Adblock,
        ]),
        duration_from(300),
        any::<bool>(),
    );
    let group = (
        proptest::collection::vec(0usize..8, 0..3),
        proptest::collection::vec(0usize..16, 0..3),
        proptest::collection::vec(any::<u8>(), 0..3),
        proptest::collection::vec(0usize..8, 0..3),
        any::<bool>(),
    );
    let record = (
        domain_name(),
        proptest::collection::vec(ip(), 0..3),
        domain_name(),
        duration(),
    )
        .prop_map(|(n, addrs, cname, ttl)| {
            let cname = if addrs.is_empty() { Some(cname) } else { None };
            (n, addrs, cname, ttl)
        });
    (
        (
            any::<bool>(),
            proptest::collection::vec((0usize..16, proptest::option::of((ip(), 1u16..))), 0..3),
            1u16..,
            proptest::option::of(1u16..),
            proptest::option::of(1u16..),
            proptest::collection::vec(upstream(), 0..4),
            any::<u32>(),
            proptest::option::of((
                proptest::option::of(duration()),
                proptest::option::of(duration()),
            )),
            any::<bool>(),
            any::<bool>(),
            block_mode(),
            proptest::collection::vec(ip(), 1..3),
        ),
        (
            proptest::collection::vec(domain_pattern(), 0..3),
            proptest::collection::vec(domain_pattern(), 0..3),
            proptest::collection::vec(list, 0..4),
            proptest::option::of((
                proptest::collection::vec(0usize..8, 0..3),
                proptest::option::of(block_mode()),
                any::<bool>(),
            )),
            proptest::collection::vec(group, 0..3),
            proptest::collection::vec(record, 0..3),
            proptest::collection::vec(
                (domain_name(), proptest::collection::vec(upstream(), 1..3)),
                0..2,
            ),
            size(),
            proptest::option::of(rate_limit()),
        ),
    )
        .prop_map(
            |(
                (
                    enabled,
                    listen,
                    port,
                    dot_port,
                    doh_port,
                    upstreams,
                    cache_size,
                    ttl,
                    serve_stale,
                    blocking,
                    block_mode,
                    block_addresses,
                ),
                (
                    allow,
                    deny,
                    lists,
                    default_group,
                    groups,
                    records,
                    forwarding,
                    query_log_size,
                    rate_limit,
                ),
            )| DnsSpec {
                enabled,
                listen,
                port,
                dot_port,
                doh_port,
                upstreams,
                cache_size,
                ttl,
                serve_stale,
                blocking,
                block_mode,
                block_addresses,
                allow,
                deny,
                lists,
                default_group,
                groups,
                records,
                forwarding,
                query_log_size,
                rate_limit,
            },
        )
}

#[derive(Debug, Clone)]
struct PoolSpec {
    name: String,
    vdevs: Vec<(VdevLayout, usize)>,
    spares: usize,
    ashift: u8,
    scrub: Duration,
    datasets: Vec<(String, DatasetProps)>,
}

#[derive(Debug, Clone)]
struct DatasetProps {
    compression: Option<Compression>,
    atime: Option<bool>,
    recordsize: Option<u32>,
    quota_reservation: (Option<Size>, Option<Size>),
    mountpoint: Option<String>,
}

fn dataset_props() -> impl Strategy<Value = DatasetProps> {
    (
        proptest::option::of(select(vec![
            Compression::Off,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Zle,
        ])),
        proptest::option::of(any::<bool>()),
        proptest::option::of(9u32..=24),
        (proptest::option::of(size()), proptest::option::of(size())),
        proptest::option::of("(/[a-z0-9_][a-z0-9_ .-]{0,7}){1,3}"),
    )
        .prop_map(|(compression, atime, recordsize, (q, r), mountpoint)| {
            // A reservation never exceeds the quota.
            let quota_reservation = match (q, r) {
                (Some(q), Some(r)) if r > q => (Some(r), Some(q)),
                other => other,
            };
            DatasetProps {
                compression,
                atime,
                recordsize,
                quota_reservation,
                mountpoint,
            }
        })
}

fn pool_spec() -> impl Strategy<Value = PoolSpec> {
    let layout = select(vec![
        VdevLayout::Single,
        VdevLayout::Mirror,
        VdevLayout::Raidz1,
        VdevLayout::Raidz2,
        VdevLayout::Raidz3,
    ]);
    (
        "[a-z][a-z0-9_.:-]{0,7}".prop_filter("reserved pool name", |n| {
            !["mirror", "raidz", "spare", "log", "cache", "draid"]
                .iter()
                .any(|r| n.starts_with(r))
        }),
        proptest::collection::vec((layout, 0usize..3), 1..3),
        0usize..3,
        9u8..=16,
        duration(),
        proptest::collection::vec(
            (
                "[A-Za-z0-9_:][A-Za-z0-9_.: -]{0,8}(/[A-Za-z0-9_:][A-Za-z0-9_.: -]{0,8}){0,2}",
                dataset_props(),
            ),
            0..4,
        ),
    )
        .prop_map(|(name, vdevs, spares, ashift, scrub, datasets)| PoolSpec {
            name,
            vdevs,
            spares,
            ashift,
            scrub,
            datasets,
        })
}

/// An SMB share: users, read-only users (as indices), guest, browseable, time machine.
type SmbSpec = (Vec<usize>, Vec<usize>, bool, bool, bool);

#[derive(Debug, Clone)]
struct ShareSpec {
    dataset: usize,
    read_only: bool,
    nfs: Option<Vec<(u8, Vec<NfsOption>)>>,
    smb: Option<SmbSpec>,
}

fn nfs_options() -> impl Strategy<Value = Vec<NfsOption>> {
    // One of each contradicting pair at most: (choice, present) per pair, plus extras.
    (
        proptest::option::of(select(vec![NfsOption::Rw, NfsOption::Ro])),
        proptest::option::of(select(vec![NfsOption::Sync, NfsOption::Async])),
        proptest::option::of(select(vec![NfsOption::RootSquash, NfsOption::NoRootSquash])),
        proptest::option::of(select(vec![NfsOption::Secure, NfsOption::Insecure])),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, d, all_squash, no_subtree)| {
            let mut v: Vec<NfsOption> = [a, b, c, d].into_iter().flatten().collect();
            if all_squash {
                v.push(NfsOption::AllSquash);
            }
            if no_subtree {
                v.insert(0, NfsOption::NoSubtreeCheck);
            }
            v
        })
}

fn share_spec() -> impl Strategy<Value = ShareSpec> {
    (
        0usize..16,
        any::<bool>(),
        proptest::option::of(proptest::collection::vec(
            (any::<u8>(), nfs_options()),
            1..3,
        )),
        proptest::option::of((
            proptest::collection::vec(0usize..8, 0..3),
            proptest::collection::vec(0usize..8, 0..3),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )),
        any::<bool>(),
    )
        .prop_map(|(dataset, read_only, nfs, smb, nfs_if_none)| {
            // A share needs nfs or smb.
            let nfs = match (&nfs, &smb) {
                (None, None) if nfs_if_none => Some(vec![(0, vec![])]),
                _ => nfs,
            };
            let smb = match (&nfs, smb) {
                (None, None) => Some((vec![], vec![], true, true, false)),
                (_, s) => s,
            };
            ShareSpec {
                dataset,
                read_only,
                nfs,
                smb,
            }
        })
}

#[derive(Debug, Clone)]
struct StorageSpec {
    pools: Vec<PoolSpec>,
    users: Vec<(Option<u32>, bool)>,
    shares: Vec<ShareSpec>,
    snapshots: Vec<(Vec<usize>, bool, [u32; 6], u64)>,
    replication: Vec<ReplSpec>,
}

#[derive(Debug, Clone)]
struct ReplSpec {
    target: Endpoint,
    transport: Transport,
    target_dataset: String,
    datasets: Vec<usize>,
    recursive: bool,
    interval: Duration,
    bandwidth: Option<Size>,
    fingerprint: Option<Fingerprint>,
    identity: bool,
    enabled: bool,
}

fn repl_spec() -> impl Strategy<Value = ReplSpec> {
    (
        endpoint(),
        select(vec![Transport::Tls, Transport::Ssh, Transport::Local]),
        "[a-z][a-z0-9]{0,6}(/[a-z0-9]{1,6}){0,2}",
        proptest::collection::vec(0usize..16, 1..3),
        any::<bool>(),
        duration_from(60),
        proptest::option::of(size().prop_map(|s| Size::from_bytes(s.bytes().max(1024)))),
        proptest::option::of(fingerprint()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                target,
                transport,
                target_dataset,
                datasets,
                recursive,
                interval,
                bandwidth,
                fingerprint,
                identity,
                enabled,
            )| ReplSpec {
                target,
                transport,
                target_dataset,
                datasets,
                recursive,
                interval,
                bandwidth,
                // An ssh job needs both: its key and the target's host key.
                fingerprint: match transport {
                    Transport::Ssh => fingerprint.or_else(|| {
                        Some(Fingerprint::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap())
                    }),
                    Transport::Tls => fingerprint,
                    // A local job has no target, no pin and no key.
                    Transport::Local => None,
                },
                identity: transport != Transport::Local
                    && (identity || transport == Transport::Ssh),
                enabled,
            },
        )
}

fn storage_spec() -> impl Strategy<Value = StorageSpec> {
    let frequent = select(vec![60u64, 300, 600, 900, 1200, 1800, 3600]);
    let counts = (any::<[u32; 6]>(), 0usize..6, 1u32..100).prop_map(|(c, i, n)| {
        // Small counts, at least one of them non-zero.
        let mut c = c.map(|x| if x % 3 == 0 { 0 } else { x % 1000 });
        c[i] = n;
        c
    });
    (
        proptest::collection::vec(pool_spec(), 0..3),
        proptest::collection::vec((proptest::option::of(1000u32..=60000), any::<bool>()), 0..4),
        proptest::collection::vec(share_spec(), 0..4),
        proptest::collection::vec(
            (
                proptest::collection::vec(0usize..16, 1..3),
                any::<bool>(),
                counts,
                frequent,
            ),
            0..3,
        ),
        proptest::collection::vec(repl_spec(), 0..3),
    )
        .prop_map(
            |(pools, users, shares, snapshots, replication)| StorageSpec {
                pools,
                users,
                shares,
                snapshots,
                replication,
            },
        )
}

#[derive(Debug, Clone)]
struct MiscSpec {
    hostname: DomainName,
    domain: DomainName,
    timezone: &'static str,
    ntp: Vec<String>,
    ssh_keys: Vec<SshPublicKey>,
    channel: Option<String>,
    trusted_keys: Vec<Key32>,
    auto_install: bool,
    install_window: Option<TimeWindow>,
    check_interval: Duration,
    api_listen: Vec<(usize, Option<(IpAddr, u16)>)>,
    api_port: u16,
    session_timeout: Duration,
    users: Vec<(Role, PasswordHash, bool, bool)>,
}

fn misc_spec() -> impl Strategy<Value = MiscSpec> {
    (
        (
            domain_name(),
            domain_name(),
            select(vec![
                "UTC",
                "Europe/Berlin",
                "America/Argentina/Buenos_Aires",
                "Etc/GMT+5",
            ]),
            proptest::collection::vec(host(), 0..3),
            proptest::collection::vec(ssh_key(), 0..3),
        ),
        (
            proptest::option::of(
                (host(), "(/[a-z0-9]{1,6}){0,3}").prop_map(|(h, p)| format!("https://{h}{p}")),
            ),
            proptest::collection::vec(key32(), 0..3),
            any::<bool>(),
            proptest::option::of(time_window()),
            duration_from(300),
        ),
        (
            proptest::collection::vec((0usize..16, proptest::option::of((ip(), 1u16..))), 0..3),
            1u16..,
            duration_from(60),
            proptest::collection::vec(
                (
                    select(vec![Role::Admin, Role::Viewer]),
                    password_hash(),
                    any::<bool>(),
                    any::<bool>(),
                ),
                0..3,
            ),
        ),
    )
        .prop_map(
            |(
                (hostname, domain, timezone, ntp, ssh_keys),
                (channel, trusted_keys, auto_install, install_window, check_interval),
                (api_listen, api_port, session_timeout, users),
            )| MiscSpec {
                hostname,
                domain,
                timezone,
                ntp,
                ssh_keys,
                auto_install: auto_install && channel.is_some(),
                channel,
                trusted_keys,
                install_window,
                check_interval,
                api_listen,
                api_port,
                session_timeout,
                users,
            },
        )
}

#[derive(Debug, Clone)]
struct Spec {
    net: NetSpec,
    dns: DnsSpec,
    storage: StorageSpec,
    misc: MiscSpec,
}

fn spec() -> impl Strategy<Value = Spec> {
    (net_spec(), dns_spec(), storage_spec(), misc_spec()).prop_map(|(net, dns, storage, misc)| {
        Spec {
            net,
            dns,
            storage,
            misc,
        }
    })
}

/// A link that got an IPv4 subnet `10.a.b.0/24`, with its own address `.1`.
#[derive(Debug, Clone)]
struct Subnet {
    link: IfName,
    a: u8,
    b: u8,
    /// Whether a DHCP server may run on it (not a tunnel).
    dhcp_ok: bool,
}

impl Subnet {
    fn host(&self, h: u8) -> Ipv4Addr {
        v4(10, self.a, self.b, h)
    }
}

/// Turns a spec into a config that satisfies every cross-check.
fn build(s: &Spec) -> Config {
    let n = &s.net;
    let mut interfaces = BTreeMap::new();
    let mut vlans = BTreeMap::new();
    let mut bridges = BTreeMap::new();
    let mut wireguard = BTreeMap::new();
    let mut subnets: Vec<Subnet> = Vec::new();
    // Links that may join a zone or be named by DNS and the API.
    let mut zoneable: Vec<IfName> = Vec::new();

    // Interfaces lan1.. with 10.i.0.1/24, their VLANs with 10.i.j.1/24.
    let mut vlan_ids = BTreeSet::new();
    for (i, f) in n.ifaces.iter().enumerate() {
        let i = u8::try_from(i + 1).unwrap();
        let lname = ifname(&format!("lan{i}"));
        let mut addresses = vec![cidr(&format!("10.{i}.0.1/24"))];
        if f.v6 {
            addresses.push(cidr(&format!("fd00:{i}::1/64")));
        }
        interfaces.insert(
            lname.clone(),
            Interface {
                device: (!f.by_mac).then(|| ifname(&format!("eth{i}"))),
                mac: f
                    .by_mac
                    .then(|| MacAddr::parse(&format!("52:54:00:00:01:{i:02x}")).unwrap()),
                ipv4: f.explicit_v4.then_some(Ipv4Mode::Static),
                ipv6: (f.v6 && f.explicit_v4).then_some(Ipv6Mode::Static),
                addresses,
                gateway: f.gateway.then(|| v4(10, i, 0, 254)),
                gateway6: (f.gateway && f.v6).then(|| format!("fd00:{i}::fe").parse().unwrap()),
                mtu: f.mtu.map(mtu),
                routes: f
                    .route
                    .map(|metric| Route {
                        to: cidr(&format!("172.{}.0.0/16", 15 + i)),
                        via: IpAddr::V4(v4(10, i, 0, 254)),
                        metric,
                    })
                    .into_iter()
                    .collect(),
            },
        );
        subnets.push(Subnet {
            link: lname.clone(),
            a: i,
            b: 0,
            dhcp_ok: true,
        });
        zoneable.push(lname.clone());
        for (j, v) in f.vlans.iter().enumerate() {
            let j = u8::try_from(j + 1).unwrap();
            let mut id = v.id;
            while !vlan_ids.insert(id) {
                id = id % 4094 + 1;
            }
            let vname = ifname(&format!("lan{i}.{id}"));
            let vmtu = match (v.mtu, f.mtu) {
                (Some(m), Some(pm)) => Some(m.min(pm)),
                (m, _) => m,
            };
            vlans.insert(
                vname.clone(),
                Vlan {
                    parent: lname.clone(),
                    id: VlanId::new(u64::from(id)).unwrap(),
                    ipv4: None,
                    ipv6: None,
                    addresses: if v.addressed {
                        vec![cidr(&format!("10.{i}.{j}.1/24"))]
                    } else {
                        vec![]
                    },
                    mtu: vmtu.map(mtu),
                    routes: vec![],
                },
            );
            if v.addressed {
                subnets.push(Subnet {
                    link: vname.clone(),
                    a: i,
                    b: j,
                    dhcp_ok: true,
                });
            }
            zoneable.push(vname);
        }
    }
    if n.wan {
        interfaces.insert(
            ifname("wan"),
            Interface {
                device: Some(ifname("eth0")),
                mac: None,
                ipv4: Some(Ipv4Mode::Dhcp),
                ipv6: Some(Ipv6Mode::Slaac),
                addresses: vec![],
                gateway: None,
                gateway6: None,
                mtu: None,
                routes: vec![],
            },
        );
        zoneable.push(ifname("wan"));
    }
    if let Some((ports, v6)) = n.bridge {
        let mut members = Vec::new();
        for k in 0..ports {
            let pname = ifname(&format!("port{k}"));
            interfaces.insert(
                pname.clone(),
                Interface {
                    device: Some(ifname(&format!("enp{k}s0"))),
                    mac: None,
                    ipv4: None,
                    ipv6: None,
                    addresses: vec![],
                    gateway: None,
                    gateway6: None,
                    mtu: None,
                    routes: vec![],
                },
            );
            members.push(pname);
        }
        let mut addresses = vec![cidr("10.250.0.1/24")];
        if v6 {
            addresses.push(cidr("fd00:ff::1/64"));
        }
        bridges.insert(
            ifname("br-lan"),
            Bridge {
                members,
                vlan_filtering: v6,
                stp: !v6,
                ports: BTreeMap::new(),
                ipv4: None,
                ipv6: None,
                addresses,
                mtu: None,
                routes: vec![],
            },
        );
        subnets.push(Subnet {
            link: ifname("br-lan"),
            a: 250,
            b: 0,
            dhcp_ok: true,
        });
        zoneable.push(ifname("br-lan"));
    }
    for (w, t) in n.wg.iter().enumerate() {
        let w8 = u8::try_from(w).unwrap();
        let wname = ifname(&format!("wg{w}"));
        let a = 100 + w8;
        let mut addresses = vec![cidr(&format!("10.{a}.0.1/24"))];
        if t.v6 {
            addresses.push(cidr(&format!("fd00:a{w}::1/64")));
        }
        let mut peers = BTreeMap::new();
        for (p, ps) in t.peers.iter().enumerate() {
            let p8 = u8::try_from(p).unwrap();
            // Distinct keys: the first two bytes number the peer.
            let mut key = *ps.key.bytes();
            key[0] = w8;
            key[1] = p8;
            let mut allowed_ips = vec![cidr(&format!("10.{a}.0.{}/32", 2 + p8))];
            if ps.extra_net {
                allowed_ips.push(cidr(&format!("192.168.{}.0/24", 10 * w8 + p8)));
            }
            peers.insert(
                name(&format!("peer{p}")),
                WireguardPeer {
                    public_key: Key32::from_bytes(key),
                    allowed_ips,
                    endpoint: ps.endpoint.clone(),
                    persistent_keepalive: ps.keepalive.map(secs),
                    preshared_key_file: ps.psk.then(|| secret(&format!("/data/wg/{w}-{p}.psk"))),
                    enabled: ps.enabled,
                },
            );
        }
        wireguard.insert(
            wname.clone(),
            WireguardInterface {
                listen_port: t.listen.then(|| port(51820 + u16::from(w8))),
                addresses,
                private_key_file: t.key_file.then(|| secret(&format!("/data/wg/wg{w}.key"))),
                mtu: t.mtu.map(mtu),
                peers,
            },
        );
        subnets.push(Subnet {
            link: wname.clone(),
            a,
            b: 0,
            dhcp_ok: false,
        });
        zoneable.push(wname);
    }

    // DHCP on some of the subnets that allow it.
    let mut dhcp = BTreeMap::new();
    for (sn, d) in subnets.iter().filter(|s| s.dhcp_ok).zip(&n.dhcp) {
        let Some(d) = d else { continue };
        let mut leases = Vec::new();
        let mut macs = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for l in &d.leases {
            let mut mac = l.mac;
            mac[0] &= 0xfe; // unicast
            if macs.insert(mac) && addrs.insert(l.host) {
                let text = mac.map(|b| format!("{b:02x}")).join(":");
                leases.push(StaticLease {
                    mac: MacAddr::parse(&text).unwrap(),
                    address: sn.host(l.host),
                    hostname: l.hostname.clone(),
                });
            }
        }
        dhcp.insert(
            sn.link.clone(),
            DhcpServer {
                start: sn.host(d.first),
                end: sn.host(d.last),
                lease_time: d.lease_time,
                router: d.router.then(|| sn.host(1)),
                dns: d.dns.map(|more| {
                    if more {
                        vec![sn.host(1), v4(9, 9, 9, 9)]
                    } else {
                        vec![]
                    }
                }),
                domain: d.domain.clone(),
                static_leases: leases,
            },
        );
    }

    // Zones partition (some of) the links.
    let zone_names: Vec<Name> = (0..n.zones.len())
        .map(|k| name(&format!("{}{k}", n.zone_prefix)))
        .collect();
    let mut zone_of: BTreeMap<IfName, usize> = BTreeMap::new();
    for (l, link) in zoneable.iter().enumerate() {
        // Some links stay outside every zone.
        let z = n.link_zone[l % n.link_zone.len()];
        if z < zone_names.len() {
            zone_of.insert(link.clone(), z);
        }
    }
    let mut zones = BTreeMap::new();
    for (k, (input, forward, output, masquerade)) in n.zones.iter().enumerate() {
        zones.insert(
            zone_names[k].clone(),
            Zone {
                interfaces: zoneable
                    .iter()
                    .filter(|l| zone_of.get(*l) == Some(&k))
                    .cloned()
                    .collect(),
                input: *input,
                forward: *forward,
                output: *output,
                masquerade: *masquerade,
            },
        );
    }
    let mut pairs = BTreeSet::new();
    let mut policies = Vec::new();
    for (a, b, action) in &n.policies {
        let (a, b) = (a % zone_names.len(), b % zone_names.len());
        if a != b && pairs.insert((a, b)) {
            policies.push(Policy {
                from: zone_names[a].clone(),
                to: zone_names[b].clone(),
                action: *action,
            });
        }
    }
    let ranges = |v: &[(u16, u16)]| -> Vec<PortRange> {
        v.iter().map(|(first, len)| range(*first, *len)).collect()
    };
    let rules = n
        .rules
        .iter()
        .map(|r| {
            let v6 = match r.protocol {
                Protocol::Icmp => false,
                Protocol::Icmpv6 => true,
                _ => r.v6,
            };
            let net = |x: &u8| {
                if v6 {
                    cidr(&format!("fd00:{x:x}::/64"))
                } else {
                    cidr(&format!("10.{x}.0.0/16"))
                }
            };
            let ports_ok = r.protocol.has_ports();
            Rule {
                name: r.name.as_deref().map(name),
                from: r.from.map(|z| pick(&zone_names, z)),
                to: r.to.map(|z| pick(&zone_names, z)),
                protocol: r.protocol,
                ports: if ports_ok { ranges(&r.ports) } else { vec![] },
                source_ports: if ports_ok {
                    ranges(&r.source_ports)
                } else {
                    vec![]
                },
                source: r.source.iter().map(net).collect(),
                destination: r.destination.iter().map(net).collect(),
                rate_limit: r.rate_limit,
                log: r.log,
                action: r.action,
                enabled: r.enabled,
            }
        })
        .collect();

    // Forwards from a zone to a host on a link of another zone, on disjoint external ports.
    let zoned: Vec<&Subnet> = subnets
        .iter()
        .filter(|s| zone_of.contains_key(&s.link))
        .collect();
    let mut forwards = BTreeMap::new();
    if !zoned.is_empty() {
        for (k, f) in n.forwards.iter().enumerate() {
            let target = pick(&zoned, f.to_link);
            let tz = zone_of[&target.link];
            let from = (0..zone_names.len())
                .map(|z| (z + f.from_link) % zone_names.len())
                .find(|z| *z != tz);
            let Some(from) = from else { continue };
            let base = 1000 + 1000 * u16::try_from(k).unwrap();
            forwards.insert(
                name(&format!("fwd{k}")),
                PortForward {
                    from: zone_names[from].clone(),
                    protocol: f.protocol,
                    port: range(base, f.len),
                    to: target.host(f.host),
                    to_port: f.to_port.map(|p| match p {
                        Some(p) => range(p, f.len),
                        None => range(base, f.len),
                    }),
                    source: if f.source {
                        vec![cidr("203.0.113.0/24")]
                    } else {
                        vec![]
                    },
                    hairpin: f.hairpin,
                    enabled: f.enabled,
                },
            );
        }
    }

    let dns = build_dns(&s.dns, &zone_names, &zoneable, n.wan);
    let (storage, shares, snapshots, replication) = build_storage(&s.storage);
    let m = &s.misc;
    let listen = |v: &[(usize, Option<(IpAddr, u16)>)]| -> Vec<Listen> {
        v.iter()
            .map(|(l, addr)| match addr {
                Some((ip, p)) => Listen::Addr(std::net::SocketAddr::new(*ip, *p)),
                None => Listen::Interface(pick(&zoneable, *l)),
            })
            .collect()
    };
    Config {
        version: CURRENT_VERSION,
        system: System {
            hostname: m.hostname.clone(),
            domain: m.domain.clone(),
            timezone: Timezone::parse(m.timezone).unwrap(),
            ntp_servers: m.ntp.iter().map(|h| Host::parse(h).unwrap()).collect(),
            admin_ssh_keys: m.ssh_keys.clone(),
        },
        interfaces,
        vlans,
        bridges,
        dhcp,
        firewall: Firewall {
            zones,
            policies,
            rules,
            forwards,
        },
        wireguard,
        dns: Dns {
            listen: listen(&s.dns.listen),
            ..dns
        },
        storage,
        shares,
        snapshots,
        replication,
        update: Update {
            channel: m.channel.as_deref().map(|c| HttpUrl::parse(c).unwrap()),
            trusted_keys: m.trusted_keys.clone(),
            auto_install: m.auto_install,
            install_window: m.install_window,
            check_interval: m.check_interval,
        },
        api: Api {
            listen: listen(&m.api_listen),
            port: port(m.api_port),
            session_timeout: m.session_timeout,
            users: m
                .users
                .iter()
                .enumerate()
                .map(|(k, (role, hash, totp, disabled))| {
                    (
                        name(&format!("user{k}")),
                        ApiUser {
                            role: *role,
                            password_hash: hash.clone(),
                            totp_secret_file: totp.then(|| secret(&format!("/data/api/{k}.totp"))),
                            disabled: *disabled,
                        },
                    )
                })
                .collect(),
        },
        // Covered by tests/valid/full.toml; the generator leaves logging at its default.
        logging: Logging::default(),
    }
}

/// `dhcp_wan`: a link takes its address by DHCP, so dnsd has the lease's resolvers to look
/// up a DoT/DoH upstream given by name.
fn build_dns(d: &DnsSpec, zones: &[Name], links: &[IfName], dhcp_wan: bool) -> Dns {
    let list_names: Vec<Name> = (0..d.lists.len())
        .map(|k| name(&format!("list{k}")))
        .collect();
    let lists = d
        .lists
        .iter()
        .enumerate()
        .map(|(k, (url, format, interval, enabled))| {
            (
                list_names[k].clone(),
                BlockList {
                    url: url.then(|| {
                        HttpUrl::parse(&format!("https://lists.example/{k}.txt")).unwrap()
                    }),
                    file: (!url)
                        .then(|| AbsPath::parse(&format!("/data/dns/list{k}.txt")).unwrap()),
                    format: *format,
                    update_interval: *interval,
                    enabled: *enabled,
                },
            )
        })
        .collect();
    let refs = |idx: &[usize]| -> Vec<Name> {
        if list_names.is_empty() {
            vec![]
        } else {
            idx.iter().map(|i| pick(&list_names, *i)).collect()
        }
    };
    let mut groups = BTreeMap::new();
    if let Some((l, mode, blocking)) = &d.default_group {
        groups.insert(
            name("default"),
            ClientGroup {
                zones: vec![],
                interfaces: vec![],
                cidrs: vec![],
                lists: refs(l),
                allow: vec![],
                deny: vec![],
                block_mode: *mode,
                blocking: Some(*blocking),
            },
        );
    }
    for (k, (z, i, c, l, blocking)) in d.groups.iter().enumerate() {
        let mut cidrs: Vec<Cidr> = c
            .iter()
            .map(|x| cidr(&format!("192.168.{x}.0/24")))
            .collect();
        let zones: Vec<Name> = z.iter().map(|z| pick(zones, *z)).collect();
        let interfaces: Vec<IfName> = i.iter().map(|i| pick(links, *i)).collect();
        if zones.is_empty() && interfaces.is_empty() && cidrs.is_empty() {
            cidrs.push(cidr(&format!("172.16.{k}.0/24")));
        }
        groups.insert(
            name(&format!("group{k}")),
            ClientGroup {
                zones,
                interfaces,
                cidrs,
                lists: refs(l),
                allow: d.allow.clone(),
                deny: vec![],
                block_mode: None,
                blocking: Some(*blocking),
            },
        );
    }
    let (min_ttl, max_ttl) = match d.ttl {
        Some((Some(a), Some(b))) => (Some(a.min(b)), Some(a.max(b))),
        Some((a, b)) => (a, b),
        None => (None, None),
    };
    // An upstream by name needs a plain one (or the WAN lease's) to be looked up with:
    // validation refuses it otherwise, so the generator adds one in front.
    let mut upstreams = d.upstreams.clone();
    let by_name = |u: &Upstream| u.kind != UpstreamKind::Plain && matches!(u.host, Host::Name(_));
    if !dhcp_wan
        && !upstreams.iter().any(|u| u.kind == UpstreamKind::Plain)
        && (upstreams.iter().any(by_name) || d.forwarding.iter().flat_map(|(_, u)| u).any(by_name))
    {
        upstreams.insert(0, Upstream::parse("9.9.9.9").unwrap());
    }
    Dns {
        enabled: d.enabled,
        listen: vec![],
        port: port(d.port),
        dot_port: d.dot_port.map(port),
        doh_port: d.doh_port.map(port),
        upstreams,
        cache_size: d.cache_size,
        min_ttl,
        max_ttl,
        serve_stale: d.serve_stale,
        // Varies with another flag, so both values go through the round trip.
        never_forward_private: d.serve_stale,
        blocking: d.blocking,
        block_mode: d.block_mode,
        // A group in custom mode answers with the global addresses, so they are there
        // whenever anyone uses custom (and only then).
        block_addresses: if d.block_mode == BlockMode::Custom
            || groups
                .values()
                .any(|g| g.block_mode == Some(BlockMode::Custom))
        {
            d.block_addresses.clone()
        } else {
            vec![]
        },
        allow: d.allow.clone(),
        deny: d.deny.clone(),
        lists,
        groups,
        records: d
            .records
            .iter()
            .map(|(n, addresses, cname, ttl)| LocalRecord {
                name: n.clone(),
                addresses: addresses.clone(),
                cname: cname.clone(),
                ttl: *ttl,
            })
            .collect(),
        forwarding: d
            .forwarding
            .iter()
            .map(|(domain, upstreams)| ConditionalForward {
                domain: domain.clone(),
                upstreams: upstreams.clone(),
            })
            .collect(),
        query_log_size: d.query_log_size,
        rate_limit: d.rate_limit,
    }
}

type StorageParts = (
    Storage,
    BTreeMap<Name, Share>,
    BTreeMap<Name, SnapshotPolicy>,
    BTreeMap<Name, ReplicationJob>,
);

fn build_storage(s: &StorageSpec) -> StorageParts {
    let mut disk_no = 0;
    let mut disk = || {
        disk_no += 1;
        DiskPath::parse(&format!("/dev/disk/by-id/ata-DISK_{disk_no:04}")).unwrap()
    };
    let mut pools = BTreeMap::new();
    let mut datasets = BTreeMap::new();
    // Every dataset that may be shared, snapshotted or replicated: pools and their children.
    let mut known: Vec<DatasetName> = Vec::new();
    for (k, p) in s.pools.iter().enumerate() {
        // The index keeps pool names distinct.
        let pname = format!("{}{k}", p.name);
        let vdevs = p
            .vdevs
            .iter()
            .map(|(layout, extra)| {
                let count = if *layout == VdevLayout::Single {
                    1
                } else {
                    layout.min_disks() + extra
                };
                Vdev {
                    layout: *layout,
                    disks: (0..count).map(|_| disk()).collect(),
                }
            })
            .collect();
        pools.insert(
            dataset(&pname),
            Pool {
                vdevs,
                spares: (0..p.spares).map(|_| disk()).collect(),
                ashift: p.ashift,
                scrub_interval: p.scrub,
            },
        );
        known.push(dataset(&pname));
        for (child, props) in &p.datasets {
            let ds = dataset(&format!("{pname}/{child}"));
            known.push(ds.clone());
            let (quota, reservation) = props.quota_reservation;
            datasets.insert(
                ds,
                Dataset {
                    compression: props.compression,
                    atime: props.atime,
                    recordsize: props.recordsize.map(|e| Size::from_bytes(1 << e)),
                    quota,
                    reservation,
                    mountpoint: props
                        .mountpoint
                        .as_deref()
                        .map(|m| AbsPath::parse(m).unwrap()),
                },
            );
        }
    }
    let user_names: Vec<Name> = (0..s.users.len())
        .map(|k| name(&format!("user{k}")))
        .collect();
    let mut uids = BTreeSet::new();
    let users = s
        .users
        .iter()
        .enumerate()
        .map(|(k, (uid, pw))| {
            let uid = uid.filter(|u| uids.insert(*u));
            (
                user_names[k].clone(),
                NasUser {
                    uid,
                    smb_password_file: pw.then(|| secret(&format!("/data/smb/user{k}"))),
                },
            )
        })
        .collect();
    let mut shares = BTreeMap::new();
    let mut snapshots = BTreeMap::new();
    let mut replication = BTreeMap::new();
    if !known.is_empty() {
        for (k, sh) in s.shares.iter().enumerate() {
            let users_of = |v: &[usize]| -> Vec<Name> {
                if user_names.is_empty() {
                    vec![]
                } else {
                    v.iter().map(|i| pick(&user_names, *i)).collect()
                }
            };
            let smb = sh.smb.as_ref().map(|(u, ro, guest, browseable, tm)| {
                let users = users_of(u);
                let read_only_users = users_of(ro);
                SmbShare {
                    guest: *guest || (users.is_empty() && read_only_users.is_empty()),
                    users,
                    read_only_users,
                    browseable: *browseable,
                    time_machine: *tm,
                }
            });
            let nfs = sh.nfs.as_ref().map(|clients| NfsShare {
                clients: clients
                    .iter()
                    .map(|(x, options)| NfsClient {
                        network: cidr(&format!("192.168.{x}.0/24")),
                        options: options
                            .iter()
                            .copied()
                            .filter(|o| !(sh.read_only && *o == NfsOption::Rw))
                            .collect(),
                    })
                    .collect(),
                root_squash: true,
            });
            shares.insert(
                name(&format!("share{k}")),
                Share {
                    dataset: pick(&known, sh.dataset),
                    read_only: sh.read_only,
                    nfs,
                    smb,
                    owner: None,
                },
            );
        }
        for (k, (ds, recursive, c, fi)) in s.snapshots.iter().enumerate() {
            snapshots.insert(
                name(&format!("policy{k}")),
                SnapshotPolicy {
                    datasets: ds.iter().map(|i| pick(&known, *i)).collect(),
                    recursive: *recursive,
                    frequently: c[0],
                    frequent_interval: secs(*fi),
                    hourly: c[1],
                    daily: c[2],
                    weekly: c[3],
                    monthly: c[4],
                    yearly: c[5],
                },
            );
        }
        for (k, r) in s.replication.iter().enumerate() {
            replication.insert(
                name(&format!("job{k}")),
                ReplicationJob {
                    target: (r.transport != Transport::Local).then(|| r.target.clone()),
                    transport: r.transport,
                    // A local job receives into a declared pool, outside its sources.
                    target_dataset: match r.transport {
                        Transport::Local => {
                            dataset(&format!("{}/repl-{k}", pick(&known, 0).pool()))
                        }
                        // One area per job: two jobs' sources must not land on one
                        // replica.
                        _ => dataset(&format!("{}/j{k}", r.target_dataset)),
                    },
                    // Sources of one job land by their last component: one each.
                    datasets: {
                        let mut lands = std::collections::BTreeSet::new();
                        r.datasets
                            .iter()
                            .map(|i| pick(&known, *i))
                            .filter(|d| {
                                lands.insert(d.as_str().rsplit('/').next().map(str::to_owned))
                            })
                            .collect()
                    },
                    recursive: r.recursive && r.transport != Transport::Local,
                    interval: r.interval,
                    bandwidth_limit: r.bandwidth,
                    target_fingerprint: r.fingerprint.clone(),
                    identity_file: r
                        .identity
                        .then(|| secret(&format!("/data/repl/job{k}.pem"))),
                    ssh_user: None,
                    enabled: r.enabled,
                    on_divergence: Default::default(),
                },
            );
        }
    }
    // A recursive policy over a local job's target would snapshot its replicas, which
    // validation refuses.
    let targets: Vec<String> = (replication.values())
        .filter(|j: &&ReplicationJob| j.transport == Transport::Local)
        .map(|j| format!("{}/", j.target_dataset.as_str()))
        .collect();
    for policy in snapshots.values_mut() {
        let over = |d: &DatasetName| {
            targets
                .iter()
                .any(|t| t.starts_with(&format!("{}/", d.as_str())))
        };
        if policy.datasets.iter().any(over) {
            policy.recursive = false;
        }
    }
    // One policy per dataset: validation refuses two over one dataset (the same name, or
    // one below the other's recursive policy), since each would prune the other's snapshots.
    let mut claimed: Vec<(String, bool)> = Vec::new();
    for policy in snapshots.values_mut() {
        let recursive = policy.recursive;
        policy.datasets.retain(|d| {
            let d = d.as_str();
            let free = claimed.iter().all(|(c, c_rec)| {
                c != d
                    && !(*c_rec && d.starts_with(&format!("{c}/")))
                    && !(recursive && c.starts_with(&format!("{d}/")))
            });
            if free {
                claimed.push((d.to_owned(), recursive));
            }
            free
        });
    }
    snapshots.retain(|_, p| !p.datasets.is_empty());
    (
        Storage {
            pools,
            datasets,
            users,
            replication_listener: None,
        },
        shares,
        snapshots,
        replication,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_configs_are_valid_and_round_trip(s in spec()) {
        let cfg = build(&s);
        let issues = appliance::validate::check(&cfg);
        prop_assert!(issues.is_empty(), "the generator made an invalid config: {issues:#?}");
        let text = toml::to_string(&cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match load_str(&text) {
            Ok(again) => prop_assert_eq!(again, cfg, "changed by the round trip:\n{}", text),
            Err(d) => prop_assert!(
                false,
                "the serialized config does not load:\n{}\n--- serialized ---\n{}",
                d.render(&text, "generated.toml", false),
                text
            ),
        }
    }
}
