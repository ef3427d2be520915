//! Mutual TLS for replication, pinned by certificate fingerprint on both sides: the
//! receiver accepts only client certificates whose SHA-256 is in its allow list, the
//! sender only the server certificate its job names. No CA is involved, so the boxes'
//! self-signed identities (`stored replication identity FILE`) are enough.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance::tlsgen;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// The name in the sender's TLS hello; certificates are pinned, so it is not checked.
pub const SERVER_NAME: &str = "stored-replication";

/// How long a peer may stay silent (no ACK for data sent, no answer to keepalive probes)
/// before the connection counts as dead: a sender that vanished without a FIN would
/// otherwise keep the receive open (no resume token written, the dataset busy), and a
/// receiver that vanished would keep the job "running", its snapshots kept from pruning.
pub const DEAD_PEER: std::time::Duration = std::time::Duration::from_secs(120);

/// Turns on TCP keepalive (first probe after 60 s idle, then every 10 s, 6 probes) and
/// TCP_USER_TIMEOUT so that a vanished peer ends the connection in about [`DEAD_PEER`].
pub fn detect_dead_peer(tcp: &std::net::TcpStream) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(tcp, sockopt::KeepAlive, &true)?;
    setsockopt(tcp, sockopt::TcpKeepIdle, &60)?;
    setsockopt(tcp, sockopt::TcpKeepInterval, &10)?;
    setsockopt(tcp, sockopt::TcpKeepCount, &6)?;
    let ms = u32::try_from(DEAD_PEER.as_millis()).unwrap_or(u32::MAX);
    setsockopt(tcp, sockopt::TcpUserTimeout, &ms)
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("identity file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "identity file {path} has no {what}; make one with `stored replication identity {path}`"
    )]
    Missing { path: PathBuf, what: &'static str },
    #[error("identity file {0} already exists; it is kept (delete it to make a new identity)")]
    Exists(PathBuf),
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("target_fingerprint {0:?} is not a SHA-256 fingerprint (sha256: and 64 hex digits)")]
    BadPin(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// `sha256:<hex>` of a DER certificate, as [`appliance::types::Fingerprint`] prints it.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// A key and its certificate, read from one PEM file.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let io_err = |source| TlsError::Io {
            path: path.to_owned(),
            source,
        };
        let pem = fs::read(path).map_err(io_err)?;
        let cert = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TlsError::Missing {
                path: path.to_owned(),
                what: "certificate",
            })?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        })?;
        Ok(Self { cert, key })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// Makes a new self-signed identity in `path` (mode 0600), never over an existing one.
    pub fn create(path: &Path) -> Result<Self, TlsError> {
        let io_err = |source| TlsError::Io {
            path: path.to_owned(),
            source,
        };
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let pem = format!(
            "{}{}",
            certified.signing_key.serialize_pem(),
            certified.cert.pem()
        );
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    TlsError::Exists(path.to_owned())
                } else {
                    io_err(e)
                }
            })?;
        f.write_all(pem.as_bytes()).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        // The file's name must survive a power cut too: a box that came back without it
        // would make a new identity, and every peer's pinned fingerprint would stop
        // matching.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
        }
        Self::load(path)
    }
}

/// ring's suites, TLS 1.3 only (both ends are stored), fastest first for this CPU: AES-GCM
/// where the CPU has AES and carry-less multiply instructions (AES-NI with PCLMULQDQ, or
/// ARMv8's AES with PMULL), ChaCha20-Poly1305 where it has not, since AES in software is
/// several times slower than ChaCha20 (and a guest on QEMU's default TCG CPU has no AES-NI).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites(aes_in_hardware());
    Arc::new(provider)
}

fn suites(aes_in_hardware: bool) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes_in_hardware {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("ssse3")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[derive(Debug)]
struct PinnedClients {
    allowed: Vec<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if self.allowed.contains(&got) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(fingerprint = %got, "replication client refused: its certificate is not in allowed_clients");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The sender's side: its identity as client certificate, the target pinned.
pub fn client_config(
    identity: Identity,
    target_fingerprint: &str,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let pin = tlsgen::parse_sha256(target_fingerprint)
        .ok_or_else(|| TlsError::BadPin(target_fingerprint.to_owned()))?;
    let verifier = Arc::new(tlsgen::PinnedServerCert::new(
        pin,
        Arc::clone(&provider),
        format!(
            "the job pins target_fingerprint = {target_fingerprint:?}; \
             `stored replication identity FILE` on the target prints its own"
        ),
    ));
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert], identity.key)?)
}

/// The receiver's side: its identity, clients pinned by `allowed` (`sha256:<hex>`).
pub fn server_config(
    identity: Identity,
    allowed: Vec<String>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedClients {
        allowed,
        algs: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert], identity.key)?;
    // The receiver's CPU picks the cipher (see `provider`): it decrypts every byte.
    config.ignore_client_order = true;
    Ok(config)
}

