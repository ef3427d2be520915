//! The certificate of the DoT and DoH listeners for clients.
//!
//! dnsd looks for `dns.crt` and `dns.key` (PEM) in its TLS directory (by default
//! `/data/dns/tls`). An administrator may put a real certificate there; when neither file
//! exists, dnsd makes a self-signed one for the router's names and LAN addresses on its
//! first start and keeps it, so that clients which pin it keep trusting it across restarts
//! and upgrades. Both files are written 0600 (the key is a secret, and nothing but dnsd
//! needs the certificate file), each atomically.
//!
//! The listeners follow each apply (see [`crate::server::Server::rebind_all`]): the pair
//! is read again from disk, so a certificate the administrator replaced is served from the
//! next apply on; a pair dnsd made is recorded in `dns.generated.json` (what it covers and
//! the certificate's SHA-256) and made again when the router's names or addresses change.
//! A pair without that record, or whose certificate is not the recorded one, is the
//! administrator's and is never replaced.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::DirBuilderExt as _;

/// Where the pair is kept on the appliance.
pub const DEFAULT_DIR: &str = "/data/dns/tls";
/// The path of the DoH endpoint (RFC 8484's example, which clients default to).
pub const DOH_PATH: &str = "/dns-query";
/// File name of the certificate (chain) in the TLS directory.
pub const CERT_FILE: &str = "dns.crt";
/// File name of the private key in the TLS directory.
pub const KEY_FILE: &str = "dns.key";

/// Why the TLS listeners have no certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} holds no usable PEM {what}: {why}; replace it, or remove {CERT_FILE} and \
         {KEY_FILE} to have dnsd make a new self-signed pair"
    )]
    Pem {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error(
        "only one of {CERT_FILE} and {KEY_FILE} exists in {dir}; add the other, or remove it to have dnsd make a new self-signed pair"
    )]
    HalfPair { dir: PathBuf },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("the TLS provider cannot make a server configuration: {0}")]
    Provider(String),
    #[error(
        "the certificate and key in {dir} do not make a TLS configuration: {why}; check that \
         they belong together"
    )]
    Config { dir: PathBuf, why: String },
}

/// Where the pair lives and what a new certificate is made for.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub dir: PathBuf,
    /// DNS names for the certificate: the router's name first (it becomes the subject).
    pub names: Vec<String>,
    /// Addresses for the certificate, for clients that connect by address.
    pub addresses: Vec<IpAddr>,
}

impl CertSpec {
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }
}

/// The certificate for the DoT/DoH listeners: the router's names, its LAN addresses and
/// the addresses listened on.
pub fn spec_for(cfg: &appliance::Config, dir: PathBuf, listen: &[SocketAddr]) -> CertSpec {
    let host = cfg.system.hostname.as_str();
    let mut addresses = crate::answer::lan_addresses(cfg);
    for a in listen {
        if !a.ip().is_unspecified() && !addresses.contains(&a.ip()) {
            addresses.push(a.ip());
        }
    }
    CertSpec {
        dir,
        names: vec![
            format!("{host}.{}", cfg.system.domain.as_str()),
            host.to_owned(),
        ],
        addresses,
    }
}

/// The two kinds of encrypted listener for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encrypted {
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484, HTTP/2) at [`DOH_PATH`].
    Https,
}

impl std::fmt::Display for Encrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encrypted::Tls => "DNS over TLS",
            Encrypted::Https => "DNS over HTTPS",
        })
    }
}

/// The DoT and DoH listeners `cfg` asks for beside plain DNS on `listen`: one per address
/// (plain DNS may listen on one address at several ports, `listen = ["lan",
/// "192.168.1.1:5353"]`, but DoT and DoH have one port each), none when DNS is off.
pub fn wanted(cfg: &appliance::Config, listen: &[SocketAddr]) -> Vec<(Encrypted, SocketAddr)> {
    let (dot, doh) = (cfg.dns.dot_port, cfg.dns.doh_port);
    let mut ips: Vec<IpAddr> = Vec::with_capacity(listen.len());
    for ip in listen.iter().map(SocketAddr::ip) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let mut out = Vec::new();
    if !cfg.dns.enabled {
        return out;
    }
    for ip in ips {
        if let Some(p) = dot {
            out.push((Encrypted::Tls, SocketAddr::new(ip, p.get())));
        }
        if let Some(p) = doh {
            out.push((Encrypted::Https, SocketAddr::new(ip, p.get())));
        }
    }
    out
}

