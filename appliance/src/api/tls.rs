//! The API's certificate: `api.crt` and `api.key` (PEM) in the state dir. When neither
//! exists, a self-signed pair is made on first start and kept, so that a client which
//! pinned its fingerprint keeps trusting it. The key is written 0600, the certificate 0644
//! (its fingerprint is public, and `applctl` shows it without root), each atomically.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// File name of the certificate in the state dir.
pub const CERT_FILE: &str = "api.crt";
/// File name of the private key in the state dir.
pub const KEY_FILE: &str = "api.key";

/// Why the API has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} holds no usable PEM {what}: {why}; replace it, or remove {CERT_FILE} and {KEY_FILE} to have a new self-signed pair made"
    )]
    Pem {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error(
        "only one of {CERT_FILE} and {KEY_FILE} exists in {dir}; add the other, or remove it to have a new self-signed pair made"
    )]
    HalfPair { dir: PathBuf },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error(
        "the certificate and key in {dir} do not make a TLS configuration: {why}; check that they belong together"
    )]
    Config { dir: PathBuf, why: String },
}

/// The server's TLS configuration and the fingerprint of its certificate.
#[derive(Debug, Clone)]
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate (DER), as `AB:CD:...`.
    pub fingerprint: String,
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex, as browsers show it.
pub fn fingerprint_der(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the certificate kept in `dir`.
pub fn fingerprint(dir: &Path) -> Result<String, TlsError> {
    let path = dir.join(CERT_FILE);
    let first = CertificateDer::pem_file_iter(&path)
        .map_err(|e| pem_err(&path, "certificate", e.to_string()))?
        .next()
        .ok_or_else(|| pem_err(&path, "certificate", "no CERTIFICATE block".into()))?
        .map_err(|e| pem_err(&path, "certificate", e.to_string()))?;
    Ok(fingerprint_der(&first))
}

fn pem_err(path: &Path, what: &'static str, why: String) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what,
        why,
    }
}

/// The stored pair of `dir`, or a new self-signed one for `names` (the first is the
/// subject) and `addresses` when there is none.
pub fn load_or_create(
    dir: &Path,
    names: &[String],
    addresses: &[IpAddr],
) -> Result<Identity, TlsError> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    match (cert.exists(), key.exists()) {
        (true, true) => {}
        (false, false) => create(dir, names, addresses)?,
        _ => {
            return Err(TlsError::HalfPair {
                dir: dir.to_owned(),
            });
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| pem_err(&cert, "certificate", e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&cert, "certificate", e.to_string()))?;
    let fingerprint = certs
        .first()
        .map(|c| fingerprint_der(c))
        .ok_or_else(|| pem_err(&cert, "certificate", "no CERTIFICATE block".into()))?;
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| pem_err(&key, "private key", e.to_string()))?;
    let config_err = |why: String| TlsError::Config {
        dir: dir.to_owned(),
        why,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config_err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| config_err(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
    })
}

fn create(dir: &Path, names: &[String], addresses: &[IpAddr]) -> Result<(), TlsError> {
    use crate::tlsgen::{self, TlsGenError};
    let err = |e| match e {
        TlsGenError::Generate(why) => TlsError::Generate(why),
        TlsGenError::Io { path, source } => TlsError::Io { path, source },
    };
    let pair = tlsgen::self_signed(names, addresses, "appliance").map_err(err)?;
    tlsgen::write_pair(dir, &pair, KEY_FILE, CERT_FILE, 0o644).map_err(err)?;
    tracing::info!(
        dir = %dir.display(),
        fingerprint = %fingerprint_der(&pair.cert_der),
        "made a self-signed certificate for the API"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_pair_is_made_once_with_a_private_key_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("api");
        let names = ["gw.home.arpa".to_owned()];
        let id = load_or_create(&dir, &names, &["192.168.1.1".parse().unwrap()]).unwrap();
        assert_eq!(id.fingerprint.len(), 32 * 3 - 1);
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let again = load_or_create(&dir, &names, &[]).unwrap();
        assert_eq!(again.fingerprint, id.fingerprint, "reused");
        assert_eq!(fingerprint(&dir).unwrap(), id.fingerprint);
        fs::remove_file(dir.join(CERT_FILE)).unwrap();
        assert!(matches!(
            load_or_create(&dir, &names, &[]),
            Err(TlsError::HalfPair { .. })
        ));
    }
}
