//! Self-signed certificates for the appliance's own TLS listeners (the API, dnsd's DoT and
//! DoH): made once on the box, for its names and addresses, and kept as a PEM pair in a
//! directory of mode 0700, so that clients which pinned the certificate keep trusting it.
//!
//! Each caller keeps its own file names, modes and error type; what they share is making
//! the pair and writing it: the key first, each file through a temp file, an fsync and a
//! rename, then an fsync of the directory. A crash between the two files leaves a half
//! pair, which callers report, never a certificate whose key is lost.
//!
//! Clients of such a listener (applctl over HTTPS, stored's replication sender) cannot lean
//! on a CA either: [`PinnedServerCert`] trusts exactly one certificate, by its SHA-256.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// Why a pair could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum TlsGenError {
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A new certificate and its key, in PEM, and the certificate in DER (for fingerprints).
#[derive(Debug)]
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// Makes a self-signed certificate for `names` (the first becomes the common name, else
/// `fallback_cn`) and `addresses`.
pub fn self_signed(
    names: &[String],
    addresses: &[IpAddr],
    fallback_cn: &str,
) -> Result<SelfSigned, TlsGenError> {
    let generate = |e: rcgen::Error| TlsGenError::Generate(e.to_string());
    let sans: Vec<String> = names
        .iter()
        .cloned()
        .chain(addresses.iter().map(ToString::to_string))
        .collect();
    let mut params = rcgen::CertificateParams::new(sans).map_err(generate)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().map_or(fallback_cn, String::as_str),
    );
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    })
}

/// Makes `dir` (mode 0700) and writes the pair into it: the key as `key_file` (0600)
/// first, then the certificate as `cert_file` with `cert_mode`.
pub fn write_pair(
    dir: &Path,
    pair: &SelfSigned,
    key_file: &str,
    cert_file: &str,
    cert_mode: u32,
) -> Result<(), TlsGenError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsGenError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let key = dir.join(key_file);
    write_atomic(&key, pair.key_pem.as_bytes(), 0o600).map_err(io_err(&key))?;
    let cert = dir.join(cert_file);
    write_atomic(&cert, pair.cert_pem.as_bytes(), cert_mode).map_err(io_err(&cert))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `path` with `mode` through a temp file beside it, an fsync and a rename; the
/// temp file is removed when a step fails.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A SHA-256 fingerprint as people type or paste it: 64 hex digits in either case, with or
/// without colons and a `sha256:`, `SHA256:` or `SHA-256:` prefix. `None` when it is not
/// 32 bytes of hex.
pub fn parse_sha256(input: &str) -> Option<[u8; 32]> {
    let s = input.trim();
    let s = ["sha256:", "sha-256:"]
        .iter()
        .find_map(|p| {
            s.get(..p.len())
                .filter(|head| head.eq_ignore_ascii_case(p))
                .and_then(|_| s.get(p.len()..))
        })
        .unwrap_or(s)
        .trim();
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex, &mut out).ok()?;
    Some(out)
}

/// `AB:CD:…`, the form browsers and `openssl x509 -fingerprint` show.
pub fn colon_hex(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Trusts exactly the server certificate whose SHA-256 is pinned. The appliance's
/// certificates are self-signed, so no CA can vouch for them; the fingerprint the admin
/// read on the other box is what they checked. The handshake signature is still verified,
/// so only the holder of that certificate's key passes. The server name is not checked:
/// the pin already names one certificate.
#[derive(Debug)]
pub struct PinnedServerCert {
    sha256: [u8; 32],
    hint: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerCert {
    /// `hint` ends the error of a mismatch: where the user reads the right fingerprint.
    pub fn new(sha256: [u8; 32], provider: Arc<CryptoProvider>, hint: impl Into<String>) -> Self {
        Self {
            sha256,
            hint: hint.into(),
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Sha256::digest(end_entity);
        if got.as_slice() == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has the SHA-256 fingerprint {}, not the pinned {} \
                 (someone may be in between); {}",
                colon_hex(&got),
                colon_hex(&self.sha256),
                self.hint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_pair_is_written_private_with_the_modes_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let pair = self_signed(
            &["gw.home.arpa".into(), "gw".into()],
            &["192.168.1.1".parse().unwrap()],
            "x",
        )
        .unwrap();
        assert!(pair.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(pair.key_pem.contains("PRIVATE KEY"));
        write_pair(&dir, &pair, "k.pem", "c.pem", 0o644).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("k.pem")), 0o600);
        assert_eq!(mode(&dir.join("c.pem")), 0o644);
        assert_eq!(
            fs::read_to_string(dir.join("c.pem")).unwrap(),
            pair.cert_pem
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "no temp files left");
    }

    #[test]
    fn a_write_that_fails_says_where_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let pair = self_signed(&[], &[], "fallback").unwrap();
        // A directory where the key file should go.
        let dir = tmp.path().join("tls");
        fs::create_dir_all(dir.join("k.pem")).unwrap();
        let e = write_pair(&dir, &pair, "k.pem", "c.pem", 0o600).unwrap_err();
        assert!(e.to_string().contains("k.pem"), "{e}");
        assert!(!dir.join("k.tmp").exists());
    }

    #[test]
    fn fingerprints_are_read_as_typed() {
        let colons = "CE:64:E3:57:32:AA:E0:16:13:81:3F:3D:89:99:B8:CB:7C:08:35:3B:57:10:4D:4F:CB:91:3D:D6:CC:DC:37:C5";
        let digest = parse_sha256(colons).unwrap();
        assert_eq!(colon_hex(&digest), colons);
        let bare = colons.replace(':', "").to_lowercase();
        for typed in [
            bare.clone(),
            format!("SHA256:{bare}"),
            format!("sha256:{bare}"),
            format!(" SHA-256: {colons} "),
        ] {
            assert_eq!(parse_sha256(&typed), Some(digest), "{typed}");
        }
        assert_eq!(parse_sha256("CE:64"), None);
        assert_eq!(parse_sha256("not hex"), None);
        assert_eq!(parse_sha256(&format!("{bare}00")), None);
    }

    /// The verifier alone, on a certificate it pins and one it does not.
    #[test]
    fn only_the_pinned_certificate_is_trusted() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ours = self_signed(&["a".into()], &[], "a").unwrap();
        let theirs = self_signed(&["a".into()], &[], "a").unwrap();
        let pin: [u8; 32] = Sha256::digest(&ours.cert_der).into();
        let verifier = PinnedServerCert::new(pin, provider, "ask the admin");
        let name = ServerName::try_from("anything").unwrap();
        let check = |der: &[u8]| {
            verifier.verify_server_cert(
                &CertificateDer::from(der.to_vec()),
                &[],
                &name,
                &[],
                UnixTime::now(),
            )
        };
        assert!(check(&ours.cert_der).is_ok());
        let e = check(&theirs.cert_der).unwrap_err().to_string();
        assert!(
            e.contains(&colon_hex(&pin)) && e.ends_with("ask the admin"),
            "{e}"
        );
    }
}
