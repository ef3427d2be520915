//! What an apply changes in a running dnsd: real sockets on loopback addresses (every
//! 127.0.0.0/8 address is local on Linux), the daemon's control API in process, generations
//! from a real config store. A readdressed LAN moves dnsd to the new addresses without
//! missing a query on the address that stays; a port held by someone else fails the apply
//! and changes nothing; `dns.enabled`, `serve_stale` and `rate_limit` take effect at once;
//! a new `system.domain` renames the DHCP clients at the apply; `/check` says when a
//! local name is answered before the policy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use appliance::leases::{self, Lease};
use appliance::types::MacAddr;
use common::{answers, ask, ask_until, free_port};
use dnsd::control::{ApiError, Daemon, Listeners};
use dnsd::local::LeaseWatcher;
use dnsd::policy::{Lists, Policy};
use dnsd::server::{Resolver, Server};
use hickory_proto::rr::RecordType;

/// Two LAN links with DHCP servers (dnsd's default: listen on their addresses) on
/// `port`, the guest link at `guest`.
fn config(port: u16, guest: &str, extra: &str) -> String {
    format!(
        r#"version = 1
[interfaces.lan]
device = "eth1"
addresses = ["127.0.1.1/24"]
[interfaces.guest]
device = "eth2"
addresses = ["{guest}.1/24"]
[dhcp.lan]
start = "127.0.1.100"
end = "127.0.1.200"
[dhcp.guest]
start = "{guest}.100"
end = "{guest}.200"
[dns]
upstreams = ["127.0.0.1:9"]
deny = ["blocked.example"]
port = {port}
{extra}
"#
    )
}

