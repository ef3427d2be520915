//! Bugs a read-only audit of dnsd found, each pinned by a test through the request path
//! (`Handler::answer_packet`) with a real upstream socket on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;

use common::{GATEWAY, resolver_with_ads};
use dnsd::server::Handler;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn query(id: u16, name: &str, cd: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn client() -> SocketAddr {
    "127.0.0.1:5353".parse().unwrap()
}

/// A validating upstream for a zone whose signatures are broken: SERVFAIL to a query
/// that wants validation, the (bogus) address to one with CD set, as RFC 4035 says.
async fn validating_upstream() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.metadata.checking_disabled = q.metadata.checking_disabled;
            r.add_queries(q.queries.clone());
            if q.metadata.checking_disabled {
                r.add_answer(Record::from_rdata(
                    q.queries[0].name.clone(),
                    300,
                    RData::A(A::new(203, 0, 113, 66)),
                ));
            } else {
                r.metadata.response_code = ResponseCode::ServFail;
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    addr
}

#[tokio::test]
async fn an_answer_fetched_with_cd_is_not_served_to_a_client_without_cd() {
    let upstream = validating_upstream().await;
    let cfg =
        appliance::load_str(&format!("{GATEWAY}[dns]\nupstreams = [\"{upstream}\"]\n")).unwrap();
    let h = Handler(resolver_with_ads(&cfg, "ads.test\n"));

    let a = h
        .answer_packet(&query(1, "bogus.test.", true), client())
        .await
        .unwrap();
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1, "{m:?}");

    // The cached CD=1 answer must not skip the validation this client asked for.
    let a = h
        .answer_packet(&query(2, "bogus.test.", false), client())
        .await
        .unwrap();
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}");
    assert!(m.answers.is_empty(), "{m:?}");

    // And the CD=1 answer is still cached for CD=1 clients.
    let a = h
        .answer_packet(&query(3, "bogus.test.", true), client())
        .await
        .unwrap();
    assert_eq!(Message::from_vec(&a).unwrap().answers.len(), 1);
}

fn file_list(path: &std::path::Path, format: &str) -> appliance::model::BlockList {
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns.lists.ads]\nfile = \"{}\"\nformat = \"{format}\"\n",
        path.display()
    ))
    .unwrap();
    cfg.dns.lists.values().next().unwrap().clone()
}

/// The same text read in another format is another list: a changed `format` recompiles
/// at the next refresh, and a stored copy of the old format is not loaded at a start.
#[tokio::test]
async fn a_changed_list_format_recompiles_the_unchanged_text() {
    use dnsd::fetch::{ListStore, Outcome, http_client};
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("ads.txt");
    std::fs::write(&text, "ads.example\n||tracker.example^\n").unwrap();
    let store = ListStore::new(dir.path().join("lists"));
    let client = http_client().unwrap();

    let domains = file_list(&text, "domains");
    let Outcome::Updated(c) = store.refresh(&client, "ads", &domains).await.unwrap() else {
        panic!("the first refresh compiles");
    };
    assert!(c.blocks("ads.example").is_some());
    assert!(c.blocks("tracker.example").is_none());
    assert!(matches!(
        store.refresh(&client, "ads", &domains).await.unwrap(),
        Outcome::Unchanged
    ));

    let adblock = file_list(&text, "adblock");
    let lists = [("ads", &adblock)];
    assert!(
        store
            .load_all(lists.iter().map(|(n, l)| (*n, *l)))
            .is_empty(),
        "a copy of the old format is not used"
    );
    let Outcome::Updated(c) = store
        .refresh_from(&client, "ads", &adblock, Some(c))
        .await
        .unwrap()
    else {
        panic!("a changed format recompiles the same text");
    };
    assert!(c.blocks("tracker.example").is_some());
    assert_eq!(
        store.meta("ads").unwrap().format,
        Some(appliance::model::ListFormat::Adblock)
    );
    assert_eq!(store.load_all(lists.iter().map(|(n, l)| (*n, *l))).len(), 1);
}

/// Names are matched lowercase, so a regex written with capitals must still match.
#[test]
fn regexes_match_without_case() {
    let lists = common::ads_lists("/^Ads[0-9]*\\./\n");
    let cfg =
        appliance::load_str(&format!("{GATEWAY}[dns]\ndeny = [\"/^Tracker\\\\./\"]\n[dns.lists.ads]\nfile = \"/data/dns/ads.txt\"\n")).unwrap();
    let p = dnsd::policy::Policy::build(&cfg, &lists).unwrap();
    let ip = "192.168.1.5".parse().unwrap();
    for name in ["ads1.example", "tracker.example"] {
        assert!(
            matches!(
                p.decide(ip, None, name).action,
                dnsd::policy::Action::Block { .. }
            ),
            "{name}"
        );
    }
}

/// Thousands of heavy regexes overflow one RegexSet: the list is compiled in several
/// sets instead of failing whole, and every regex still blocks.
#[test]
fn a_list_of_many_heavy_regexes_compiles() {
    let lines: Vec<String> = (0..2000)
        .map(|i| format!("^ad{i}-\\w{{1,3}}\\.example$"))
        .collect();
    assert!(
        regex::RegexSet::new(&lines).is_err(),
        "one set of these is over the regex crate's limit (the case this test is about)"
    );
    let text: String = lines.iter().map(|l| format!("/{l}/\n")).collect();
    let parsed = dnsd::lists::parse(&text, appliance::model::ListFormat::Auto);
    let list = dnsd::compiled::CompiledList::compile(parsed).unwrap();
    assert_eq!(list.len() as u64 + list.stats.skipped, 2000);
    assert!(list.len() > 1000, "kept {}", list.len());
    assert!(list.blocks("ad0-zz.example").is_some());
    assert!(list.blocks("ad1999-abc.example").is_some());
    assert!(list.blocks("ad1999-abcd.example").is_none());
}
