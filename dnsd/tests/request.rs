//! The request path without sockets (`Handler::answer_packet`, which the `dns_request` fuzz
//! target drives): it answers like the UDP listener, gives FORMERR or nothing to garbage,
//! and a query whose upstream never answers ends with SERVFAIL after the bounded tries.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{GATEWAY, resolver_with_ads};
use dnsd::server::{Handler, Resolver, Server};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

fn config(upstreams: &str) -> appliance::Config {
    appliance::load_str(&format!(
        r#"{GATEWAY}[dns]
upstreams = [{upstreams}]
[dns.lists.ads]
file = "/data/dns/ads.txt"
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5"]
"#
    ))
    .unwrap()
}

fn resolver(cfg: &appliance::Config) -> Arc<Resolver> {
    resolver_with_ads(cfg, "ads.test\n")
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn client() -> SocketAddr {
    "127.0.0.1:5353".parse().unwrap()
}

#[tokio::test]
async fn a_packet_is_answered_as_over_the_udp_listener() {
    let cfg = config("");
    let r = resolver(&cfg);
    let server = Server::bind(Arc::clone(&r), vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let h = Handler(Arc::clone(&r));
    for (name, qtype) in [
        ("nas.home.arpa.", RecordType::A),
        ("gw.home.arpa.", RecordType::A),
        ("x.ads.test.", RecordType::A),
        ("x.ads.test.", RecordType::AAAA),
        ("nas.home.arpa.", RecordType::MX),
    ] {
        let q = query(99, name, qtype);
        sock.send_to(&q, server.addresses()[0]).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("the UDP listener answers")
            .unwrap();
        let direct = h.answer_packet(&q, client()).await.unwrap();
        assert_eq!(direct, &buf[..n], "{name} {qtype}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_gets_formerr_or_nothing() {
    let h = Handler(resolver(&config("")));
    let mut response = Message::query();
    response.metadata.message_type = MessageType::Response;
    response.add_query(Query::query(
        Name::from_ascii("a.test.").unwrap(),
        RecordType::A,
    ));
    let mut two = Message::query();
    two.metadata.id = 7;
    two.add_query(Query::query(
        Name::from_ascii("a.test.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.test.").unwrap(),
        RecordType::A,
    ));
    let mut notify = Message::query();
    notify.metadata.id = 8;
    notify.metadata.op_code = OpCode::Notify;
    notify.add_query(Query::query(
        Name::from_ascii("a.test.").unwrap(),
        RecordType::SOA,
    ));

    // Too short for a header, or a response: no answer at all.
    for p in [vec![], vec![0xff], vec![0; 11], response.to_vec().unwrap()] {
        assert_eq!(h.answer_packet(&p, client()).await, None, "{p:?}");
    }
    let cases: Vec<(Vec<u8>, ResponseCode)> = vec![
        // A header that claims one question, then a compression pointer into nowhere.
        (
            vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0xff],
            ResponseCode::FormErr,
        ),
        (
            (0..600u32).map(|i| (i * 7919 % 251) as u8).collect(),
            ResponseCode::FormErr,
        ),
        (two.to_vec().unwrap(), ResponseCode::FormErr),
        (notify.to_vec().unwrap(), ResponseCode::NotImp),
    ];
    for (p, want) in cases {
        let a = h.answer_packet(&p, client()).await.expect("an answer");
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.response_code, want, "{p:?}");
        assert_eq!(m.metadata.id.to_be_bytes(), [p[0], p[1]]);
        assert_eq!(m.metadata.message_type, MessageType::Response);
    }
}

/// With tokio's clock paused, time only moves when every task waits, so the upstream
/// timeouts run out at once and the test neither takes seconds nor depends on the load of
/// the machine. An unbounded wait would leave the outer timeout to fire instead.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_never_answers_costs_bounded_time() {
    // Bound, never read: queries to it vanish.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = config(&format!("\"{}\"", silent.local_addr().unwrap()));
    let r = resolver(&cfg);
    let h = Handler(Arc::clone(&r));
    let started = tokio::time::Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(3600),
        h.answer_packet(&query(11, "fwd.test.", RecordType::A), client()),
    )
    .await
    .expect("the query ends on its own")
    .unwrap();
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() <= dnsd::upstream::TRY_TIMEOUT * dnsd::upstream::TRIES as u32,
        "no longer than the tries allow (virtual time: {:?})",
        started.elapsed()
    );
    let stats = r.upstream_stats();
    assert_eq!(stats[0].failures, dnsd::upstream::TRIES as u64);
    assert!(
        matches!(m.answers.first().map(|r| &r.data), None | Some(RData::A(_))),
        "{m:?}"
    );
}
