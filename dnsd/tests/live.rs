//! What an apply does to DoT, DoH and the block lists of a running dnsd: the real server
//! on loopback addresses (every 127.0.0.0/8 address is local on Linux), the daemon's
//! control API in process, generations from a real config store, queries with hickory's
//! DoT and DoH clients.
//!
//! DoT and DoH follow the config like plain DNS: on, a new port (the old one closed, a
//! connection on a kept listener still served), a port someone holds (the apply fails,
//! nothing changes), off. The self-signed certificate is made again when the router's
//! name changes: clients that trust the new certificate reach `router.home.arpa`.
//!
//! An apply that leaves a list as it was keeps the compiled copy in use (the same `Arc`)
//! and reads no list from the store (the store's load counter stays), so it never holds a
//! list twice; a list enabled again is read from the store, one whose file changed is
//! compiled anew.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{answers, free_port};
use dnsd::control::{ApiError, Daemon, Listeners};
use dnsd::fetch::{ListStore, http_client};
use dnsd::policy::{Lists, Policy};
use dnsd::refresh::Refresher;
use dnsd::server::{Resolver, Server};
use dnsd::tls::Encrypted;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::xfer::{DnsExchange, DnsHandle as _, FirstAnswer as _};
use hickory_proto::op::{DnsRequest, DnsRequestOptions};
use hickory_proto::rr::RecordType;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

const LAN: &str = "127.0.4.1";

/// The router `host`.home.arpa on the LAN 127.0.4.1/24, plain DNS on `port`, `extra` in
/// `[dns]`.
fn config(host: &str, port: u16, extra: &str) -> String {
    format!(
        r#"version = 1
[system]
hostname = "{host}"
domain = "home.arpa"
[interfaces.lan]
device = "eth1"
addresses = ["{LAN}/24"]
[dhcp.lan]
start = "127.0.4.100"
end = "127.0.4.200"
[dns]
upstreams = ["127.0.0.1:9"]
port = {port}
{extra}
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5"]
"#
    )
}

