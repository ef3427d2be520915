//! The UDP fast path (`dnsd::fast`, `Resolver::answer_fast`) answers byte for byte as the
//! hickory path (`Handler::answer_packet`) does: blocked names in every block mode, cached
//! answers, with and without EDNS and the DO bit, in any letter case; and it leaves
//! everything else alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use common::{GATEWAY, ads_lists, resolver_with_ads};
use dnsd::cache::Key;
use dnsd::policy::Policy;
use dnsd::server::{FastState, Handler, Resolver};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

fn config(dns_extra: &str) -> appliance::Config {
    appliance::load_str(&format!(
        r#"{GATEWAY}[dns]
upstreams = []
deny = ["denied.invalid", "hostmaster.dnsd.invalid"]
{dns_extra}
[dns.lists.ads]
file = "/data/dns/ads.txt"
[dns.groups.strict]
cidrs = ["127.0.0.2/32"]
lists = ["ads"]
block_mode = "nxdomain"
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5"]
"#
    ))
    .unwrap()
}

fn resolver(cfg: &appliance::Config) -> Arc<Resolver> {
    resolver_with_ads(cfg, "ads.test\ntrack.example\n")
}

#[derive(Clone, Copy, Debug)]
enum Opt {
    None,
    Size(u16),
    DnssecOk,
}

fn query(id: u16, name: &str, qtype: RecordType, opt: Opt, rd: bool, cd: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = rd;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    match opt {
        Opt::None => {}
        Opt::Size(n) => {
            let mut e = Edns::new();
            e.set_max_payload(n);
            m.edns = Some(e);
        }
        Opt::DnssecOk => {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e.set_dnssec_ok(true);
            m.edns = Some(e);
        }
    }
    m.to_vec().unwrap()
}

const CLIENT: &str = "127.0.0.1:5353";
const STRICT_CLIENT: &str = "127.0.0.2:5353";

fn fast(r: &Resolver, packet: &[u8], client: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let src: SocketAddr = client.parse().unwrap();
    r.answer_fast(
        packet,
        src,
        Instant::now(),
        &mut out,
        &mut FastState::default(),
    )
    .then_some(out)
}

