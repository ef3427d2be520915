//! What passes between a client and an upstream through dnsd, and what does not: a
//! validating upstream's SERVFAIL is an answer (not a failed server), and EDNS options
//! that belong to one hop (COOKIE, padding) are neither forwarded nor replayed from the
//! cache to another client. Through the request path (`Handler::answer_packet`) with
//! upstream sockets on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{GATEWAY, resolver_with_ads};
use dnsd::server::Handler;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const EXTENDED_ERROR: u16 = 15;

fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An upstream on loopback that answers every question with `rcode` (and an address when
/// NOERROR), echoing the query's COOKIE with a server cookie of its own and adding padding
/// and an Extended DNS Error, as a cookie-aware validating resolver over TLS would. It
/// keeps every query it got.
async fn upstream(rcode: ResponseCode) -> (SocketAddr, Arc<Mutex<Vec<Message>>>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen2.lock().unwrap().push(q.clone());
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.metadata.response_code = rcode;
            r.add_queries(q.queries.clone());
            if rcode == ResponseCode::NoError {
                r.add_answer(Record::from_rdata(
                    q.queries[0].name.clone(),
                    300,
                    RData::A(A::new(192, 0, 2, 80)),
                ));
            }
            if let Some(qe) = &q.edns {
                let mut e = Edns::new();
                e.set_max_payload(1232);
                e.set_dnssec_ok(qe.flags().dnssec_ok);
                let opts = e.options_mut();
                if let Some(EdnsOption::Unknown(_, client_cookie)) = qe.option(EdnsCode::Cookie) {
                    let mut cookie = client_cookie.clone();
                    cookie.extend_from_slice(b"SERVERCOOKIE0001");
                    opts.insert(EdnsOption::Unknown(10, cookie));
                }
                opts.insert(EdnsOption::Unknown(12, vec![0; 40]));
                // EDE 6, "DNSSEC Bogus".
                opts.insert(EdnsOption::Unknown(EXTENDED_ERROR, vec![0, 6]));
                r.set_edns(e);
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    (addr, seen)
}

fn query(id: u16, name: &str, payload: u16, cookie: Option<&[u8]>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(payload).set_dnssec_ok(true);
    if let Some(c) = cookie {
        e.options_mut().insert(EdnsOption::Unknown(10, c.to_vec()));
    }
    m.set_edns(e);
    m.to_vec().unwrap()
}

fn codes(m: &Message) -> Vec<u16> {
    m.edns
        .as_ref()
        .map(|e| {
            e.options()
                .options
                .iter()
                .map(|(c, _)| u16::from(*c))
                .collect()
        })
        .unwrap_or_default()
}

fn handler(upstream: SocketAddr) -> Handler {
    let cfg =
        appliance::load_str(&format!("{GATEWAY}[dns]\nupstreams = [\"{upstream}\"]\n")).unwrap();
    Handler(resolver_with_ads(&cfg, "ads.test\n"))
}

/// A SERVFAIL (a DNSSEC-bogus name at a validating upstream) goes to the client as is,
/// with the upstream's Extended DNS Error; the upstream is not marked down and the
/// DHCP-learned fallback, which may not validate, is never asked.
#[tokio::test]
async fn a_servfail_goes_to_the_client_and_the_next_query_to_the_same_upstream() {
    let (validating, validating_seen) = upstream(ResponseCode::ServFail).await;
    let (fallback, fallback_seen) = upstream(ResponseCode::NoError).await;
    let h = handler(validating);
    h.0.upstreams().set_fallback_servers(vec![fallback]);

    for id in [1, 2, 3] {
        let a = h
            .answer_packet(&query(id, "bogus.test.", 1232, None), client(5300))
            .await
            .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}");
        assert!(m.answers.is_empty(), "{m:?}");
        assert_eq!(codes(&m), [EXTENDED_ERROR], "{m:?}");
    }
    assert_eq!(validating_seen.lock().unwrap().len(), 3, "never cached");
    assert!(
        fallback_seen.lock().unwrap().is_empty(),
        "the fallback was asked"
    );
    let stats = h.0.upstream_stats();
    let s = stats
        .iter()
        .find(|s| s.upstream == validating.to_string())
        .unwrap();
    assert_eq!((s.successes, s.failures), (3, 0));
}

/// Two clients with their own cookies: the upstream sees neither (dnsd is its client),
/// and the second client's answer, from the cache, carries no cookie of the first or of
/// the upstream, and no padding; its own EDNS size and DO bit are kept.
#[tokio::test]
async fn a_cached_answer_carries_no_other_clients_cookie() {
    let (up, seen) = upstream(ResponseCode::NoError).await;
    let h = handler(up);

    let first = h
        .answer_packet(
            &query(10, "www.example.", 1232, Some(b"CLIENTA1")),
            client(5301),
        )
        .await
        .unwrap();
    let first = Message::from_vec(&first).unwrap();
    assert_eq!(first.answers.len(), 1, "{first:?}");
    assert_eq!(codes(&first), [EXTENDED_ERROR], "{first:?}");

    let second = h
        .answer_packet(
            &query(11, "www.example.", 4000, Some(b"CLIENTB2")),
            client(5302),
        )
        .await
        .unwrap();
    let second = Message::from_vec(&second).unwrap();
    assert_eq!(second.metadata.id, 11);
    assert_eq!(second.answers.len(), 1, "{second:?}");
    assert_eq!(codes(&second), [EXTENDED_ERROR], "{second:?}");
    let edns = second.edns.as_ref().unwrap();
    assert!(edns.flags().dnssec_ok);
    assert_eq!(edns.max_payload(), 4000);
    assert!(
        !second
            .to_vec()
            .unwrap()
            .windows(8)
            .any(|w| w == b"CLIENTA1" || w == b"SERVERCO"),
        "a foreign cookie in {second:?}"
    );

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "the second answer came from the cache");
    let e = seen[0].edns.as_ref().unwrap();
    assert!(e.option(EdnsCode::Cookie).is_none(), "{e:?}");
    assert!(e.flags().dnssec_ok);
    assert_eq!(e.max_payload(), 1232);
}
