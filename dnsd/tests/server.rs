#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! dnsd's server on loopback, with dnsmasq as the upstream, queried with hickory's client
//! and with dig. Traffic stays on 127.0.0.x.
//!
//! Needs the Debian packages dnsmasq-base (dnsmasq) and bind9-dnsutils (dig); a test whose
//! tool is missing fails, it does not skip.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{GATEWAY, free_port, policy_with_ads, require};
use dnsd::policy::Policy;
use dnsd::server::{Resolver, Server};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

const UPSTREAM_IP: &str = "127.0.0.53";

/// dnsmasq as an authoritative test upstream, killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    async fn start() -> Self {
        let bin = require("dnsmasq", "dnsmasq-base");
        for _ in 0..5 {
            let port = free_port(UPSTREAM_IP);
            let child = Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--pid-file=",
                    &format!("--listen-address={UPSTREAM_IP}"),
                    &format!("--port={port}"),
                    "--local-ttl=300",
                    "--address=/fwd.test/192.0.2.10",
                    "--address=/stale.test/192.0.2.12",
                    "--address=/ads.test/192.0.2.66",
                    "--address=/denied.test/192.0.2.67",
                    "--address=/swap.test/192.0.2.13",
                    "--host-record=host.test,192.0.2.11",
                    "--host-record=dns.test,127.0.0.1",
                    // CNAME cloaking: an innocent name aliasing a tracker.
                    "--host-record=track.adsnet.test,192.0.2.70,2001:db8::70",
                    "--cname=cloak.test,track.adsnet.test",
                    "--host-record=cdn.test,192.0.2.71",
                    "--cname=clean.test,cdn.test",
                    // An answer of about 6 KB over UDP for a client that allows it.
                    "--edns-packet-max=65535",
                    &big_txt_record(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut d = Dnsmasq {
                child,
                addr: SocketAddr::new(UPSTREAM_IP.parse().unwrap(), port),
            };
            if d.ready().await {
                return d;
            }
            d.kill();
        }
        panic!("dnsmasq did not start on {UPSTREAM_IP}");
    }

    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                eprintln!("dnsmasq exited: {status}");
                return false;
            }
            let mut c = udp_client(self.addr, None, Duration::from_millis(200));
            if let Ok(r) = c.query(n("fwd.test."), DNSClass::IN, RecordType::A).await
                && !r.answers.is_empty()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn udp_client(
    server: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Client<TokioRuntimeProvider> {
    let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_bind_addr(bind.map(|ip| SocketAddr::new(ip, 0)))
        .with_timeout(Some(timeout))
        .build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    tokio::spawn(bg);
    client
}

async fn tcp_client(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let (stream, sender) = TcpClientStream::new(
        server,
        None,
        Some(Duration::from_secs(3)),
        TokioRuntimeProvider::default(),
    );
    let (client, bg) = Client::<TokioRuntimeProvider>::new(stream.await.unwrap(), sender);
    tokio::spawn(bg);
    client
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"{GATEWAY}[dns]
upstreams = ["{upstream}"]
deny = ["denied.test"]
{extra}
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
    )
}

fn policy(cfg: &appliance::Config) -> Arc<Policy> {
    policy_with_ads(cfg, "ads.test\n")
}