fn corpus() -> Vec<Vec<u8>> {
    let names = [
        "ads.test.",
        "x.ads.test.",
        "WWW.Ads.Test.",
        "a-b_c.track.example.",
        "denied.invalid.",
        "sub.hostmaster.dnsd.invalid.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::HTTPS,
    ];
    let opts = [
        Opt::None,
        Opt::Size(1232),
        Opt::Size(100),
        Opt::Size(4096),
        Opt::DnssecOk,
    ];
    let mut out = Vec::new();
    let mut id = 1u16;
    for name in names {
        for qtype in types {
            for opt in opts {
                for (rd, cd) in [(true, false), (false, true)] {
                    id = id.wrapping_mul(31).wrapping_add(7);
                    out.push(query(id, name, qtype, opt, rd, cd));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn blocked_answers_are_byte_identical_in_every_block_mode() {
    let modes = [
        "",
        "block_mode = \"nxdomain\"",
        "block_mode = \"nodata\"",
        "block_mode = \"null\"",
        "block_mode = \"custom\"\nblock_addresses = [\"192.0.2.1\", \"192.0.2.2\", \"2001:db8::1\"]",
        "block_mode = \"custom\"\nblock_addresses = [\"2001:db8::7\"]",
    ];
    let mut checked = 0;
    for mode in modes {
        let r = resolver(&config(mode));
        let h = Handler(Arc::clone(&r));
        for client in [CLIENT, STRICT_CLIENT] {
            for q in corpus() {
                let before = r.stats().blocked.load(std::sync::atomic::Ordering::Relaxed);
                let f = fast(&r, &q, client).unwrap_or_else(|| {
                    panic!("{mode}: the fast path takes {:?}", Message::from_vec(&q))
                });
                let s = h.answer_packet(&q, client.parse().unwrap()).await.unwrap();
                assert_eq!(
                    f,
                    s,
                    "{mode} {client}: {:?}\nfast {:?}\nslow {:?}",
                    Message::from_vec(&q).unwrap(),
                    Message::from_vec(&f),
                    Message::from_vec(&s).unwrap()
                );
                let after = r.stats().blocked.load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(after, before + 2, "both paths count the blocked query");
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}

fn upstream_answer(name: &str, qtype: RecordType, ttl: u32) -> Message {
    let n = Name::from_ascii(name).unwrap();
    let mut m = Message::query();
    m.metadata.message_type = MessageType::Response;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(n.clone(), qtype));
    match qtype {
        // An alias: never copied for the fast path ([`answers_with_a_cname_stay_on_the_hickory_path`]).
        RecordType::A if name.starts_with("alias.") => {
            let target = Name::from_ascii("target.fwd.test.").unwrap();
            m.add_answer(Record::from_rdata(
                n.clone(),
                ttl,
                RData::CNAME(CNAME(target.clone())),
            ));
            m.add_answer(Record::from_rdata(
                target,
                ttl / 2,
                RData::A(A::new(192, 0, 2, 10)),
            ));
        }
        RecordType::A => {
            m.add_answer(Record::from_rdata(
                n.clone(),
                ttl,
                RData::A(A::new(192, 0, 2, 10)),
            ));
            m.add_answer(Record::from_rdata(
                n.clone(),
                ttl / 2,
                RData::A(A::new(192, 0, 2, 11)),
            ));
        }
        RecordType::TXT => {
            m.add_answer(Record::from_rdata(
                n,
                ttl,
                RData::TXT(TXT::new(vec!["hello".into()])),
            ));
        }
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(dnsd::answer::soa(
                &Name::from_ascii("fwd.test.").unwrap(),
                ttl,
            ));
        }
    }
    m
}

#[tokio::test]
async fn cached_answers_are_byte_identical() {
    let r = resolver(&config(""));
    let h = Handler(Arc::clone(&r));
    let now = Instant::now();
    let names = ["c.fwd.test.", "Mixed.FWD.test."];
    let types = [RecordType::A, RecordType::TXT, RecordType::MX];
    for name in names {
        for qtype in types {
            for dnssec_ok in [false, true] {
                let key = Key::new(
                    &Name::from_ascii(name).unwrap(),
                    qtype,
                    DNSClass::IN,
                    dnssec_ok,
                );
                r.cache()
                    .insert(key, &upstream_answer(name, qtype, 600), now);
            }
        }
    }
    let mut checked = 0;
    for name in names {
        for qtype in types {
            for opt in [Opt::None, Opt::Size(1232), Opt::DnssecOk, Opt::Size(600)] {
                let q1 = query(7, name, qtype, opt, true, false);
                // Kept once the cache entry has had the hits a prefetch needs.
                // (The cache's key leaves out the EDNS size, so the entry may have them.)
                let mut first = Vec::new();
                let mut slow = 0;
                while fast(&r, &q1, CLIENT).is_none() {
                    first = h.answer_packet(&q1, CLIENT.parse().unwrap()).await.unwrap();
                    slow += 1;
                    assert!(
                        slow <= dnsd::cache::PREFETCH_MIN_HITS,
                        "{name} {qtype} {opt:?}"
                    );
                }
                assert!(
                    slow >= 1,
                    "an answer is kept only after the hickory path sent it"
                );
                assert_eq!(
                    Message::from_vec(&first).unwrap().metadata.response_code,
                    if qtype == RecordType::MX {
                        ResponseCode::NXDomain
                    } else {
                        ResponseCode::NoError
                    }
                );
                let q2 = query(0xbeef, name, qtype, opt, true, false);
                let cached = r.stats().cached.load(std::sync::atomic::Ordering::Relaxed);
                let f = fast(&r, &q2, CLIENT).expect("the fast path answers from its copy");
                let s = h.answer_packet(&q2, CLIENT.parse().unwrap()).await.unwrap();
                assert_eq!(f, s, "{name} {qtype} {opt:?}");
                assert_eq!(
                    r.stats().cached.load(std::sync::atomic::Ordering::Relaxed),
                    cached + 2
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

/// The fast path judges the query name alone, so an answer whose CNAME target a list may
/// block (CNAME cloaking) is never copied: it is checked on the hickory path each time.
#[tokio::test]
async fn answers_with_a_cname_stay_on_the_hickory_path() {
    let r = resolver(&config(""));
    let h = Handler(Arc::clone(&r));
    let name = "alias.fwd.test.";
    cache_a(&r, name);
    let q = query(7, name, RecordType::A, Opt::None, true, false);
    for _ in 0..2 * dnsd::cache::PREFETCH_MIN_HITS {
        assert!(fast(&r, &q, CLIENT).is_none());
        let a = h.answer_packet(&q, CLIENT.parse().unwrap()).await.unwrap();
        assert_eq!(Message::from_vec(&a).unwrap().answers.len(), 2);
    }
    assert!(r.wire_cache().is_empty());
}

#[tokio::test]
async fn everything_else_is_left_to_hickory() {
    let r = resolver(&config(""));
    let mut two = Message::query();
    two.add_query(Query::query(
        Name::from_ascii("ads.test.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("ads.test.").unwrap(),
        RecordType::A,
    ));
    let mut notify = Message::query();
    notify.metadata.op_code = OpCode::Notify;
    notify.add_query(Query::query(
        Name::from_ascii("ads.test.").unwrap(),
        RecordType::A,
    ));
    let mut response = Message::query();
    response.metadata.message_type = MessageType::Response;
    response.add_query(Query::query(
        Name::from_ascii("ads.test.").unwrap(),
        RecordType::A,
    ));
    let mut chaos = Message::query();
    chaos.add_query({
        let mut q = Query::query(Name::from_ascii("ads.test.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        q
    });
    let mut trailing = query(1, "ads.test.", RecordType::A, Opt::None, true, false);
    trailing.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a local name",
            query(1, "nas.home.arpa.", RecordType::A, Opt::None, true, false),
        ),
        (
            "the router's name",
            query(1, "GW.home.arpa.", RecordType::AAAA, Opt::None, true, false),
        ),
        (
            "a reverse local name",
            query(
                1,
                "5.1.168.192.in-addr.arpa.",
                RecordType::PTR,
                Opt::None,
                true,
                false,
            ),
        ),
        (
            "a name neither blocked nor cached",
            query(1, "fwd.test.", RecordType::A, Opt::None, true, false),
        ),
        (
            "ANY",
            query(1, "ads.test.", RecordType::ANY, Opt::None, true, false),
        ),
        ("an odd byte in a label", {
            let mut m = Message::query();
            m.add_query(Query::query(
                Name::from_labels([&b"a b"[..], b"ads", b"test"]).unwrap(),
                RecordType::A,
            ));
            m.to_vec().unwrap()
        }),
        (
            "the root",
            query(1, ".", RecordType::NS, Opt::None, true, false),
        ),
        ("two questions", two.to_vec().unwrap()),
        ("NOTIFY", notify.to_vec().unwrap()),
        ("a response", response.to_vec().unwrap()),
        ("class CH", chaos.to_vec().unwrap()),
        ("a trailing byte", trailing),
        ("a short packet", vec![0, 1, 1, 0, 0, 1]),
    ];
    for (what, q) in cases {
        assert!(fast(&r, &q, CLIENT).is_none(), "{what}");
    }
    // Past the rate limit the query is the hickory path's, which refuses it.
    let cfg = config("");
    let limited = Arc::new(Resolver::new(&cfg, r.policy()).with_rate_limit(
        dnsd::server::RateLimit {
            per_second: 0.001,
            burst: 1.0,
        },
    ));
    let q = query(1, "ads.test.", RecordType::A, Opt::None, true, false);
    assert!(fast(&limited, &q, CLIENT).is_some());
    assert!(fast(&limited, &q, CLIENT).is_none());
    assert!(fast(&r, &q, CLIENT).is_some());
}

#[tokio::test]
async fn a_pause_lets_blocked_names_through_on_the_fast_path_too() {
    let r = resolver(&config(""));
    let q = query(1, "ads.test.", RecordType::A, Opt::None, true, false);
    assert!(fast(&r, &q, CLIENT).is_some());
    let mut p = Policy::build(&config(""), &ads_lists("ads.test\n")).unwrap();
    p.pause(None, std::time::Duration::from_secs(60));
    r.swap_policy(Arc::new(p));
    assert!(
        fast(&r, &q, CLIENT).is_none(),
        "paused: neither blocked nor cached, so the hickory path forwards it"
    );
}

/// With `dns.rate_limit` on, the fast path still answers, each answer taking a token of
/// the client's bucket; past the limit it leaves the query to the hickory path, which
/// answers REFUSED and counts it. A query the fast path leaves (a forwarded name) is
/// charged once, by the hickory path.
#[tokio::test]
async fn the_fast_path_answers_under_a_rate_limit_and_leaves_the_excess_to_be_refused() {
    // 3 queries at once, then one an hour: nothing refills during the test.
    let cfg = config("rate_limit = \"1/hour burst 3\"\nblock_mode = \"nxdomain\"");
    let r = resolver(&cfg);
    let h = Handler(r.clone());
    let blocked = query(7, "ads.test.", RecordType::A, Opt::None, true, false);
    let first = fast(&r, &blocked, CLIENT).expect("the fast path answers under the limit");
    assert_eq!(
        Message::from_vec(&first).unwrap().metadata.response_code,
        ResponseCode::NXDomain
    );
    assert!(fast(&r, &blocked, CLIENT).is_some());
    // Not for the fast path (a local name): the hickory path takes the third token.
    let local = query(8, "nas.home.arpa.", RecordType::A, Opt::None, true, false);
    assert!(fast(&r, &local, CLIENT).is_none());
    let answer = h
        .answer_packet(&local, CLIENT.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&answer).unwrap().metadata.response_code,
        ResponseCode::NoError
    );
    // The bucket is empty: the fast path declines and the hickory path refuses.
    assert!(fast(&r, &blocked, CLIENT).is_none());
    let refused = h
        .answer_packet(&blocked, CLIENT.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&refused).unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    let s = r.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s.blocked.load(Relaxed), 2);
    assert_eq!(s.local.load(Relaxed), 1);
    assert_eq!(s.rejected.load(Relaxed), 1);
    assert_eq!(s.total.load(Relaxed), 4);
    // Another client has its own bucket, on the fast path too.
    assert!(fast(&r, &blocked, STRICT_CLIENT).is_some());
}

/// Puts the upstream's A answer for `name` in the cache.
fn cache_a(r: &Resolver, name: &str) {
    let key = Key::new(
        &Name::from_ascii(name).unwrap(),
        RecordType::A,
        DNSClass::IN,
        false,
    );
    r.cache().insert(
        key,
        &upstream_answer(name, RecordType::A, 600),
        Instant::now(),
    );
}

/// Puts an answer for `name` (A) in the cache and asks it through the hickory path until
/// the fast path keeps a copy.
async fn cache_for_the_fast_path(r: &Arc<Resolver>, name: &str, client: &str) -> Vec<u8> {
    let h = Handler(Arc::clone(r));
    cache_a(r, name);
    let q = query(9, name, RecordType::A, Opt::None, true, false);
    for _ in 0..=dnsd::cache::PREFETCH_MIN_HITS {
        if fast(r, &q, client).is_some() {
            return q;
        }
        h.answer_packet(&q, client.parse().unwrap()).await.unwrap();
    }
    panic!("the fast path never kept {name}");
}

fn fast_with(r: &Resolver, packet: &[u8], client: &str, state: &mut FastState) -> Option<Message> {
    let mut out = Vec::new();
    r.answer_fast(
        packet,
        client.parse().unwrap(),
        Instant::now(),
        &mut out,
        state,
    )
    .then(|| Message::from_vec(&out).unwrap())
}

fn is_blocked(m: &Message) -> bool {
    m.answers
        .iter()
        .any(|a| a.data == RData::A(A::new(0, 0, 0, 0)))
}

/// A listener remembers the names the policy let through for a client, so that it asks
/// the policy once per cached name; a new policy (a list refresh, an apply, a resume) or a
/// new link table makes it ask again, and a block held back by a pause is never
/// remembered as a pass.
#[tokio::test]
async fn passes_remembered_by_a_listener_end_with_the_policy_and_the_pause_they_came_under() {
    let cfg = config("");
    let r = resolver(&cfg);
    let q = cache_for_the_fast_path(&r, "late.fwd.test.", CLIENT).await;
    let mut state = FastState::default();
    for _ in 0..3 {
        let m = fast_with(&r, &q, CLIENT, &mut state).expect("cached");
        assert!(!is_blocked(&m), "{m:?}");
    }
    // A list refresh that adds the name: blocked at the next query.
    r.swap_policy(Arc::new(
        Policy::build(&cfg, &ads_lists("ads.test\nlate.fwd.test\n")).unwrap(),
    ));
    let m = fast_with(&r, &q, CLIENT, &mut state).expect("blocked");
    assert!(is_blocked(&m), "the pass outlived the policy: {m:?}");

    // Paused: the cached answer goes out, but the pass is not remembered, so once the
    // pause ends (no new policy) the name is blocked again.
    let mut p = Policy::build(&cfg, &ads_lists("late.fwd.test\n")).unwrap();
    p.pause(None, std::time::Duration::from_millis(300));
    r.swap_policy(Arc::new(p));
    let m = fast_with(&r, &q, CLIENT, &mut state).expect("cached while paused");
    assert!(!is_blocked(&m), "{m:?}");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let m = fast_with(&r, &q, CLIENT, &mut state).expect("blocked");
    assert!(
        is_blocked(&m),
        "a held block was remembered as a pass: {m:?}"
    );
}

#[tokio::test]
async fn passes_remembered_by_a_listener_end_with_the_link_table() {
    // The group `kids` blocks the name on the link `guest`; the client 10.9.0.50 is on
    // that link only once the table says that guest is 10.9.0.0/24.
    let with_guest = |net: &str| {
        appliance::load_str(&format!(
            r#"{GATEWAY}[interfaces.guest]
device = "eth2"
addresses = ["{net}"]
[dns]
upstreams = []
[dns.groups.kids]
interfaces = ["guest"]
deny = ["late.fwd.test"]
"#
        ))
        .unwrap()
    };
    let (before, after) = (with_guest("10.8.0.1/24"), with_guest("10.9.0.1/24"));
    let r = Arc::new(Resolver::new(
        &before,
        Arc::new(Policy::build(&before, &dnsd::policy::Lists::new()).unwrap()),
    ));
    let client = "10.9.0.50:5353";
    let q = cache_for_the_fast_path(&r, "late.fwd.test.", client).await;
    let mut state = FastState::default();
    let m = fast_with(&r, &q, client, &mut state).expect("cached");
    assert!(!is_blocked(&m), "{m:?}");
    r.reload_tables(&after);
    let m = fast_with(&r, &q, client, &mut state).expect("blocked");
    assert!(is_blocked(&m), "the pass outlived the link table: {m:?}");
}