/// A TCP port free on [`LAN`] now.
fn free_tcp() -> u16 {
    TcpListener::bind((LAN, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn at(port: u16) -> SocketAddr {
    SocketAddr::new(LAN.parse().unwrap(), port)
}

struct Rig {
    daemon: Arc<Daemon>,
    store: appliance::store::Store,
    dir: tempfile::TempDir,
}

async fn start(text: &str, lists: Lists) -> Rig {
    start_in(tempfile::tempdir().unwrap(), text, lists).await
}

async fn start_in(dir: tempfile::TempDir, text: &str, lists: Lists) -> Rig {
    let cfg = appliance::load_str(text).unwrap();
    let policy = Policy::build(&cfg, &lists).unwrap();
    let resolver = Arc::new(Resolver::new(&cfg, Arc::new(policy)));
    let server = Server::bind(Arc::clone(&resolver), dnsd::listen::addresses(&cfg))
        .await
        .unwrap();
    let daemon = Daemon::new(
        resolver,
        Arc::new(cfg),
        lists,
        dir.path().join("lists"),
        http_client().unwrap(),
        Box::new(|| Err("not in this test".into())),
        Some(Listeners::from_config(server).with_tls_dir(dir.path().join("tls"))),
    );
    let store = appliance::store::Store::open(dir.path().join("config")).unwrap();
    daemon.set_config_dir(dir.path().join("config"));
    Rig { daemon, store, dir }
}

impl Rig {
    async fn apply(&self, text: &str) -> Result<Vec<String>, ApiError> {
        let generation = self.store.commit(text, "test").unwrap();
        self.daemon.apply_generation(generation).await
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("tls/dns.crt")
    }
}

/// A client configuration that trusts exactly the certificate in `cert_pem` now.
fn trusting(cert_pem: &Path) -> rustls::ClientConfig {
    trusting_pem(&std::fs::read(cert_pem).unwrap())
}

/// A client configuration of its own (no session to resume) that trusts `pem`.
fn trusting_pem(pem: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An exchange and the provider that owns its connection's background task (which must
/// outlive the asks).
struct Conn(
    DnsExchange<TokioRuntimeProvider>,
    #[allow(dead_code)] TokioRuntimeProvider,
);

async fn dot(cfg: &rustls::ClientConfig, addr: SocketAddr, name: &str) -> Result<Conn, String> {
    let provider = TokioRuntimeProvider::new();
    hickory_net::tls::tls_exchange(
        addr,
        ServerName::try_from(name.to_owned()).unwrap(),
        cfg.clone(),
        Duration::from_secs(5),
        None,
        provider.clone(),
    )
    .await
    .map(|x| Conn(x, provider))
    .map_err(|e| e.to_string())
}

async fn doh(cfg: &rustls::ClientConfig, addr: SocketAddr, name: &str) -> Result<Conn, String> {
    let provider = TokioRuntimeProvider::new();
    let mut b =
        hickory_net::h2::HttpsClientStream::builder(Arc::new(cfg.clone()), provider.clone());
    b.request_timeout(Duration::from_secs(5));
    b.exchange(addr, Arc::from(name), Arc::from("/dns-query"))
        .await
        .map(|x| Conn(x, provider))
        .map_err(|e| e.to_string())
}

/// The A answers for `name`, or the error of the exchange.
async fn ask(x: &Conn, name: &str) -> Result<Vec<String>, String> {
    let q = common::query(name, RecordType::A);
    x.0.send(DnsRequest::new(q, DnsRequestOptions::default()))
        .first_answer()
        .await
        .map(|r| answers(&r))
        .map_err(|e| e.to_string())
}

/// No one listens on `addr` any more (the listener is closed a moment after the apply).
fn refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_and_doh_follow_the_applies_and_the_certificate_follows_the_router_s_name() {
    let port = free_port(LAN);
    let rig = start(&config("gw", port, ""), Lists::new()).await;
    assert!(rig.daemon.encrypted_addresses().await.is_empty());

    // On at the apply, with a self-signed certificate made for the router's names.
    let (dot1, doh1) = (free_tcp(), free_tcp());
    let on = config("gw", port, &format!("dot_port = {dot1}\ndoh_port = {doh1}"));
    let generation = rig.store.commit(&on, "plan").unwrap();
    let plan = rig.daemon.plan_generation(generation).unwrap();
    assert!(
        plan.iter().any(|a| a
            == &format!(
                "listen for DNS over TLS on {}, DNS over HTTPS on {} (was nowhere)",
                at(dot1),
                at(doh1)
            )),
        "{plan:?}"
    );
    let actions = rig.apply(&on).await.unwrap();
    assert!(
        !actions.iter().any(|a| a.contains("restart")),
        "{actions:?}"
    );
    let mut listening = rig.daemon.encrypted_addresses().await;
    listening.sort();
    assert_eq!(
        listening,
        [(Encrypted::Tls, at(dot1)), (Encrypted::Https, at(doh1))]
    );
    let old_trust = trusting(&rig.cert());
    let kept = dot(&old_trust, at(dot1), "gw.home.arpa").await.unwrap();
    assert_eq!(ask(&kept, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);
    let x = doh(&old_trust, at(doh1), "gw.home.arpa").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);
    let x = dot(&old_trust, at(dot1), LAN).await.unwrap();
    assert_eq!(
        ask(&x, "nas.home.arpa.").await.unwrap(),
        ["192.168.1.5"],
        "the certificate covers the LAN address"
    );

    // DoT moves to another port; DoH stays, and so does a connection to it.
    let dot2 = free_tcp();
    let doh_kept = doh(&old_trust, at(doh1), "gw.home.arpa").await.unwrap();
    let moved = config("gw", port, &format!("dot_port = {dot2}\ndoh_port = {doh1}"));
    rig.apply(&moved).await.unwrap();
    refused(at(dot1));
    let x = dot(&old_trust, at(dot2), "gw.home.arpa").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);
    assert_eq!(
        ask(&doh_kept, "nas.home.arpa.").await.unwrap(),
        ["192.168.1.5"],
        "a connection to a kept listener is served on"
    );

    // A port someone holds fails the apply with the listener and the address named, and
    // changes nothing.
    let holder = TcpListener::bind(at(0)).unwrap();
    let taken = holder.local_addr().unwrap().port();
    let e = rig
        .apply(&config(
            "gw",
            port,
            &format!("dot_port = {taken}\ndoh_port = {doh1}"),
        ))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ApiError::Listen(_)), "{msg}");
    assert!(
        msg.contains("DNS over TLS") && msg.contains(&at(taken).to_string()),
        "{msg}"
    );
    let x = dot(&old_trust, at(dot2), "gw.home.arpa").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);
    drop(holder);

    // A new name: the certificate is made again for it and served on the same listeners;
    // a client that trusted the old one no longer connects, a connection made before goes on.
    let before = std::fs::read(rig.cert()).unwrap();
    let renamed = config(
        "router",
        port,
        &format!("dot_port = {dot2}\ndoh_port = {doh1}"),
    );
    rig.apply(&renamed).await.unwrap();
    assert_ne!(std::fs::read(rig.cert()).unwrap(), before, "reissued");
    let new_trust = trusting(&rig.cert());
    for name in ["router.home.arpa", "router", LAN] {
        let x = dot(&new_trust, at(dot2), name).await.unwrap();
        assert_eq!(
            ask(&x, "nas.home.arpa.").await.unwrap(),
            ["192.168.1.5"],
            "{name}"
        );
        let x = doh(&new_trust, at(doh1), name).await.unwrap();
        assert_eq!(
            ask(&x, "nas.home.arpa.").await.unwrap(),
            ["192.168.1.5"],
            "{name}"
        );
    }
    let e = match dot(&new_trust, at(dot2), "gw.home.arpa").await {
        Ok(x) => ask(&x, "nas.home.arpa.").await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        e.to_lowercase().contains("certificate"),
        "the old name is not covered: {e}"
    );
    // A client that never connected (one that did may resume its TLS session, which
    // the listener kept: connections and sessions of the old certificate run out).
    let e = match dot(&trusting_pem(&before), at(dot2), "gw.home.arpa").await {
        Ok(x) => ask(&x, "nas.home.arpa.").await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        e.to_lowercase().contains("certificate"),
        "the old certificate is gone: {e}"
    );
    assert_eq!(
        ask(&doh_kept, "nas.home.arpa.").await.unwrap(),
        ["192.168.1.5"],
        "a connection made with the old certificate is served on"
    );

    // Off: both closed, plain DNS stays.
    rig.apply(&config("router", port, "")).await.unwrap();
    refused(at(dot2));
    refused(at(doh1));
    assert!(rig.daemon.encrypted_addresses().await.is_empty());
    let m = common::ask(at(port), "nas.home.arpa.", RecordType::A);
    assert_eq!(answers(&m), ["192.168.1.5"]);
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_s_certificate_is_kept_across_a_rename_and_read_again_at_an_apply() {
    let dir = tempfile::tempdir().unwrap();
    // Their pair, for a name dnsd would never choose.
    let theirs = dnsd::tls::CertSpec {
        dir: dir.path().join("tls"),
        names: vec!["dns.example.net".into()],
        addresses: vec![],
    };
    let pair = appliance::tlsgen::self_signed(&theirs.names, &[], "x").unwrap();
    appliance::tlsgen::write_pair(&theirs.dir, &pair, "dns.key", "dns.crt", 0o600).unwrap();

    let port = free_port(LAN);
    let dot_port = free_tcp();
    let on = |host: &str| config(host, port, &format!("dot_port = {dot_port}"));
    let rig = start_in(dir, &config("gw", port, ""), Lists::new()).await;
    rig.apply(&on("gw")).await.unwrap();
    let trust = trusting(&rig.cert());
    let x = dot(&trust, at(dot_port), "dns.example.net").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);

    // A rename does not touch it.
    rig.apply(&on("router")).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(rig.cert()).unwrap(),
        pair.cert_pem,
        "kept"
    );

    // They replace it: the next apply serves the new one without a restart.
    let renewed = appliance::tlsgen::self_signed(&["dns2.example.net".into()], &[], "x").unwrap();
    appliance::tlsgen::write_pair(&theirs.dir, &renewed, "dns.key", "dns.crt", 0o600).unwrap();
    rig.apply(&on("router")).await.unwrap();
    let trust = trusting(&rig.cert());
    let x = dot(&trust, at(dot_port), "dns2.example.net").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);

    // A damaged one fails the apply, naming the file, and the listener serves the last.
    std::fs::write(rig.cert(), "not a certificate").unwrap();
    let e = rig.apply(&on("gw")).await.unwrap_err().to_string();
    assert!(e.contains("dns.crt"), "{e}");
    let x = dot(&trust, at(dot_port), "dns2.example.net").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);
}