/// Beside a pair dnsd made: what the certificate covers and the SHA-256 of the
/// certificate file, so that an apply can tell its own pair (reissued when the names or
/// addresses change) from one an administrator put there (kept as it is).
pub const GENERATED_FILE: &str = "dns.generated.json";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Generated {
    names: Vec<String>,
    addresses: Vec<IpAddr>,
    cert_sha256: String,
}

impl CertSpec {
    pub fn generated_path(&self) -> PathBuf {
        self.dir.join(GENERATED_FILE)
    }

    /// Names and addresses in a fixed order, so that a reordering is not a change.
    fn coverage(&self) -> (Vec<String>, Vec<IpAddr>) {
        let mut names = self.names.clone();
        names.sort();
        names.dedup();
        let mut addresses = self.addresses.clone();
        addresses.sort();
        addresses.dedup();
        (names, addresses)
    }
}

/// The certificate an apply is about to serve: read from the TLS directory, or made in
/// memory and written by [`Prepared::commit`] once the listeners that serve it are bound,
/// so that a failed apply leaves the pair on disk as it was.
#[derive(Debug)]
pub struct Prepared {
    key: Arc<CertifiedKey>,
    spec: CertSpec,
    /// A new pair to write (first start, or dnsd's own certificate no longer covering
    /// what it must).
    new: Option<appliance::tlsgen::SelfSigned>,
}

impl Prepared {
    /// Whether this is a new certificate (made, or reissued).
    pub fn is_new(&self) -> bool {
        self.new.is_some()
    }

    /// Writes a new pair (and what it covers) to the TLS directory; returns the key to
    /// serve.
    pub fn commit(self) -> Result<Arc<CertifiedKey>, TlsError> {
        if let Some(pair) = &self.new {
            write(&self.spec, pair)?;
            tracing::info!(
                cert = %self.spec.cert_path().display(),
                names = ?self.spec.names,
                addresses = ?self.spec.addresses,
                "made a self-signed certificate for DNS over TLS and HTTPS"
            );
        }
        Ok(self.key)
    }
}

/// What the listeners serve next: the stored pair (read again, so a certificate the
/// administrator replaced is taken at an apply), or a new self-signed one when there is
/// none, or when the stored one is dnsd's own and no longer covers the names and
/// addresses of `spec`.
pub fn prepare(spec: &CertSpec) -> Result<Prepared, TlsError> {
    let (cert, key) = (spec.cert_path(), spec.key_path());
    match (cert.exists(), key.exists()) {
        (true, true) => {
            if let Some(old) = own_outdated(spec)? {
                tracing::info!(
                    was_names = ?old.names,
                    was_addresses = ?old.addresses,
                    names = ?spec.names,
                    addresses = ?spec.addresses,
                    "the self-signed certificate no longer covers the router's names and addresses: reissuing it"
                );
                return generate(spec);
            }
            Ok(Prepared {
                key: Arc::new(certified_key(&cert, &key, &spec.dir)?),
                spec: spec.clone(),
                new: None,
            })
        }
        (false, false) => generate(spec),
        _ => Err(TlsError::HalfPair {
            dir: spec.dir.clone(),
        }),
    }
}

/// The record of a pair dnsd made that covers something else than `spec` now; `None`
/// when the pair is not dnsd's (no record, or a certificate file that is not the one
/// recorded) or covers the same.
fn own_outdated(spec: &CertSpec) -> Result<Option<Generated>, TlsError> {
    let path = spec.generated_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TlsError::Io { path, source }),
    };
    let Ok(record) = serde_json::from_str::<Generated>(&text) else {
        tracing::warn!(path = %path.display(), "unreadable record of the self-signed certificate: the pair is kept as it is");
        return Ok(None);
    };
    let cert = spec.cert_path();
    let pem = std::fs::read(&cert).map_err(|source| TlsError::Io { path: cert, source })?;
    if record.cert_sha256 != sha256_hex(&pem) {
        // Someone replaced the certificate: theirs to keep.
        return Ok(None);
    }
    let (names, addresses) = spec.coverage();
    Ok((record.names != names || record.addresses != addresses).then_some(record))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The server configuration for the client listeners: the stored pair, or a new
