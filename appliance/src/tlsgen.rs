//! Self-signed certificates for the appliance's own TLS listeners (the API, dnsd's DoT and
//! DoH): made once on the box, for its names and addresses, and kept as a PEM pair in a
//! directory of mode 0700, so that clients which pinned the certificate keep trusting it.
//!
//! Each caller keeps its own file names, modes and error type; what they share is making
//! the pair and writing it: the key first, each file through a temp file, an fsync and a
//! rename, then an fsync of the directory. A crash between the two files leaves a half
//! pair, which callers report, never a certificate whose key is lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

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
}