/// `[dns.lists.ads]` from `file` (with `enabled`), and the group `kids` when `group` is
/// given.
fn with_list(port: u16, file: &Path, enabled: bool, extra: &str) -> String {
    config(
        "gw",
        port,
        &format!(
            "blocking = true\n{extra}\n[dns.lists.ads]\nfile = \"{}\"\nformat = \"domains\"\nenabled = {enabled}\n",
            file.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_reuses_the_compiled_lists_it_does_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ads.txt");
    std::fs::write(&file, "ads.example\ntracker.example\n").unwrap();
    let port = free_port(LAN);
    let first = with_list(port, &file, true, "");
    // The list compiled into the store, as a refresher leaves it.
    let cfg = appliance::load_str(&first).unwrap();
    let mut refresher = Refresher::new(
        ListStore::new(dir.path().join("lists")),
        http_client().unwrap(),
        &cfg.dns,
    );
    assert!(refresher.run_due().await);
    let lists = refresher.lists().clone();
    drop(refresher);
    let rig = start_in(dir, &first, lists).await;
    let in_use = Arc::clone(&rig.daemon.lists()["ads"]);
    let loads = rig.daemon.list_loads();

    // Unrelated changes, then a group that uses the list: the same compiled copy, nothing
    // read, so no second copy in memory at any point of the apply.
    rig.apply(&with_list(port, &file, true, "deny = [\"other.example\"]"))
        .await
        .unwrap();
    rig.apply(&with_list(
        port,
        &file,
        true,
        "[dns.groups.kids]\ncidrs = [\"127.0.0.9/32\"]\nlists = [\"ads\"]",
    ))
    .await
    .unwrap();
    assert!(Arc::ptr_eq(&rig.daemon.lists()["ads"], &in_use), "reused");
    assert_eq!(
        rig.daemon.list_loads(),
        loads,
        "no list read from the store"
    );
    let kids: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    assert_eq!(
        rig.daemon.check("ads.example", kids)["blocked"],
        true,
        "the new group uses the kept copy"
    );

    // Off, then on again: read from the store, a copy of its own.
    rig.apply(&with_list(port, &file, false, "")).await.unwrap();
    assert!(!rig.daemon.lists().contains_key("ads"));
    rig.apply(&with_list(port, &file, true, "")).await.unwrap();
    assert_eq!(rig.daemon.list_loads(), loads + 1, "read once");
    let back = Arc::clone(&rig.daemon.lists()["ads"]);
    assert!(!Arc::ptr_eq(&back, &in_use));
    let client: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(rig.daemon.check("tracker.example", client)["blocked"], true);

    // Another file: not the copy in use; the refresher compiles the new file.
    let other = rig.dir.path().join("other.txt");
    std::fs::write(&other, "other-ads.example\n").unwrap();
    rig.apply(&with_list(port, &other, true, "")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = rig.daemon.lists();
        if now.get("ads").is_some_and(|l| !Arc::ptr_eq(l, &back)) {
            break;
        }
        assert!(Instant::now() < deadline, "the new file was not compiled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rig.daemon.check("other-ads.example", client)["blocked"],
        true
    );
    assert_eq!(rig.daemon.check("ads.example", client)["blocked"], false);
}

/// `POST /reload` on the control socket `sock`; the HTTP status.
fn post_reload(sock: &Path) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /reload HTTP/1.1\r\nHost: dnsd\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The binary: DoT turned on and off by `POST /reload` of its config file, with the
/// certificate made in `--tls-dir` (not the appliance's directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_opens_and_closes_dot_at_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let dot_port = common::free_tcp_port();
    let dot_at: SocketAddr = format!("127.0.0.1:{dot_port}").parse().unwrap();
    let text = |extra: &str| {
        format!(
            "{}[dns]\n{extra}\n[[dns.records]]\nname = \"nas.home.arpa\"\naddresses = [\"192.168.1.5\"]\n",
            common::GATEWAY
        )
    };
    let cfg = dir.path().join("appliance.toml");
    std::fs::write(&cfg, text("")).unwrap();
    let sock = dir.path().join("dnsd.sock");
    let mut d = common::Killed::spawn(
        common::dnsd(&cfg)
            .arg("--lists-dir")
            .arg(dir.path().join("lists"))
            .arg("--tls-dir")
            .arg(dir.path().join("tls"))
            .arg("--leases")
            .arg(dir.path().join("leases.json"))
            .arg("--control")
            .arg(&sock)
            .arg("--listen")
            .arg(addr.to_string()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        d.assert_running("dnsd");
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(TcpStream::connect(dot_at).is_err(), "no DoT yet");

    std::fs::write(&cfg, text(&format!("dot_port = {dot_port}"))).unwrap();
    assert_eq!(post_reload(&sock), 200);
    let trust = trusting(&dir.path().join("tls/dns.crt"));
    let x = dot(&trust, dot_at, "gw.home.arpa").await.unwrap();
    assert_eq!(ask(&x, "nas.home.arpa.").await.unwrap(), ["192.168.1.5"]);

    std::fs::write(&cfg, text("")).unwrap();
    assert_eq!(post_reload(&sock), 200);
    refused(dot_at);
    d.assert_running("dnsd");
    assert_eq!(d.terminate(Duration::from_secs(10)).code(), Some(0));
}