/// self-signed one when there is none (or when dnsd's own no longer covers `spec`). The
/// ALPN protocols are set by each listener.
pub fn load_or_create(spec: &CertSpec) -> Result<rustls::ServerConfig, TlsError> {
    let key = prepare(spec)?.commit()?;
    server_config(Arc::new(CertSlot::new(Some(key))))
}

fn generate(spec: &CertSpec) -> Result<Prepared, TlsError> {
    let pair = appliance::tlsgen::self_signed(&spec.names, &spec.addresses, "dnsd")
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let cert = CertificateDer::from(pair.cert_der.clone());
    let key_der = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = CertifiedKey::from_der(vec![cert], key_der, &provider())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Prepared {
        key: Arc::new(key),
        spec: spec.clone(),
        new: Some(pair),
    })
}

fn write(spec: &CertSpec, pair: &appliance::tlsgen::SelfSigned) -> Result<(), TlsError> {
    use appliance::tlsgen::{self, TlsGenError};
    let io = |e| match e {
        TlsGenError::Generate(why) => TlsError::Generate(why),
        TlsGenError::Io { path, source } => TlsError::Io { path, source },
    };
    // The record goes first: a crash between the two leaves a record that names another
    // certificate, which makes the pair the administrator's rather than dnsd's; the
    // other way round, an administrator's certificate could be taken for dnsd's.
    let (names, addresses) = spec.coverage();
    let record = Generated {
        names,
        addresses,
        cert_sha256: sha256_hex(pair.cert_pem.as_bytes()),
    };
    let text = serde_json::to_vec_pretty(&record).map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&spec.dir)
        .map_err(|source| TlsError::Io {
            path: spec.dir.clone(),
            source,
        })?;
    let path = spec.generated_path();
    tlsgen::write_atomic(&path, &text, 0o600).map_err(|source| TlsError::Io { path, source })?;
    tlsgen::write_pair(&spec.dir, pair, KEY_FILE, CERT_FILE, 0o600).map_err(io)
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn certified_key(cert: &Path, key: &Path, dir: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path, what: &'static str, why: String| TlsError::Pem {
        path: path.to_owned(),
        what,
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, "certificate", e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(cert, "certificate", e.to_string()))?;
    if certs.is_empty() {
        return Err(pem(cert, "certificate", "no CERTIFICATE block".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, "private key", e.to_string()))?;
    CertifiedKey::from_der(certs, key_der, &provider()).map_err(|e| TlsError::Config {
        dir: dir.to_owned(),
        why: e.to_string(),
    })
}

/// The certificate every client listener serves, swapped whole at an apply: handshakes
/// from then on get the new one, connections already up keep theirs.
#[derive(Debug, Default)]
pub struct CertSlot(arc_swap::ArcSwapOption<CertifiedKey>);

impl CertSlot {
    pub fn new(key: Option<Arc<CertifiedKey>>) -> Self {
        Self(arc_swap::ArcSwapOption::new(key))
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.0.store(Some(key));
    }

    /// The certificate served now (DER of the end entity), if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load_full()
    }
}

