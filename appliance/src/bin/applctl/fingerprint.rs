//! `applctl fingerprint`: the SHA-256 fingerprint of the API's certificate, to compare with
//! what a browser or `curl --pinnedpubkey` shows before trusting the self-signed
//! certificate.

use std::path::Path;
use std::sync::Arc;

use appliance::api::tls;
use appliance::tlsgen;

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

/// The verifier for `--fingerprint`: trusts only the API certificate with that SHA-256.
pub fn pinned(
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> tlsgen::PinnedServerCert {
    tlsgen::PinnedServerCert::new(
        sha256,
        provider,
        "compare with `applctl fingerprint` on the appliance",
    )
}
