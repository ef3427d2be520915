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

/// A validating upstream that answers `192.0.2.80` for 1 s with AD set, or SERVFAIL
/// while `failing`; it notes the DO and CD bits of the last query it saw.
async fn flaky_upstream(
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Option<(bool, bool)>>>,
) -> SocketAddr {
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
            let dnssec_ok = q.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
            *seen.lock().unwrap() = Some((dnssec_ok, q.metadata.checking_disabled));
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.metadata.checking_disabled = q.metadata.checking_disabled;
            r.add_queries(q.queries.clone());
            if failing.load(std::sync::atomic::Ordering::SeqCst) {
                r.metadata.response_code = ResponseCode::ServFail;
            } else {
                r.metadata.authentic_data = true;
                r.add_answer(Record::from_rdata(
                    q.queries[0].name.clone(),
                    1,
                    RData::A(A::new(192, 0, 2, 80)),
                ));
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    addr
}

/// RFC 8767: an upstream's SERVFAIL is a failed resolution like a timeout, so an expired
/// answer is served stale over it (never the SERVFAIL cached over the good answer).
#[tokio::test]
async fn an_upstream_servfail_is_answered_stale_and_not_cached() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failing = std::sync::Arc::new(AtomicBool::new(false));
    let upstream = flaky_upstream(failing.clone(), Default::default()).await;
    let cfg = appliance::load_str(&format!(
        "{GATEWAY}[dns]\nupstreams = [\"{upstream}\"]\nserve_stale = true\n"
    ))
    .unwrap();
    let r = resolver_with_ads(&cfg, "ads.test\n");
    let h = Handler(r.clone());
    let ask = |id| {
        let h = h.clone();
        async move {
            let a = h
                .answer_packet(&query(id, "flaky.test.", false), client())
                .await
                .unwrap();
            Message::from_vec(&a).unwrap()
        }
    };
    let m = ask(1).await;
    assert_eq!(m.answers.len(), 1, "{m:?}");
    failing.store(true, Ordering::SeqCst);
    // The entry's TTL (1 s) runs out.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for id in [2, 3] {
        let m = ask(id).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert_eq!(m.answers.len(), 1, "{m:?}");
        assert!(m.answers[0].ttl <= dnsd::cache::STALE_TTL);
    }
    assert_eq!(r.stats().stale.load(Ordering::Relaxed), 2);
    // Nothing stale to give: the SERVFAIL goes to the client.
    let a = h
        .answer_packet(&query(4, "never.test.", false), client())
        .await
        .unwrap();
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}");
}

/// DNSSEC flags pass through: the client's DO and CD reach the upstream, the upstream's
/// AD reaches the client on the hickory path and from the fast path's copy; a blocked
/// answer never claims AD.
#[tokio::test]
async fn dnssec_flags_pass_through_both_paths_and_blocked_answers_have_no_ad() {
    use hickory_proto::op::Edns;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let upstream = flaky_upstream(Default::default(), seen.clone()).await;
    let cfg = appliance::load_str(&format!(
        "{GATEWAY}[dns]\nupstreams = [\"{upstream}\"]\nmin_ttl = \"5m\"\ndeny = [\"ads.test\"]\n"
    ))
    .unwrap();
    let r = resolver_with_ads(&cfg, "ads.test\n");
    let h = Handler(r.clone());
    let packet = |name: &str, cd: bool| {
        let mut m = Message::from_vec(&query(7, name, cd)).unwrap();
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(true);
        m.edns = Some(e);
        m.to_vec().unwrap()
    };
    for cd in [false, true] {
        let p = packet("signed.test.", cd);
        let m = Message::from_vec(&h.answer_packet(&p, client()).await.unwrap()).unwrap();
        assert!(m.metadata.authentic_data, "{m:?}");
        assert_eq!(m.metadata.checking_disabled, cd);
        assert_eq!(*seen.lock().unwrap(), Some((true, cd)));
    }
    // Hits until the fast path holds a copy, then the copy keeps AD.
    let p = packet("signed.test.", false);
    for _ in 0..4 {
        let m = Message::from_vec(&h.answer_packet(&p, client()).await.unwrap()).unwrap();
        assert!(m.metadata.authentic_data, "{m:?}");
    }
    let (mut out, mut state) = (Vec::new(), dnsd::server::FastState::default());
    assert!(r.answer_fast(
        &p,
        client(),
        std::time::Instant::now(),
        &mut out,
        &mut state
    ));
    assert!(Message::from_vec(&out).unwrap().metadata.authentic_data);

    // Blocked, on both paths: no AD, whatever the client asked.
    let p = packet("ads.test.", false);
    assert!(r.answer_fast(
        &p,
        client(),
        std::time::Instant::now(),
        &mut out,
        &mut state
    ));
    assert!(!Message::from_vec(&out).unwrap().metadata.authentic_data);
    // `answer_packet` is the hickory path.
    let a = h.answer_packet(&p, client()).await.unwrap();
    let m = Message::from_vec(&a).unwrap();
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert!(!m.metadata.authentic_data, "{m:?}");
}

