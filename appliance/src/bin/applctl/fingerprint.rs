//! `applctl fingerprint`: the SHA-256 fingerprint of the API's certificate, to compare with
//! what a browser or `curl --pinnedpubkey` shows before trusting the self-signed
//! certificate.

use std::path::Path;

use appliance::api::tls;

use super::CliError;

pub fn run(dir: &Path) -> Result<(), CliError> {
    let fp = tls::fingerprint(dir).map_err(|e| match e {
        tls::TlsError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            CliError::Failed(format!(
                "{} does not exist: applianced makes the certificate on its first start",
                path.display()
            ))
        }
        other => CliError::Failed(other.to_string()),
    })?;
    println!("SHA-256 {fp}");
    Ok(())
}

/// A fingerprint as typed (`AB:CD:…`, `abcd…`, with or without a `SHA256:` prefix) in the
/// form the API's certificate is shown in; `None` when it is not 32 bytes of hex.
pub fn normalize(input: &str) -> Option<String> {
    let s = input.trim();
    let s = ["SHA256:", "SHA-256:", "sha256:", "sha-256:"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s)
        .trim();
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex).ok()?;
    (bytes.len() == 32).then(|| {
        bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// Trusts exactly the certificate whose SHA-256 is pinned: the API's certificate is
/// self-signed, so no CA can vouch for it, and its fingerprint (shown on the console and
/// by `applctl fingerprint`) is what the admin checked. The handshake signature is still
/// verified, so only the holder of that certificate's key passes.
#[derive(Debug)]
pub struct Pinned {
    pub fingerprint: String,
    pub provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = tls::fingerprint_der(end_entity);
        if got == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has the fingerprint {got}, not the pinned {}; \
                 compare with `applctl fingerprint` on the appliance (someone may be in between)",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_accepted_as_typed() {
        let colons = "CE:64:E3:57:32:AA:E0:16:13:81:3F:3D:89:99:B8:CB:7C:08:35:3B:57:10:4D:4F:CB:91:3D:D6:CC:DC:37:C5";
        assert_eq!(normalize(colons).as_deref(), Some(colons));
        let bare = colons.replace(':', "").to_lowercase();
        assert_eq!(normalize(&bare).as_deref(), Some(colons));
        assert_eq!(
            normalize(&format!("SHA256:{bare}")).as_deref(),
            Some(colons)
        );
        assert_eq!(normalize("CE:64"), None);
        assert_eq!(normalize("not hex"), None);
    }
}