/// A port free for UDP and TCP on every address the test uses.
fn port_free_everywhere() -> u16 {
    loop {
        let port = free_port("127.0.1.1");
        let free = ["127.0.2.1", "127.0.3.1"].iter().all(|ip| {
            UdpSocket::bind((*ip, port)).is_ok() && std::net::TcpListener::bind((*ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
}

struct Rig {
    daemon: Arc<Daemon>,
    resolver: Arc<Resolver>,
    store: appliance::store::Store,
    _dir: tempfile::TempDir,
}

async fn start(text: &str) -> Rig {
    start_with(text, tempfile::tempdir().unwrap(), None).await
}

/// [`start`] in `dir`, with a query-log `recorder` when the test reads the log.
async fn start_with(
    text: &str,
    dir: tempfile::TempDir,
    recorder: Option<Arc<dnsd::stats::Recorder>>,
) -> Rig {
    let cfg = appliance::load_str(text).unwrap();
    let policy = Policy::build(&cfg, &Lists::new()).unwrap();
    let mut resolver = Resolver::new(&cfg, Arc::new(policy));
    if let Some(r) = recorder {
        resolver = resolver.with_recorder(r);
    }
    let resolver = Arc::new(resolver);
    let server = Server::bind(Arc::clone(&resolver), dnsd::listen::addresses(&cfg))
        .await
        .unwrap();
    let daemon = Daemon::new(
        Arc::clone(&resolver),
        Arc::new(cfg),
        Lists::new(),
        dir.path().join("lists"),
        dnsd::fetch::http_client().unwrap(),
        Box::new(|| Err("not in this test".into())),
        Some(Listeners::from_config(server)),
    );
    let store = appliance::store::Store::open(dir.path().join("config")).unwrap();
    daemon.set_config_dir(dir.path().join("config"));
    Rig {
        daemon,
        resolver,
        store,
        _dir: dir,
    }
}

impl Rig {
    async fn apply(&self, text: &str) -> Result<Vec<String>, ApiError> {
        let generation = self.store.commit(text, "test").unwrap();
        self.daemon.apply_generation(generation).await
    }

    fn plan(&self, text: &str) -> Vec<String> {
        let generation = self.store.commit(text, "test plan").unwrap();
        self.daemon.plan_generation(generation).unwrap()
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn blocks(at: SocketAddr) {
    let m = ask(at, "blocked.example.", RecordType::A);
    assert_eq!(answers(&m), ["0.0.0.0"], "{at}: {m:?}");
}

/// Waits until nothing listens on `at` for TCP (a closed listener is dropped by its task,
/// a moment after the apply returns), then checks that UDP gets no answer either.
fn closed(at: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&at, Duration::from_secs(1)).is_ok() {
        assert!(Instant::now() < until, "{at} still accepts TCP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = ask_until(
        at,
        "blocked.example.",
        RecordType::A,
        Instant::now() + Duration::from_secs(1),
    );
    assert!(m.is_none(), "{at} still answers UDP: {m:?}");
}

/// Asks `at` one query after another until stopped; every one must be answered (no
/// resend: a lost query fails). Returns how many were asked.
fn steady_load(at: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let mut q = common::query("blocked.example.", RecordType::A);
            q.metadata.id = u16::try_from(n % 65_536).unwrap();
            sock.send_to(&q.to_vec().unwrap(), at).unwrap();
            let mut buf = [0u8; 1500];
            let len = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("query {n} to {at} got no answer: {e}"));
            let m = hickory_proto::op::Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(m.metadata.id, q.metadata.id);
            assert_eq!(answers(&m), ["0.0.0.0"]);
            n += 1;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readdressed_lan_moves_the_listeners_and_the_address_that_stays_keeps_answering() {
    let port = port_free_everywhere();
    let (lan, guest, moved) = (
        addr("127.0.1.1", port),
        addr("127.0.2.1", port),
        addr("127.0.3.1", port),
    );
    let first = config(port, "127.0.2", "");
    let rig = start(&first).await;
    rig.apply(&first).await.unwrap();
    blocks(lan);
    blocks(guest);

    let second = config(port, "127.0.3", "");
    let plan = rig.plan(&second);
    assert!(
        plan.iter()
            .any(|a| a.contains(&moved.to_string()) && a.contains(&guest.to_string())),
        "the plan names the move: {plan:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(lan, Arc::clone(&stop));
    // Let the load run before and after the apply.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let actions = rig.apply(&second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let asked = tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap();
    assert!(asked > 0);
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "plain DNS moves without a restart: {actions:?}"
    );

    blocks(moved);
    blocks(lan);
    tokio::task::spawn_blocking(move || closed(guest))
        .await
        .unwrap();
    let mut now = rig.daemon.addresses();
    now.sort();
    assert_eq!(now, [lan, moved]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_taken_at_apply_fails_it_and_changes_nothing() {
    let port = port_free_everywhere();
    let (lan, guest) = (addr("127.0.1.1", port), addr("127.0.2.1", port));
    let first = config(port, "127.0.2", "");
    let rig = start(&first).await;
    let held = UdpSocket::bind(addr("127.0.3.1", port)).unwrap();

    let second = config(port, "127.0.3", "");
    let e = rig.apply(&second).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("cannot listen for DNS on 127.0.3.1") && text.contains("in use"),
        "{text}"
    );
    assert_eq!(e.status(), hyper::StatusCode::CONFLICT);
    // Nothing changed: the old addresses answer.
    blocks(lan);
    blocks(guest);
    let mut now = rig.daemon.addresses();
    now.sort();
    assert_eq!(now, [lan, guest]);
    drop(held);
    rig.apply(&second).await.unwrap();
    blocks(addr("127.0.3.1", port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_enabled_and_serve_stale_change_at_the_apply() {
    let port = port_free_everywhere();
    let (lan, guest) = (addr("127.0.1.1", port), addr("127.0.2.1", port));
    let on = config(port, "127.0.2", "");
    let rig = start(&on).await;
    assert!(rig.resolver.cache().config().serve_stale);

    let off = config(port, "127.0.2", "enabled = false\nserve_stale = false");
    let plan = rig.plan(&off);
    assert!(
        plan.iter().any(|a| a == "close the DNS listeners"),
        "{plan:?}"
    );
    let actions = rig.apply(&off).await.unwrap();
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "{actions:?}"
    );
    tokio::task::spawn_blocking(move || {
        closed(lan);
        closed(guest);
    })
    .await
    .unwrap();
    assert!(rig.daemon.addresses().is_empty());
    assert!(!rig.resolver.cache().config().serve_stale);

    rig.apply(&on).await.unwrap();
    blocks(lan);
    blocks(guest);
    assert!(rig.resolver.cache().config().serve_stale);
}

/// Sends `n` queries from `from`, one at a time, and returns their response codes.
fn rcodes(from: &str, to: SocketAddr, n: usize) -> Vec<hickory_proto::op::ResponseCode> {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (0..n)
        .map(|i| {
            let mut q = common::query("blocked.example.", RecordType::A);
            q.metadata.id = u16::try_from(i).unwrap();
            sock.send_to(&q.to_vec().unwrap(), to).unwrap();
            let mut buf = [0u8; 1500];
            let len = sock.recv(&mut buf).unwrap();
            let m = hickory_proto::op::Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(m.metadata.id, q.metadata.id);
            m.metadata.response_code
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_rate_limit_is_refused_and_another_is_not() {
    use hickory_proto::op::ResponseCode::{NoError, Refused};
    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let rig = start(&config(port, "127.0.2", "")).await;
    // Off by default: a burst of 20 from one client is answered.
    let answered = tokio::task::spawn_blocking(move || rcodes("127.0.0.7", lan, 20))
        .await
        .unwrap();
    assert!(answered.iter().all(|r| *r == NoError), "{answered:?}");

    // 3 at once, then one a minute: the 4th query within the test's time is refused.
    let limited = config(port, "127.0.2", "rate_limit = \"1/minute burst 3\"");
    rig.apply(&limited).await.unwrap();
    let (a, b) = tokio::task::spawn_blocking(move || {
        (rcodes("127.0.0.7", lan, 5), rcodes("127.0.0.8", lan, 3))
    })
    .await
    .unwrap();
    assert_eq!(a, [NoError, NoError, NoError, Refused, Refused]);
    assert_eq!(b, [NoError, NoError, NoError], "buckets are per client");
    assert_eq!(
        rig.resolver
            .stats()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // Off again by the next apply.
    rig.apply(&config(port, "127.0.2", "")).await.unwrap();
    let again = tokio::task::spawn_blocking(move || rcodes("127.0.0.7", lan, 5))
        .await
        .unwrap();
    assert!(again.iter().all(|r| *r == NoError), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_upstreams_and_forwards_are_used_from_the_apply_on() {
    // The upstreams: two dnsd servers of their own, each answering one local name.
    let upstream = |name: &str, ip: &str| {
        let text = format!(
            "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[[dns.records]]\nname = \"{name}\"\naddresses = [\"{ip}\"]\n"
        );
        let cfg = appliance::load_str(&text).unwrap();
        let policy = Policy::build(&cfg, &Lists::new()).unwrap();
        Arc::new(Resolver::new(&cfg, Arc::new(policy)))
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let public = Server::bind(upstream("www.example.org", "192.0.2.1"), vec![any])
        .await
        .unwrap();
    let corp = Server::bind(upstream("intranet.corp.example", "10.1.2.3"), vec![any])
        .await
        .unwrap();
    let (public, corp) = (public.addresses()[0], corp.addresses()[0]);

    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let rig = start(&config(port, "127.0.2", "")).await;
    let with = format!(
        "{}[[dns.forwarding]]\ndomain = \"corp.example\"\nupstreams = [\"{corp}\"]\n",
        config(port, "127.0.2", "").replace(
            "upstreams = [\"127.0.0.1:9\"]",
            &format!("upstreams = [\"{public}\"]"),
        )
    );
    let actions = rig.apply(&with).await.unwrap();
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "{actions:?}"
    );
    let (www, intranet) = tokio::task::spawn_blocking(move || {
        (
            ask(lan, "www.example.org.", RecordType::A),
            ask(lan, "intranet.corp.example.", RecordType::A),
        )
    })
    .await
    .unwrap();
    assert_eq!(answers(&www), ["192.0.2.1"], "{www:?}");
    assert_eq!(answers(&intranet), ["10.1.2.3"], "{intranet:?}");
}

/// `config` with a record `nas.lan` and every other name under `lan` denied.
fn lan_denied(port: u16, domain: &str) -> String {
    format!(
        "{}[system]\ndomain = \"{domain}\"\n[[dns.records]]\nname = \"nas.lan\"\naddresses = [\"192.168.1.5\"]\n",
        config(port, "127.0.2", "").replace(
            "deny = [\"blocked.example\"]",
            "deny = [\"blocked.example\", \"*.lan\"]"
        )
    )
}

/// Watches a lease file holding one client, `laptop` at 127.0.1.150, for `rig` (domain lan).
fn watch_leases(rig: &Rig) {
    let path = rig._dir.path().join("leases.json");
    let laptop = Lease {
        mac: MacAddr::parse("52:54:00:00:00:01").unwrap(),
        ip: "127.0.1.150".parse().unwrap(),
        hostname: Some("laptop".into()),
        expires: None,
    };
    leases::write(&path, &[laptop]).unwrap();
    let mut w = LeaseWatcher::new(&path, Some("lan".to_owned()));
    rig.resolver
        .swap_leases(Arc::new(w.poll(dnsd::local::unix_now()).unwrap()));
    rig.daemon
        .set_lease_watcher(Arc::new(std::sync::Mutex::new(w)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_a_local_name_is_answered_before_the_policy() {
    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let rig = start(&lan_denied(port, "lan")).await;
    watch_leases(&rig);
    let client = "127.0.1.7".parse().unwrap();
    for (name, by) in [
        ("nas.lan", "record"),
        ("laptop.lan", "lease"),
        ("appliance.lan", "router name"),
        ("appliance", "router name"),
    ] {
        let v = rig.daemon.check(name, client);
        assert_eq!(v["blocked"], false, "{v}");
        assert_eq!(v["local"], by, "{v}");
        let text = v["explanation"].as_str().unwrap();
        assert!(
            text.contains(&format!("answered locally by {by}")),
            "{text}"
        );
    }
    let v = rig.daemon.check("other.lan", client);
    assert_eq!(
        (v["blocked"].as_bool(), v["local"].as_str()),
        (Some(true), None),
        "{v}"
    );
    assert_eq!(v["rule"], "*.lan", "{v}");

    let (nas, laptop, other) = tokio::task::spawn_blocking(move || {
        (
            ask(lan, "nas.lan.", RecordType::A),
            ask(lan, "laptop.lan.", RecordType::A),
            ask(lan, "other.lan.", RecordType::A),
        )
    })
    .await
    .unwrap();
    assert_eq!(answers(&nas), ["192.168.1.5"], "{nas:?}");
    assert_eq!(answers(&laptop), ["127.0.1.150"], "{laptop:?}");
    assert_eq!(answers(&other), ["0.0.0.0"], "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_domain_renames_the_dhcp_clients_at_the_apply() {
    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let rig = start(&lan_denied(port, "lan")).await;
    watch_leases(&rig);
    let before = tokio::task::spawn_blocking(move || ask(lan, "laptop.lan.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(answers(&before), ["127.0.1.150"], "{before:?}");

    let home = lan_denied(port, "home");
    assert!(
        rig.plan(&home)
            .iter()
            .any(|a| a == "name DHCP clients and the router in home (was lan)"),
        "{:?}",
        rig.plan(&home)
    );
    let actions = rig.apply(&home).await.unwrap();
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "{actions:?}"
    );
    let (home, old) = tokio::task::spawn_blocking(move || {
        (
            ask(lan, "laptop.home.", RecordType::A),
            ask(lan, "laptop.lan.", RecordType::A),
        )
    })
    .await
    .unwrap();
    assert_eq!(answers(&home), ["127.0.1.150"], "{home:?}");
    // No longer a local name: the policy's `*.lan` answers it.
    assert_eq!(answers(&old), ["0.0.0.0"], "{old:?}");
    assert_eq!(
        rig.daemon.check("laptop.lan", "127.0.1.7".parse().unwrap())["blocked"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cache_size_is_taken_at_the_apply_and_keeps_what_fits() {
    use std::sync::atomic::Ordering::Relaxed;
    let text = "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[[dns.records]]\nname = \"www.example.org\"\naddresses = [\"192.0.2.1\"]\n";
    let cfg = appliance::load_str(text).unwrap();
    let policy = Policy::build(&cfg, &Lists::new()).unwrap();
    let up = Arc::new(Resolver::new(&cfg, Arc::new(policy)));
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let public = Server::bind(up, vec![any]).await.unwrap().addresses()[0];

    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let with = |extra: &str| {
        config(port, "127.0.2", extra).replace(
            "upstreams = [\"127.0.0.1:9\"]",
            &format!("upstreams = [\"{public}\"]"),
        )
    };
    let rig = start(&with("cache_size = 1000")).await;
    let www = move || ask(lan, "www.example.org.", RecordType::A);
    let m = tokio::task::spawn_blocking(www).await.unwrap();
    assert_eq!(answers(&m), ["192.0.2.1"]);
    let stats = rig.resolver.stats();
    assert_eq!(stats.forwarded.load(Relaxed), 1);

    let shrunk = with("cache_size = 5");
    assert!(!rig.plan(&shrunk).iter().any(|a| a.contains("restart")));
    let actions = rig.apply(&shrunk).await.unwrap();
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "{actions:?}"
    );
    assert_eq!(rig.resolver.cache().capacity(), 5);
    let m = tokio::task::spawn_blocking(www).await.unwrap();
    assert_eq!(answers(&m), ["192.0.2.1"]);
    assert_eq!(stats.forwarded.load(Relaxed), 1, "kept across the resize");
    assert_eq!(stats.cached.load(Relaxed), 1);

    rig.apply(&with("cache_size = 0")).await.unwrap();
    assert!(rig.resolver.cache().is_empty());
    tokio::task::spawn_blocking(www).await.unwrap();
    tokio::task::spawn_blocking(www).await.unwrap();
    assert_eq!(
        stats.forwarded.load(Relaxed),
        3,
        "no cache: every query goes upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_query_log_size_is_taken_at_the_apply_with_the_newest_records() {
    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let text = |size: &str| config(port, "127.0.2", &format!("query_log_size = \"{size}\""));
    let cfg = appliance::load_str(&text("64KiB")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("querylog");
    let log = dnsd::querylog::QueryLog::open(&log_path, cfg.dns.query_log_size.bytes()).unwrap();
    let recorder = Arc::new(dnsd::stats::Recorder::start(log).unwrap());
    let rig = start_with(&text("64KiB"), dir, Some(recorder.clone())).await;
    let rig = &rig;
    let apply = |t: String| async move { rig.apply(&t).await };
    let wait_logged = |n: u64| {
        let until = Instant::now() + Duration::from_secs(20);
        while recorder.handled() < n {
            assert!(Instant::now() < until, "the writer took {n} records");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let capacity = |r: &dnsd::stats::Recorder| r.log().map(|l| l.capacity());
    assert_eq!(capacity(&recorder), Some(255));
    tokio::task::spawn_blocking(move || (0..10).for_each(|_| blocks(lan)))
        .await
        .unwrap();
    wait_logged(10);

    // Smaller: the 4 newest records fit in 5 slots, in a file of the new size.
    let actions = apply(text("1536B")).await.unwrap();
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "{actions:?}"
    );
    assert_eq!(capacity(&recorder), Some(5));
    assert_eq!(recorder.log().unwrap().len(), 5);
    assert_eq!(std::fs::metadata(&log_path).unwrap().len(), 6 * 256);
    // Off, then on again: the file left while off is taken again with its records.
    apply(text("0B")).await.unwrap();
    assert!(recorder.log().is_none());
    apply(text("1536B")).await.unwrap();
    assert_eq!(recorder.log().unwrap().len(), 5);
    // Larger, and the next query is logged after the kept ones.
    apply(text("64KiB")).await.unwrap();
    assert_eq!(capacity(&recorder), Some(255));
    tokio::task::spawn_blocking(move || blocks(lan))
        .await
        .unwrap();
    wait_logged(11);
    let log = recorder.log().unwrap();
    assert_eq!(log.len(), 6);
    let newest = log.recent(10, &dnsd::querylog::Filter::default()).unwrap();
    assert!(
        newest.iter().all(|r| r.name == "blocked.example"),
        "{newest:?}"
    );
}

/// A dnsd server on loopback answering www.example.org and intranet.corp.example with
/// `ip`: an upstream of the tests' own.
async fn upstream(ip: &str) -> Server {
    let text = format!(
        "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[[dns.records]]\nname = \"www.example.org\"\naddresses = [\"{ip}\"]\n[[dns.records]]\nname = \"intranet.corp.example\"\naddresses = [\"{ip}\"]\n"
    );
    let cfg = appliance::load_str(&text).unwrap();
    let policy = Policy::build(&cfg, &Lists::new()).unwrap();
    let resolver = Arc::new(Resolver::new(&cfg, Arc::new(policy)));
    Server::bind(resolver, vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap()
}

/// An answer of an upstream the apply removed is not served after it: the cache is
/// flushed when the upstreams or the forwards change, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_changes_the_upstreams_flushes_what_the_old_ones_answered() {
    // Two upstreams of their own, with other addresses for the same names.
    let (old, new) = (upstream("192.0.2.1").await, upstream("192.0.2.2").await);
    let (old, new) = (old.addresses()[0], new.addresses()[0]);

    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let with = |public: SocketAddr, corp: SocketAddr, extra: &str| {
        format!(
            "{}[[dns.forwarding]]\ndomain = \"corp.example\"\nupstreams = [\"{corp}\"]\n",
            config(port, "127.0.2", extra).replace(
                "upstreams = [\"127.0.0.1:9\"]",
                &format!("upstreams = [\"{public}\"]"),
            )
        )
    };
    let rig = start(&with(old, old, "")).await;
    let both = move || {
        let (w, i) = (
            ask(lan, "www.example.org.", RecordType::A),
            ask(lan, "intranet.corp.example.", RecordType::A),
        );
        (answers(&w), answers(&i))
    };
    let before = tokio::task::spawn_blocking(both).await.unwrap();
    assert_eq!(before, (vec!["192.0.2.1".into()], vec!["192.0.2.1".into()]));

    // An apply that leaves the upstreams as they were keeps the cache.
    rig.apply(&with(old, old, "min_ttl = \"1m\""))
        .await
        .unwrap();
    let cached = rig.resolver.stats().cached.load(Ordering::Relaxed);
    let same = tokio::task::spawn_blocking(both).await.unwrap();
    assert_eq!(same, before);
    assert_eq!(
        rig.resolver.stats().cached.load(Ordering::Relaxed),
        cached + 2
    );

    // A new conditional forward's server: its name is asked of it, not served from
    // what the old forward said; the public name too, since the cache is flushed whole.
    rig.apply(&with(old, new, "")).await.unwrap();
    assert!(rig.resolver.cache().is_empty());
    let (_, intranet) = tokio::task::spawn_blocking(both).await.unwrap();
    assert_eq!(intranet, ["192.0.2.2"]);

    // A new upstream.
    rig.apply(&with(new, new, "")).await.unwrap();
    let (www, _) = tokio::task::spawn_blocking(both).await.unwrap();
    assert_eq!(www, ["192.0.2.2"]);
}

/// Turning `dns.never_forward_private` on flushes what the upstream said about private
/// names while it was off: the fast path's copy of such an answer is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_never_forward_private_on_drops_what_was_forwarded() {
    let text = "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[[dns.records]]\nname = \"printer.lan\"\naddresses = [\"192.0.2.7\"]\n";
    let cfg = appliance::load_str(text).unwrap();
    let policy = Policy::build(&cfg, &Lists::new()).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let upstream = Server::bind(Arc::new(Resolver::new(&cfg, Arc::new(policy))), vec![any])
        .await
        .unwrap();
    let upstream = upstream.addresses()[0];

    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let with = |private: bool| {
        config(
            port,
            "127.0.2",
            &format!("never_forward_private = {private}"),
        )
        .replace(
            "upstreams = [\"127.0.0.1:9\"]",
            &format!("upstreams = [\"{upstream}\"]"),
        )
    };
    let rig = start(&with(false)).await;
    // Often enough for the fast path to hold a copy.
    let asked = tokio::task::spawn_blocking(move || {
        (0..6)
            .map(|_| answers(&ask(lan, "printer.lan.", RecordType::A)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(asked.iter().all(|a| a == &["192.0.2.7"]), "{asked:?}");
    assert!(!rig.resolver.wire_cache().is_empty());

    rig.apply(&with(true)).await.unwrap();
    let m = tokio::task::spawn_blocking(move || ask(lan, "printer.lan.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain,
        "{m:?}"
    );
}

/// The resolvers learned on the WAN, used when none is configured: when the box moves to
/// another WAN (a new DHCP lease with other resolvers), what the old ones answered is not
/// served, fresh or from the fast path; a learned server added beside the old ones keeps
/// the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_resolver_gone_flushes_what_it_answered() {
    let (old, new) = (upstream("192.0.2.1").await, upstream("192.0.2.2").await);
    let (old, new) = (old.addresses()[0], new.addresses()[0]);

    let port = port_free_everywhere();
    let lan = addr("127.0.1.1", port);
    let rig = start(
        &config(port, "127.0.2", "").replace("upstreams = [\"127.0.0.1:9\"]", "upstreams = []"),
    )
    .await;
    let www = move || {
        (0..6)
            .map(|_| answers(&ask(lan, "www.example.org.", RecordType::A)))
            .collect::<Vec<_>>()
    };
    rig.resolver.set_learned_upstreams(vec![old]);
    let asked = tokio::task::spawn_blocking(www).await.unwrap();
    assert!(asked.iter().all(|a| a == &["192.0.2.1"]), "{asked:?}");
    assert!(!rig.resolver.wire_cache().is_empty());

    // A second resolver learned beside the first: nothing it answered is wrong yet.
    rig.resolver.set_learned_upstreams(vec![old, new]);
    assert!(
        !rig.resolver.cache().is_empty(),
        "an added resolver flushed the cache"
    );

    // The first one gone: its answer goes with it.
    rig.resolver.set_learned_upstreams(vec![new]);
    assert!(rig.resolver.cache().is_empty());
    assert!(rig.resolver.wire_cache().is_empty());
    let asked = tokio::task::spawn_blocking(www).await.unwrap();
    assert!(asked.iter().all(|a| a == &["192.0.2.2"]), "{asked:?}");
}

/// `applctl dns check` says when a name is kept on the box by `dns.never_forward_private`
/// (and why), and not when a conditional forward covers it or for a public name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_which_names_are_never_forwarded() {
    let port = port_free_everywhere();
    let forward =
        "[[dns.forwarding]]\ndomain = \"10.in-addr.arpa\"\nupstreams = [\"127.0.0.1:9\"]\n";
    let rig = start(&format!("{}{forward}", config(port, "127.0.2", ""))).await;
    let client = "127.0.1.7".parse().unwrap();
    for (name, why) in [
        ("printer", "a single-label name"),
        ("ghost.lan", "a name in the local domain lan"),
        (
            "5.1.168.192.in-addr.arpa",
            "a reverse name of a private range",
        ),
    ] {
        let v = rig.daemon.check(name, client);
        assert_eq!(v["blocked"], false, "{v}");
        assert_eq!(v["private"], why, "{v}");
        let text = v["explanation"].as_str().unwrap();
        assert!(
            text.contains("never forwarded (dns.never_forward_private)"),
            "{text}"
        );
    }
    for name in ["www.example.org", "4.3.2.10.in-addr.arpa"] {
        let v = rig.daemon.check(name, client);
        assert_eq!(v["private"], serde_json::Value::Null, "{name}: {v}");
    }
}
