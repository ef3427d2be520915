//! The dnsd binary serving clients over DNS-over-TLS and DNS-over-HTTPS: on its first start
//! it makes a self-signed certificate under its TLS directory (0600), answers hickory's DoT
//! and DoH clients that trust that certificate, and a restart reuses the same pair.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GATEWAY, Killed, answers, ask_until, dnsd, free_addr, free_tcp_port, query};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::xfer::{DnsExchange, DnsHandle as _, FirstAnswer as _};
use hickory_proto::op::{DnsRequest, DnsRequestOptions};
use hickory_proto::rr::RecordType;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

fn start(dir: &Path, addr: SocketAddr) -> Killed {
    Killed::spawn(
        dnsd(&dir.join("appliance.toml"))
            // Parallel tests each need a control socket of their own.
            .arg("--control")
            .arg(dir.join("dnsd.sock"))
            .arg("--lists-dir")
            .arg(dir.join("lists"))
            .arg("--tls-dir")
            .arg(dir.join("tls"))
            .arg("--leases")
            .arg(dir.join("leases.json"))
            .arg("--listen")
            .arg(addr.to_string()),
    )
}

/// Waits until plain DNS answers and the DoT and DoH ports accept connections (dnsd serves
/// plain DNS a moment before it binds them).
fn wait_ready(d: &mut Killed, addr: SocketAddr, tls_ports: [SocketAddr; 2]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        d.assert_running("dnsd");
        let answered = ask_until(
            addr,
            "gw.home.arpa.",
            RecordType::A,
            Instant::now() + Duration::from_millis(200),
        )
        .is_some();
        if answered
            && tls_ports
                .iter()
                .all(|p| std::net::TcpStream::connect(p).is_ok())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("dnsd did not answer on {addr} and listen on {tls_ports:?} within 20 s");
}

fn stop(d: Killed) {
    assert_eq!(d.terminate(Duration::from_secs(10)).code(), Some(0));
}

async fn ask_a(x: &DnsExchange<TokioRuntimeProvider>, name: &str) -> Vec<String> {
    let r = x
        .send(DnsRequest::new(
            query(name, RecordType::A),
            DnsRequestOptions::default(),
        ))
        .first_answer()
        .await
        .unwrap();
    answers(&r)
}

/// A client configuration that trusts exactly the certificate dnsd made.
fn client_config(cert_pem: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn check_dot_and_doh(cfg: &rustls::ClientConfig, dot: SocketAddr, doh: SocketAddr) {
    let provider = TokioRuntimeProvider::new();
    let x = hickory_net::tls::tls_exchange(
        dot,
        ServerName::try_from("gw.home.arpa").unwrap(),
        cfg.clone(),
        Duration::from_secs(5),
        None,
        provider.clone(),
    )
    .await
    .unwrap();
    assert_eq!(ask_a(&x, "nas.home.arpa.").await, ["192.168.1.5"], "DoT");
    assert_eq!(ask_a(&x, "gw.home.arpa.").await, ["192.168.1.1"], "DoT");

    // The provider owns the connection's background task: it must outlive the asks.
    let mut b =
        hickory_net::h2::HttpsClientStream::builder(Arc::new(cfg.clone()), provider.clone());
    b.request_timeout(Duration::from_secs(5));
    let x = b
        .exchange(doh, Arc::from("gw.home.arpa"), Arc::from("/dns-query"))
        .await
        .unwrap();
    assert_eq!(ask_a(&x, "nas.home.arpa.").await, ["192.168.1.5"], "DoH");
    assert_eq!(ask_a(&x, "gw.home.arpa.").await, ["192.168.1.1"], "DoH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_and_doh_clients_are_served_with_a_self_signed_certificate_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (dot_port, doh_port) = (free_tcp_port(), free_tcp_port());
    std::fs::write(
        dir.path().join("appliance.toml"),
        format!(
            r#"{GATEWAY}[dns]
dot_port = {dot_port}
doh_port = {doh_port}
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5"]
"#
        ),
    )
    .unwrap();
    let addr = free_addr();
    let dot: SocketAddr = format!("127.0.0.1:{dot_port}").parse().unwrap();
    let doh: SocketAddr = format!("127.0.0.1:{doh_port}").parse().unwrap();

    let mut d = start(dir.path(), addr);
    wait_ready(&mut d, addr, [dot, doh]);
    let (cert, key) = (
        dir.path().join("tls/dns.crt"),
        dir.path().join("tls/dns.key"),
    );
    for f in [&cert, &key] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let first = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let cfg = client_config(&cert);
    check_dot_and_doh(&cfg, dot, doh).await;
    stop(d);

    // A restart serves the same certificate: a client that trusted it still connects.
    let mut d = start(dir.path(), addr);
    wait_ready(&mut d, addr, [dot, doh]);
    assert_eq!(
        (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap()),
        first,
        "the pair is reused"
    );
    check_dot_and_doh(&cfg, dot, doh).await;
    stop(d);
}

/// Plain DNS on one address at two ports: DoT and DoH bind that address once (each bound per
/// `listen` entry before, so the second bind failed with "address in use" and dnsd exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plain_ports_on_one_address_share_the_dot_and_doh_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let (dot_port, doh_port) = (free_tcp_port(), free_tcp_port());
    std::fs::write(
        dir.path().join("appliance.toml"),
        format!(
            "{GATEWAY}[dns]\ndot_port = {dot_port}\ndoh_port = {doh_port}\n\
             [[dns.records]]\nname = \"nas.home.arpa\"\naddresses = [\"192.168.1.5\"]\n"
        ),
    )
    .unwrap();
    let (addr, second) = (free_addr(), free_addr());
    assert_eq!(addr.ip(), second.ip());
    let dot: SocketAddr = format!("127.0.0.1:{dot_port}").parse().unwrap();
    let doh: SocketAddr = format!("127.0.0.1:{doh_port}").parse().unwrap();
    let mut d = Killed::spawn(
        dnsd(&dir.path().join("appliance.toml"))
            .arg("--control")
            .arg(dir.path().join("dnsd.sock"))
            .arg("--lists-dir")
            .arg(dir.path().join("lists"))
            .arg("--tls-dir")
            .arg(dir.path().join("tls"))
            .arg("--leases")
            .arg(dir.path().join("leases.json"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--listen")
            .arg(second.to_string()),
    );
    wait_ready(&mut d, addr, [dot, doh]);
    wait_ready(&mut d, second, [dot, doh]);
    let cfg = client_config(&dir.path().join("tls/dns.crt"));
    check_dot_and_doh(&cfg, dot, doh).await;
    stop(d);
}
