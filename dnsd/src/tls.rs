//! The certificate of the DoT and DoH listeners for clients.
//!
//! dnsd looks for `dns.crt` and `dns.key` (PEM) in its TLS directory (by default
//! `/data/dns/tls`). An administrator may put a real certificate there; when neither file
//! exists, dnsd makes a self-signed one for the router's names and LAN addresses on its
//! first start and keeps it, so that clients which pin it keep trusting it across restarts
//! and upgrades. Both files are written 0600 (the key is a secret, and nothing but dnsd
//! needs the certificate file), each atomically.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// The server configuration for the client listeners: the stored pair, or a new
/// self-signed one when there is none. The ALPN protocols are set by each listener.
pub fn load_or_create(spec: &CertSpec) -> Result<rustls::ServerConfig, TlsError> {
    let (cert, key) = (spec.cert_path(), spec.key_path());
    match (cert.exists(), key.exists()) {
        (true, true) => {}
        (false, false) => {
            create(spec)?;
            tracing::info!(
                cert = %cert.display(),
                names = ?spec.names,
                "made a self-signed certificate for DNS over TLS and HTTPS"
            );
        }
        _ => {
            return Err(TlsError::HalfPair {
                dir: spec.dir.clone(),
            });
        }
    }
    server_config(&cert, &key, &spec.dir)
}

fn create(spec: &CertSpec) -> Result<(), TlsError> {
    use appliance::tlsgen::{self, TlsGenError};
    let pair = tlsgen::self_signed(&spec.names, &spec.addresses, "dnsd")
        .and_then(|pair| tlsgen::write_pair(&spec.dir, &pair, KEY_FILE, CERT_FILE, 0o600));
    pair.map_err(|e| match e {
        TlsGenError::Generate(why) => TlsError::Generate(why),
        TlsGenError::Io { path, source } => TlsError::Io { path, source },
    })
}

fn server_config(cert: &Path, key: &Path, dir: &Path) -> Result<rustls::ServerConfig, TlsError> {
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
    let config_err = |why: String| TlsError::Config {
        dir: dir.to_owned(),
        why,
    };
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| config_err(e.to_string()))
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
        for p in [s.cert_path(), s.key_path()] {
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
            2,
            "no temp files left"
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
}