/// A server configuration that serves whatever `slot` holds at each handshake.
pub fn server_config(slot: Arc<CertSlot>) -> Result<rustls::ServerConfig, TlsError> {
    Ok(
        rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Provider(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(slot),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    fn spec(dir: &Path) -> CertSpec {
        CertSpec {
            dir: dir.join("tls"),
            names: vec!["gw.home.arpa".into(), "gw".into()],
            addresses: vec!["192.168.1.1".parse().unwrap()],
        }
    }

    #[test]
    fn a_pair_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        load_or_create(&s).unwrap();
        let cert = fs::read(s.cert_path()).unwrap();
        let key = fs::read(s.key_path()).unwrap();
        for p in [s.cert_path(), s.key_path(), s.generated_path()] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let dir_mode = fs::metadata(&s.dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        load_or_create(&s).unwrap();
        assert_eq!(fs::read(s.cert_path()).unwrap(), cert, "reused");
        assert_eq!(fs::read(s.key_path()).unwrap(), key, "reused");
        assert_eq!(
            fs::read_dir(&s.dir).unwrap().count(),
            3,
            "the pair and its record, no temp files left"
        );
    }

    #[test]
    fn damaged_or_half_pairs_are_errors_that_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        load_or_create(&s).unwrap();
        fs::remove_file(s.cert_path()).unwrap();
        let e = load_or_create(&s).unwrap_err();
        assert!(matches!(e, TlsError::HalfPair { .. }), "{e}");
        assert!(e.to_string().contains("remove"), "{e}");

        fs::write(s.cert_path(), b"not pem").unwrap();
        let e = load_or_create(&s).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");

        // A certificate with another key.
        let other = tempfile::tempdir().unwrap();
        let o = spec(other.path());
        load_or_create(&o).unwrap();
        fs::copy(o.cert_path(), s.cert_path()).unwrap();
        let e = load_or_create(&s).unwrap_err();
        assert!(matches!(e, TlsError::Config { .. }), "{e}");
    }

    fn end_entity(key: &CertifiedKey) -> Vec<u8> {
        key.cert.first().unwrap().to_vec()
    }

    #[test]
    fn dnsd_s_own_pair_is_reissued_when_what_it_covers_changes_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let first = prepare(&s).unwrap();
        assert!(first.is_new());
        let first = end_entity(&first.commit().unwrap());
        assert!(s.generated_path().exists());

        // The same names in another order: kept.
        let mut same = s.clone();
        same.names.reverse();
        let p = prepare(&same).unwrap();
        assert!(!p.is_new());
        assert_eq!(end_entity(&p.commit().unwrap()), first);

        // A new address: a new certificate, written only at the commit.
        let mut moved = s.clone();
        moved.addresses.push("10.0.0.1".parse().unwrap());
        let on_disk = fs::read(s.cert_path()).unwrap();
        let p = prepare(&moved).unwrap();
        assert!(p.is_new());
        assert_eq!(
            fs::read(s.cert_path()).unwrap(),
            on_disk,
            "not written before the commit"
        );
        let second = end_entity(&p.commit().unwrap());
        assert_ne!(second, first);
        assert_ne!(fs::read(s.cert_path()).unwrap(), on_disk);
        let p = prepare(&moved).unwrap();
        assert!(!p.is_new(), "the reissued pair covers the new addresses");
        assert_eq!(end_entity(&p.commit().unwrap()), second);
    }

    #[test]
    fn an_administrator_s_pair_is_kept_and_read_again_at_each_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        prepare(&s).unwrap().commit().unwrap();
        // The administrator puts their own pair over dnsd's (the record stays behind).
        let other = tempfile::tempdir().unwrap();
        let o = spec(other.path());
        prepare(&o).unwrap().commit().unwrap();
        fs::copy(o.cert_path(), s.cert_path()).unwrap();
        fs::copy(o.key_path(), s.key_path()).unwrap();
        let theirs = fs::read(s.cert_path()).unwrap();

        let mut renamed = s.clone();
        renamed.names = vec!["router.example.net".into()];
        let p = prepare(&renamed).unwrap();
        assert!(!p.is_new(), "not dnsd's: never replaced");
        let served = end_entity(&p.commit().unwrap());
        let pem: Vec<u8> = CertificateDer::pem_slice_iter(&theirs)
            .next()
            .unwrap()
            .unwrap()
            .to_vec();
        assert_eq!(served, pem, "their certificate is served");
        assert_eq!(fs::read(s.cert_path()).unwrap(), theirs);

        // Without a record at all (a pair put there before dnsd first ran): kept too.
        fs::remove_file(s.generated_path()).unwrap();
        assert!(!prepare(&renamed).unwrap().is_new());
    }
}