/// The receiver's side with the identity a running listener already serves (`resolver`,
/// its config's `cert_resolver`) and clients pinned by `allowed`: the allowed set follows
/// the config even when the identity file cannot be read again (removed together with the
/// listener, or damaged).
pub fn server_config_keeping_identity(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    allowed: Vec<String>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedClients {
        allowed,
        algs: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.ignore_client_order = true;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_connection_gives_up_on_a_silent_peer() {
        use nix::sys::socket::{getsockopt, sockopt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        detect_dead_peer(&tcp).unwrap();
        assert!(getsockopt(&tcp, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepIdle).unwrap(), 60);
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepCount).unwrap(), 6);
        assert_eq!(getsockopt(&tcp, sockopt::TcpUserTimeout).unwrap(), 120_000);
    }

    use std::net::{TcpListener, TcpStream};

    use super::super::proto::{self, Reply, Request};
    use super::*;

    /// One server connection: answers a Bye with Ok, or reports the handshake error.
    fn serve_once(listener: TcpListener, config: rustls::ServerConfig) -> Result<(), String> {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        let conn = rustls::ServerConnection::new(Arc::new(config)).map_err(|e| e.to_string())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let _: Request = proto::read_msg(&mut s).map_err(|e| e.to_string())?;
        proto::send_msg(&mut s, &Reply::ok()).map_err(|e| e.to_string())
    }

    fn exchange(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> (Result<(), String>, Result<(), String>) {
        let (c, s, _) = exchange_with_suite(server, client);
        (c, s)
    }

    /// [`exchange`], and the cipher suite the client ended up with.
    fn exchange_with_suite(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> (
        Result<(), String>,
        Result<(), String>,
        Option<rustls::CipherSuite>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || serve_once(listener, server));
        let tcp = TcpStream::connect(addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let client_result = proto::send_msg(&mut s, &Request::Bye)
            .and_then(|()| proto::read_msg::<Reply>(&mut s).map(|_| ()))
            .map_err(|e| e.to_string());
        let suite = s.conn.negotiated_cipher_suite().map(|c| c.suite());
        drop(s);
        (client_result, handle.join().unwrap(), suite)
    }

    /// The receiver's order wins, and it starts with the cipher this CPU runs fastest.
    #[test]
    fn the_cipher_is_the_fastest_for_this_cpu() {
        use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256};
        let dir = tempfile::tempdir().unwrap();
        let receiver = Identity::create(&dir.path().join("receiver.pem")).unwrap();
        let sender = Identity::create(&dir.path().join("sender.pem")).unwrap();
        let (rfp, sfp) = (receiver.fingerprint(), sender.fingerprint());
        // A sender that prefers the other cipher still gets the receiver's first choice.
        let contrary = Arc::new(CryptoProvider {
            cipher_suites: suites(!aes_in_hardware()),
            ..rustls::crypto::ring::default_provider()
        });
        let pin = tlsgen::parse_sha256(&rfp).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&contrary))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tlsgen::PinnedServerCert::new(
                pin, contrary, "",
            )))
            .with_client_auth_cert(vec![sender.cert], sender.key)
            .unwrap();
        let (c, s, suite) =
            exchange_with_suite(server_config(receiver, vec![sfp]).unwrap(), client);
        assert_eq!((c, s), (Ok(()), Ok(())));
        let want = if aes_in_hardware() {
            TLS13_AES_128_GCM_SHA256
        } else {
            TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(suite, Some(want));
        assert_eq!(suites(true)[0].suite(), TLS13_AES_128_GCM_SHA256);
        assert_eq!(suites(false)[0].suite(), TLS13_CHACHA20_POLY1305_SHA256);
    }

    #[test]
    fn both_sides_are_pinned_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Identity::create(&dir.path().join("receiver.pem")).unwrap();
        let sender = Identity::create(&dir.path().join("sender.pem")).unwrap();
        let stranger = Identity::create(&dir.path().join("stranger.pem")).unwrap();
        let (rfp, sfp) = (receiver.fingerprint(), sender.fingerprint());
        assert!(rfp.starts_with("sha256:") && rfp.len() == 71);
        assert!(appliance::types::Fingerprint::parse(&rfp).is_ok());
        let load = |n: &str| Identity::load(&dir.path().join(n)).unwrap();
        let mode = std::fs::metadata(dir.path().join("sender.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Both pinned right: the request goes through.
        let (c, s) = exchange(
            server_config(load("receiver.pem"), vec![sfp.clone()]).unwrap(),
            client_config(load("sender.pem"), &rfp).unwrap(),
        );
        assert_eq!((c, s), (Ok(()), Ok(())));

        // The sender pins another certificate: it refuses the receiver.
        let (c, _) = exchange(
            server_config(load("receiver.pem"), vec![sfp.clone()]).unwrap(),
            client_config(load("sender.pem"), &stranger.fingerprint()).unwrap(),
        );
        assert!(c.is_err());

        // A client the receiver does not list is refused by the receiver.
        let (c, s) = exchange(
            server_config(load("receiver.pem"), vec![sfp]).unwrap(),
            client_config(load("stranger.pem"), &rfp).unwrap(),
        );
        assert!(c.is_err());
        assert!(s.is_err());

        // An identity is never overwritten.
        assert!(matches!(
            Identity::create(&dir.path().join("sender.pem")),
            Err(TlsError::Exists(_))
        ));
        let _ = sender;
    }
}
