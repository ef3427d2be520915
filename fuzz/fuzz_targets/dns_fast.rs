//! Fuzzes the UDP fast path's reader (`dnsd::fast::parse`) against hickory's: whatever it
//! accepts, hickory must decode to the same question, id, flags and EDNS; the blocked
//! answers it then writes in every block mode must decode as responses to that question;
//! and reading TTL offsets or patching a kept answer must not panic on any bytes.
//! Run with `cargo xtask fuzz dns_fast [--time SECONDS]`.

#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use appliance::model::BlockMode;
use dnsd::fast::{self, CacheHit, WireCache};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut name = String::new();
    // Any bytes as a kept answer: offsets found must lie inside it, patching must not panic.
    if let Some(offsets) = fast::ttl_offsets(data) {
        assert!(offsets.iter().all(|at| at + 4 <= data.len()));
    }
    let cache = WireCache::new(4);
    let now = Instant::now();
    cache.insert(
        data,
        data,
        CacheHit {
            inserted: now,
            now,
            expires: now + Duration::from_secs(300),
            ttl: 300,
            epoch: 0,
        },
    );
    let mut out = Vec::new();
    let _ = cache.answer(data, now + Duration::from_secs(5), &mut out);

    let Some(q) = fast::parse(data, &mut name) else {
        return;
    };
    check(data, &q, &name);
});

// A panic is how a fuzz target reports a bug.
#[allow(clippy::panic)]
fn check(data: &[u8], q: &fast::Question, name: &str) {
    let m = match Message::from_vec(data) {
        Ok(m) => m,
        Err(e) => panic!("the fast path took a packet hickory cannot read ({e}): {data:?}"),
    };
    assert_eq!(m.metadata.message_type, MessageType::Query);
    assert_eq!(m.metadata.id, q.id);
    assert_eq!(m.metadata.recursion_desired, q.recursion_desired);
    assert_eq!(m.metadata.checking_disabled, q.checking_disabled);
    let [query] = m.queries.as_slice() else {
        panic!("the fast path took a packet without exactly one question: {m:?}");
    };
    // The name the hickory path gives the policy (no escaping, as the fast path).
    assert_eq!(dnsd::policy::policy_name(query.name()), name, "{data:?}");
    assert_eq!(u16::from(query.query_type()), q.qtype);
    assert_eq!(
        m.edns
            .as_ref()
            .map(|e| (e.max_payload().max(512), e.flags().dnssec_ok)),
        q.edns.map(|e| (e.payload.max(512), e.dnssec_ok))
    );
    let custom: [IpAddr; 2] = [
        [192, 0, 2, 1].into(),
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1].into(),
    ];
    for mode in [
        BlockMode::Null,
        BlockMode::Nxdomain,
        BlockMode::Nodata,
        BlockMode::Custom,
    ] {
        let mut out = Vec::new();
        if fast::blocked(&mut out, data, q, name, mode, &custom).is_none() {
            continue;
        }
        let a = match Message::from_vec(&out) {
            Ok(a) => a,
            Err(e) => panic!("an undecodable blocked answer ({e}) to {data:?}"),
        };
        assert_eq!(a.metadata.message_type, MessageType::Response);
        assert_eq!(a.metadata.id, q.id);
        assert_eq!(a.queries, m.queries);
    }
}