async fn start(upstream: SocketAddr, extra: &str) -> (Server, appliance::Config) {
    let cfg = appliance::load_str(&config(upstream, extra)).unwrap();
    let resolver = Arc::new(Resolver::new(&cfg, policy(&cfg)));
    let server = Server::bind(resolver, vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    (server, cfg)
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

async fn ask(
    c: &mut Client<TokioRuntimeProvider>,
    name: &str,
    t: RecordType,
) -> hickory_proto::op::DnsResponse {
    c.query(n(name), DNSClass::IN, t).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_blocks_and_answers_local_names_over_udp_and_tcp() {
    let upstream = Dnsmasq::start().await;
    let (server, _) = start(upstream.addr, "").await;
    let addr = server.addresses()[0];
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    let stats = server.resolver().clone();

    let mut c = udp_client(addr, None, Duration::from_secs(5));
    let r = ask(&mut c, "fwd.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&r), ["192.0.2.10"]);
    let r = ask(&mut c, "host.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.11"]);
    assert_eq!(stats.stats().forwarded.load(Ordering::Relaxed), 2);

    // Blocked by a list, for the default group: null addresses.
    let r = ask(&mut c, "x.ads.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    let r = ask(&mut c, "ads.test.", RecordType::AAAA).await;
    assert_eq!(addresses(&r), ["::"]);
    let r = ask(&mut c, "denied.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    assert_eq!(stats.stats().blocked.load(Ordering::Relaxed), 3);

    // The strict group answers NXDOMAIN, with an SOA for negative caching.
    let mut strict = udp_client(
        addr,
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    );
    let r = ask(&mut strict, "ads.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    let r = ask(&mut strict, "fwd.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.10"]);

    // Local names: a record, its PTR and the router's own name.
    let r = ask(&mut c, "nas.home.arpa.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.168.1.5"]);
    assert!(r.metadata.authoritative);
    let r = ask(&mut c, "5.1.168.192.in-addr.arpa.", RecordType::PTR).await;
    match &r.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "nas.home.arpa."),
        other => panic!("{other:?}"),
    }
    let r = ask(&mut c, "gw.home.arpa.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.168.1.1"]);

    let mut t = tcp_client(addr).await;
    let r = ask(&mut t, "fwd.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.10"]);
    let r = ask(&mut t, "ads.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    let r = ask(&mut t, "nas.home.arpa.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.168.1.5"]);

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_query_comes_from_the_cache_even_with_the_upstream_gone() {
    let mut upstream = Dnsmasq::start().await;
    let (server, _) = start(upstream.addr, "").await;
    let addr = server.addresses()[0];
    let r = server.resolver().clone();
    let mut c = udp_client(addr, None, Duration::from_secs(5));
    let first = ask(&mut c, "fwd.test.", RecordType::A).await;
    assert_eq!(addresses(&first), ["192.0.2.10"]);
    assert_eq!(r.stats().cached.load(Ordering::Relaxed), 0);
    upstream.kill();
    let second = ask(&mut c, "FWD.test.", RecordType::A).await;
    assert_eq!(addresses(&second), ["192.0.2.10"]);
    assert_eq!(r.stats().cached.load(Ordering::Relaxed), 1);
    assert!(second.answers[0].ttl <= first.answers[0].ttl);

    // Not cached and no upstream: SERVFAIL, within the bounded tries.
    let started = Instant::now();
    let r2 = ask(&mut c, "host.test.", RecordType::A).await;
    assert_eq!(r2.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.stats().failed.load(Ordering::Relaxed), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answers_are_served_stale_when_the_upstream_is_dead() {
    let mut upstream = Dnsmasq::start().await;
    let (server, _) = start(upstream.addr, "max_ttl = \"1s\"\nserve_stale = true").await;
    let addr = server.addresses()[0];
    let r = server.resolver().clone();
    let mut c = udp_client(addr, None, Duration::from_secs(6));
    let first = ask(&mut c, "stale.test.", RecordType::A).await;
    assert_eq!(addresses(&first), ["192.0.2.12"]);
    assert_eq!(first.answers[0].ttl, 1, "max_ttl caps the TTL");
    upstream.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = ask(&mut c, "stale.test.", RecordType::A).await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&stale), ["192.0.2.12"]);
    assert!(stale.answers[0].ttl <= dnsd::cache::STALE_TTL);
    assert_eq!(r.stats().stale.load(Ordering::Relaxed), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_swap_under_load_loses_no_query() {
    let upstream = Dnsmasq::start().await;
    let (server, cfg) = start(upstream.addr, "").await;
    let addr = server.addresses()[0];
    let resolver = server.resolver().clone();
    let blocking = policy(&cfg);
    let mut open_cfg = cfg.clone();
    open_cfg.dns.deny.clear();
    let open = policy(&open_cfg);

    let swapper = {
        let resolver = resolver.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                let p = if i % 2 == 0 { &open } else { &blocking };
                resolver.swap_policy(p.clone());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut c = udp_client(addr, None, Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = 0;
    for _ in 0..300 {
        if Instant::now() > deadline {
            break;
        }
        let r = c
            .query(n("denied.test."), DNSClass::IN, RecordType::A)
            .await
            .expect("a query failed during the policy swaps");
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let a = addresses(&r);
        assert!(a == ["0.0.0.0"] || a == ["192.0.2.67"], "{a:?}");
        answered += 1;
    }
    swapper.await.unwrap();
    assert_eq!(answered, 300);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_formerr_or_nothing_and_the_server_keeps_answering() {
    let upstream = Dnsmasq::start().await;
    let (server, _) = start(upstream.addr, "").await;
    let addr = server.addresses()[0];
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01],
        // A header that claims one question, then junk.
        vec![
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xff,
        ],
        // Two questions.
        {
            let mut m = Message::query();
            m.metadata.id = 7;
            m.add_query(hickory_proto::op::Query::query(n("a.test."), RecordType::A));
            m.add_query(hickory_proto::op::Query::query(n("b.test."), RecordType::A));
            m.to_vec().unwrap()
        },
        // A NOTIFY.
        {
            let mut m = Message::query();
            m.metadata.id = 8;
            m.metadata.op_code = hickory_proto::op::OpCode::Notify;
            m.add_query(hickory_proto::op::Query::query(
                n("a.test."),
                RecordType::SOA,
            ));
            m.to_vec().unwrap()
        },
        (0..600u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    for p in &packets {
        sock.send_to(p, addr).await.unwrap();
        let mut buf = [0u8; 1500];
        match tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await {
            Err(_) => {}
            Ok(r) => {
                let (len, _) = r.unwrap();
                let m = Message::from_vec(&buf[..len]).unwrap();
                assert!(
                    matches!(
                        m.metadata.response_code,
                        ResponseCode::FormErr | ResponseCode::NotImp
                    ),
                    "{:?} for {p:?}",
                    m.metadata.response_code
                );
                if p.len() > 2 {
                    assert_eq!(m.metadata.id.to_be_bytes(), [p[0], p[1]]);
                }
            }
        }
    }
    let mut c = udp_client(addr, None, Duration::from_secs(5));
    let r = ask(&mut c, "fwd.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.10"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_answers_over_udp_and_tcp() {
    let dig = require("dig", "bind9-dnsutils");
    let upstream = Dnsmasq::start().await;
    let (server, _) = start(upstream.addr, "").await;
    let addr = server.addresses()[0];
    let run = move |args: &[&str]| {
        let out = Command::new(&dig)
            .args([
                &format!("@{}", addr.ip()),
                "-p",
                &addr.port().to_string(),
                "+time=2",
                "+tries=1",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "dig {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let out = tokio::task::spawn_blocking(move || {
        (
            run(&["fwd.test", "A", "+short"]),
            run(&["ads.test", "A", "+short", "+tcp"]),
            run(&["host.test", "A", "+dnssec", "+cd"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(out.0.trim(), "192.0.2.10");
    assert_eq!(out.1.trim(), "0.0.0.0");
    assert!(out.2.contains("status: NOERROR"), "{}", out.2);
    assert!(out.2.contains("192.0.2.11"), "{}", out.2);
    assert!(
        out.2.contains("flags: do"),
        "EDNS with DO comes back: {}",
        out.2
    );
    server.shutdown().await.unwrap();
}

/// A self-signed certificate for `dns.test` and 127.0.0.1, as server and client configs.
fn tls_pair() -> (rustls::ServerConfig, rustls::ClientConfig) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["dns.test".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_and_doh_upstreams_are_reached_through_hickory() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (server_tls, client_tls) = tls_pair();
    // The encrypted upstream is another dnsd, answering a local name over DoT and DoH.
    let up_cfg = appliance::load_str(
        "version = 1\n[[dns.records]]\nname = \"enc.test\"\naddresses = [\"192.0.2.30\"]\n",
    )
    .unwrap();
    let up_resolver = Arc::new(Resolver::new(&up_cfg, policy(&up_cfg)));
    let mut up = Server::bind(up_resolver.clone(), vec![]).await.unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let dot = up.listen_tls(any, &server_tls).await.unwrap();
    let doh = up
        .listen_https(any, &server_tls, "/dns-query")
        .await
        .unwrap();

    for upstream in [
        format!("tls://127.0.0.1:{}#dns.test", dot.port()),
        format!("https://127.0.0.1:{}/dns-query", doh.port()),
    ] {
        let cfg = appliance::load_str(&format!(
            "version = 1\n[dns]\nupstreams = [\"{upstream}\"]\n"
        ))
        .unwrap();
        let upstreams = dnsd::upstream::Upstreams::from_config(&cfg.dns)
            .with_tls_config(Arc::new(client_tls.clone()));
        let resolver = Arc::new(Resolver::with_upstreams(&cfg, policy(&cfg), upstreams));
        let server = Server::bind(resolver.clone(), vec![any]).await.unwrap();
        let mut c = udp_client(server.addresses()[0], None, Duration::from_secs(5));
        let r = ask(&mut c, "enc.test.", RecordType::A).await;
        assert_eq!(addresses(&r), ["192.0.2.30"], "through {upstream}");
        // A second query reuses the connection.
        let r = ask(&mut c, "enc.test.", RecordType::AAAA).await;
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NoError,
            "through {upstream}"
        );
        assert!(r.answers.is_empty());
        assert_eq!(resolver.stats().forwarded.load(Ordering::Relaxed), 2);
        let s = &resolver.upstream_stats()[0];
        assert!(s.upstream.starts_with("tls://") || s.upstream.starts_with("https://"));
        assert_eq!((s.successes, s.failures), (2, 0), "{s:?}");
        server.shutdown().await.unwrap();
    }

    // Given by name, the DoT server's address is asked of the plain upstream.
    let bootstrap = Dnsmasq::start().await;
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns]\nupstreams = [\"tls://dns.test:{}\", \"{}\"]\n",
        dot.port(),
        bootstrap.addr
    ))
    .unwrap();
    let upstreams = dnsd::upstream::Upstreams::from_config(&cfg.dns)
        .with_tls_config(Arc::new(client_tls.clone()));
    let resolver = Arc::new(Resolver::with_upstreams(&cfg, policy(&cfg), upstreams));
    let server = Server::bind(resolver.clone(), vec![any]).await.unwrap();
    let mut c = udp_client(server.addresses()[0], None, Duration::from_secs(5));
    let r = ask(&mut c, "enc.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.30"]);
    let s = &resolver.upstream_stats()[0];
    assert!(s.upstream.starts_with("tls://dns.test"), "{s:?}");
    assert_eq!((s.successes, s.failures), (1, 0), "{s:?}");
    server.shutdown().await.unwrap();

    assert_eq!(up_resolver.stats().local.load(Ordering::Relaxed), 5);
    up.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_rate_limit_are_refused() {
    let upstream = Dnsmasq::start().await;
    let cfg = appliance::load_str(&config(upstream.addr, "")).unwrap();
    let resolver = Arc::new(Resolver::new(&cfg, policy(&cfg)).with_rate_limit(
        dnsd::server::RateLimit {
            per_second: 0.5,
            burst: 2.0,
        },
    ));
    let server = Server::bind(resolver.clone(), vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = server.addresses()[0];
    let mut c = udp_client(addr, None, Duration::from_secs(5));
    for _ in 0..2 {
        let r = ask(&mut c, "fwd.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }
    let r = ask(&mut c, "fwd.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    // Another client has its own bucket.
    let mut other = udp_client(
        addr,
        Some("127.0.0.3".parse().unwrap()),
        Duration::from_secs(5),
    );
    let r = ask(&mut other, "fwd.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_names_are_refreshed_before_they_expire() {
    let upstream = Dnsmasq::start().await;
    let (server, _) = start(upstream.addr, "max_ttl = \"4s\"").await;
    let addr = server.addresses()[0];
    let r = server.resolver().clone();
    let mut c = udp_client(addr, None, Duration::from_secs(5));
    let started = Instant::now();
    for _ in 0..=dnsd::cache::PREFETCH_MIN_HITS {
        ask(&mut c, "fwd.test.", RecordType::A).await;
    }
    assert_eq!(r.stats().forwarded.load(Ordering::Relaxed), 1);
    assert_eq!(r.stats().prefetched.load(Ordering::Relaxed), 0);
    // Within the last 10% of the 4 s TTL.
    tokio::time::sleep(Duration::from_millis(3750).saturating_sub(started.elapsed())).await;
    let hit = ask(&mut c, "fwd.test.", RecordType::A).await;
    assert_eq!(addresses(&hit), ["192.0.2.10"]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while r.stats().prefetched.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(r.stats().prefetched.load(Ordering::Relaxed), 1);
    // The refreshed entry answers past the old expiry without another forward.
    tokio::time::sleep(Duration::from_millis(4300).saturating_sub(started.elapsed())).await;
    ask(&mut c, "fwd.test.", RecordType::A).await;
    assert_eq!(r.stats().forwarded.load(Ordering::Relaxed), 1);
    server.shutdown().await.unwrap();
}

/// `big.test` TXT: 30 strings of 200 bytes.
fn big_txt_record() -> String {
    let strings: Vec<String> = (0..30).map(|i| format!("{i:0200}")).collect();
    format!("--txt-record=big.test,{}", strings.join(","))
}

/// The client's EDNS size (65535 here) is forwarded; an upstream answer larger than dnsd
/// reads over UDP comes back whole, over TCP, rather than as a parse failure and a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_udp_read_is_fetched_over_tcp() {
    let upstream = Dnsmasq::start().await;
    let cfg = appliance::load_str(&config(upstream.addr, "")).unwrap();
    let upstreams = dnsd::upstream::Upstreams::from_config(&cfg.dns);
    let mut m = Message::query();
    m.metadata.id = 77;
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(
        n("big.test."),
        RecordType::TXT,
    ));
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(65535);
    m.set_edns(edns);
    let f = upstreams.forward(&m.to_vec().unwrap()).await.unwrap();
    let txt: usize = f
        .message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(t.txt_data.iter().map(|s| s.len()).sum::<usize>()),
            _ => None,
        })
        .sum();
    assert_eq!(txt, 6000, "{:?}", f.message);
}

/// CNAME cloaking: an answer whose alias chain reaches a blocked name is blocked like the
/// name itself, in the block mode of the client's group; the cache keeps the upstream's
/// answer and the chain is judged at each answer, so a list that starts blocking the
/// tracker blocks the cached alias at once, on the fast path too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_aliasing_a_blocked_name_is_blocked_in_the_groups_mode() {
    let upstream = Dnsmasq::start().await;
    let cfg = appliance::load_str(&config(upstream.addr, "")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dnsd::querylog::QueryLog::open(&dir.path().join("querylog"), 64 << 10).unwrap();
    let recorder = Arc::new(dnsd::stats::Recorder::start(log).unwrap());
    let resolver = Arc::new(
        Resolver::new(&cfg, policy_with_ads(&cfg, "ads.test\n")).with_recorder(recorder.clone()),
    );
    let server = Server::bind(Arc::clone(&resolver), vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = server.addresses()[0];
    let mut c = udp_client(addr, None, Duration::from_secs(5));

    // Not blocked yet: forwarded, then answered from the cache, often enough that the
    // hickory path would hand the fast path a copy.
    for _ in 0..5 {
        let r = ask(&mut c, "cloak.test.", RecordType::A).await;
        assert_eq!(addresses(&r), ["192.0.2.70"], "{r:?}");
    }
    assert_eq!(resolver.stats().blocked.load(Ordering::Relaxed), 0);
    assert!(
        resolver
            .cached_cname_blocked("127.0.0.1".parse().unwrap(), &n("cloak.test."))
            .is_none()
    );

    // The list now names the tracker's domain.
    resolver.swap_policy(policy_with_ads(&cfg, "ads.test\nadsnet.test\n"));
    let r = ask(&mut c, "cloak.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&r), ["0.0.0.0"], "{r:?}");
    assert!(
        r.answers
            .iter()
            .all(|a| a.record_type() != RecordType::CNAME),
        "{r:?}"
    );
    assert!(!r.metadata.authentic_data);
    let r = ask(&mut c, "CLOAK.test.", RecordType::AAAA).await;
    assert_eq!(addresses(&r), ["::"], "{r:?}");
    assert_eq!(resolver.stats().blocked.load(Ordering::Relaxed), 2);

    // The strict group's mode: NXDOMAIN (forwarded fresh for this name).
    let mut strict = udp_client(
        addr,
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    );
    let r = ask(&mut strict, "cloak.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{r:?}");
    assert!(r.answers.is_empty());

    // An alias of a name no list has is answered as the upstream said.
    let r = ask(&mut c, "clean.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.71"], "{r:?}");
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);

    // What `check` and the query log report: the alias and the rule that blocks it.
    let cloaked = resolver
        .cached_cname_blocked("127.0.0.1".parse().unwrap(), &n("cloak.test."))
        .unwrap();
    assert_eq!(cloaked.target, "track.adsnet.test");
    let (source, rule) = cloaked.rule.unwrap();
    assert_eq!(
        (source.to_string(), rule.to_string()),
        ("list ads".to_owned(), "adsnet.test".to_owned())
    );
    let until = Instant::now() + Duration::from_secs(20);
    while recorder.handled() < 9 {
        assert!(Instant::now() < until, "the query log writer is behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logged = recorder
        .log()
        .unwrap()
        .recent(20, &dnsd::querylog::Filter::default())
        .unwrap();
    let blocked: Vec<_> = logged
        .iter()
        .filter_map(|r| match &r.outcome {
            dnsd::querylog::Outcome::Blocked { source, rule } => {
                Some((r.name.as_str(), source.as_str(), rule.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(blocked.len(), 3, "{logged:?}");
    assert!(
        blocked.iter().all(|b| *b
            == (
                "cloak.test",
                "list ads via CNAME track.adsnet.test",
                "adsnet.test"
            )),
        "{blocked:?}"
    );
    server.shutdown().await.unwrap();
}