/// An upstream that notes every name it is asked and answers it with 192.0.2.90.
async fn recording_upstream() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            noted.lock().unwrap().push(q.queries[0].name.to_ascii());
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            r.add_answer(Record::from_rdata(
                q.queries[0].name.clone(),
                300,
                RData::A(A::new(192, 0, 2, 90)),
            ));
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    (addr, seen)
}

fn query_type(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// `dns.never_forward_private` (on by default): reverse names of private ranges, single
/// labels and names of the local domain are answered NXDOMAIN without reaching the
/// upstream, unless a conditional forward covers them; off, they are forwarded.
#[tokio::test]
async fn private_names_never_reach_the_upstream_unless_forwarded() {
    let (upstream, seen) = recording_upstream().await;
    let (corp, corp_seen) = recording_upstream().await;
    let text = |extra: &str| {
        format!(
            "{GATEWAY}[dns]\nupstreams = [\"{upstream}\"]\n{extra}[[dns.forwarding]]\ndomain = \"20.172.in-addr.arpa\"\nupstreams = [\"{corp}\"]\n"
        )
    };
    let cfg = appliance::load_str(&text("")).unwrap();
    assert!(cfg.dns.never_forward_private, "on by default");
    let h = Handler(resolver_with_ads(&cfg, "ads.test\n"));
    let private = [
        ("7.2.168.192.in-addr.arpa.", RecordType::PTR),
        ("1.0.0.10.in-addr.arpa.", RecordType::PTR),
        ("1.0.16.172.in-addr.arpa.", RecordType::PTR),
        ("1.0.64.100.in-addr.arpa.", RecordType::PTR),
        ("1.0.254.169.in-addr.arpa.", RecordType::PTR),
        ("1.0.0.127.in-addr.arpa.", RecordType::PTR),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
            RecordType::PTR,
        ),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa.",
            RecordType::PTR,
        ),
        ("printer.", RecordType::A),
        ("printer.", RecordType::AAAA),
        ("gone.home.arpa.", RecordType::A),
        ("GONE.Home.Arpa.", RecordType::PTR),
    ];
    for (i, (name, t)) in private.iter().enumerate() {
        let a = h
            .answer_packet(&query_type(i as u16, name, *t), client())
            .await
            .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA, "{name}");
    }
    // Public names and ranges, and single labels of other types (a TLD's DS), go out.
    let public = [
        ("8.8.8.8.in-addr.arpa.", RecordType::PTR),
        ("1.0.32.172.in-addr.arpa.", RecordType::PTR),
        ("1.0.128.100.in-addr.arpa.", RecordType::PTR),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            RecordType::PTR,
        ),
        ("com.", RecordType::DS),
        ("www.example.org.", RecordType::A),
        ("notlocal.arpa.", RecordType::A),
    ];
    for (i, (name, t)) in public.iter().enumerate() {
        let a = h
            .answer_packet(&query_type(100 + i as u16, name, *t), client())
            .await
            .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
    }
    let asked: Vec<String> = public.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        *seen.lock().unwrap(),
        asked,
        "only the public names went out"
    );

    // A conditional forward covers a private zone: asked there.
    let a = h
        .answer_packet(
            &query_type(200, "9.1.20.172.in-addr.arpa.", RecordType::PTR),
            client(),
        )
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&a).unwrap().metadata.response_code,
        ResponseCode::NoError
    );
    assert_eq!(*corp_seen.lock().unwrap(), ["9.1.20.172.in-addr.arpa."]);

    // Off: forwarded as before.
    let cfg = appliance::load_str(&text("never_forward_private = false\n")).unwrap();
    let h = Handler(resolver_with_ads(&cfg, "ads.test\n"));
    seen.lock().unwrap().clear();
    for (i, (name, t)) in private.iter().enumerate() {
        let a = h
            .answer_packet(&query_type(300 + i as u16, name, *t), client())
            .await
            .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
    }
    assert_eq!(seen.lock().unwrap().len(), private.len());
}
