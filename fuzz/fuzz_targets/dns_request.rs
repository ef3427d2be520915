//! Fuzzes dnsd's request path: arbitrary bytes as a UDP packet from a client, through the
//! same decoding and handler the UDP listener uses (`Handler::answer_packet`), with local
//! names, DHCP lease names, block lists, a client group and the cache in play. Nothing may
//! panic; whatever is answered must be a well-formed response to the packet's id, and a
//! packet whose body does not decode gets FORMERR.
//!
//! There is no upstream, so forwarded names fail at once (SERVFAIL) instead of waiting on
//! the network. Run with `cargo xtask fuzz dns_request [--time SECONDS]`.

#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use appliance::leases::Lease;
use appliance::model::ListFormat;
use dnsd::compiled::CompiledList;
use dnsd::local::LeaseZone;
use dnsd::policy::{Lists, Policy};
use dnsd::server::{Handler, Resolver};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
version = 1
[system]
hostname = "gw"
domain = "home.arpa"
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "fd00::1/64"]
[dns]
deny = ["denied.test", "*.wild.test"]
allow = ["ok.ads.test"]
[dns.lists.ads]
file = "/data/dns/ads.txt"
[dns.groups.strict]
cidrs = ["192.168.1.128/25"]
lists = ["ads"]
block_mode = "nxdomain"
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5", "fd00::5"]
[[dns.records]]
name = "files.home.arpa"
cname = "nas.home.arpa"
"#;

const LIST: &str = "ads.test\n0.0.0.0 tracker.test\n||adblock.test^\n/^re[0-9]+\\.test$/\n";

struct Target {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
}

fn target() -> Option<&'static Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let cfg = appliance::load_str(CONFIG).ok()?;
            let mut lists = Lists::new();
            let list = CompiledList::compile(dnsd::lists::parse(LIST, ListFormat::Auto)).ok()?;
            lists.insert("ads".into(), Arc::new(list));
            let policy = Policy::build(&cfg, &lists).ok()?;
            let resolver = Resolver::new(&cfg, Arc::new(policy));
            let leases = [Lease {
                mac: appliance::types::MacAddr::parse("52:54:00:00:00:01").ok()?,
                ip: "192.168.1.50".parse().ok()?,
                hostname: Some("laptop".into()),
                expires: None,
            }];
            resolver.swap_leases(Arc::new(LeaseZone::build(&leases, Some("home.arpa"), 0)));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            Some(Target {
                runtime,
                handler: Handler(Arc::new(resolver)),
            })
        })
        .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(t) = target() else {
        // The fixed setup above is valid; failing to build it is a bug in this target.
        std::process::abort();
    };
    // The first byte picks the client, so that both groups are reached.
    let (who, packet) = data.split_first().map_or((0, data), |(b, rest)| (*b, rest));
    let src = SocketAddr::from(([192, 168, 1, who], 5353));
    let Some(answer) = t.runtime.block_on(t.handler.answer_packet(packet, src)) else {
        return;
    };
    check(packet, &answer);
});

// A panic is how a fuzz target reports a bug.
#[allow(clippy::panic)]
fn check(packet: &[u8], answer: &[u8]) {
    let m = match Message::from_vec(answer) {
        Ok(m) => m,
        Err(e) => panic!("dnsd sent an undecodable answer ({e}) to {packet:?}"),
    };
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(
        Some(m.metadata.id.to_be_bytes().as_slice()),
        packet.get(..2),
        "the answer carries the query's id"
    );
    if Message::from_vec(packet).is_err() {
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::FormErr,
            "an undecodable query gets FORMERR"
        );
    }
}
