//! ed25519 signing keys for bundles (ring), their files, and the keyring a device trusts.
//!
//! Key rotation uses a keyring with a threshold rather than endorsement chains: the keyring
//! ships in the root image, so a release signed by the current keys can carry a keyring
//! that adds the next key, and a later release signed by the new key can drop the old one.
//! A threshold above 1 means one stolen key cannot sign an update on its own.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest as _, Sha256};

const SECRET_HEADER: &str = "appliance-bundle-secret-key-v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a bundle secret key (expected `{SECRET_HEADER}` and a base64 line, as `appliance-image keygen` writes)"
    )]
    BadSecret { path: String },
    #[error("{path} line {line}: `{text}` is not a base64 ed25519 public key (32 bytes)")]
    BadPublic {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{path} line {line}: bad threshold `{text}`: expected `threshold N` with N ≥ 1")]
    BadThreshold {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{path}: threshold {threshold} is more than the {keys} key(s) in the keyring")]
    ThresholdTooHigh {
        path: String,
        threshold: usize,
        keys: usize,
    },
    #[error("{0} exists; refusing to overwrite a key")]
    Exists(String),
    #[error("the system random generator failed")]
    Random,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn parse(text: &str) -> Option<PublicKey> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        Some(PublicKey(bytes.try_into().ok()?))
    }

    /// A short name for logs and reports: the first 8 bytes of the key's SHA-256.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.0).get(..8).unwrap_or_default())
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// A signing key. Its Debug output never shows the secret.
pub struct SecretKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    /// A new key and its PKCS#8 document (what the secret key file holds).
    pub fn generate() -> Result<(SecretKey, Vec<u8>), KeyError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| KeyError::Random)?;
        Ok((SecretKey { pair }, doc.as_ref().to_vec()))
    }

    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let bad = || KeyError::BadSecret {
            path: path.display().to_string(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(SECRET_HEADER) {
            return Err(bad());
        }
        let doc = STANDARD
            .decode(lines.next().ok_or_else(bad)?.trim())
            .map_err(|_| bad())?;
        let pair = Ed25519KeyPair::from_pkcs8(&doc).map_err(|_| bad())?;
        Ok(SecretKey { pair })
    }
}

/// Writes a new key pair as `<dir>/<name>.key` (mode 0600) and `<dir>/<name>.pub`; refuses
/// to overwrite either.
pub fn keygen(dir: &Path, name: &str) -> Result<PublicKey, KeyError> {
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists(p.display().to_string()));
        }
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (key, doc) = SecretKey::generate()?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .map_err(io(&secret_path))?;
    writeln!(f, "{SECRET_HEADER}\n{}", STANDARD.encode(&doc)).map_err(io(&secret_path))?;
    f.sync_all().map_err(io(&secret_path))?;
    let public = key.public();
    fs::write(&public_path, format!("{public} {name}\n")).map_err(io(&public_path))?;
    Ok(public)
}

/// Loads a public key file (`<base64> [comment]`, as keygen writes).
pub fn load_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let first = text.split_whitespace().next().unwrap_or_default();
    PublicKey::parse(first).ok_or_else(|| KeyError::BadPublic {
        path: path.display().to_string(),
        line: 1,
        text: first.to_owned(),
    })
}

/// The keys a device accepts and how many of them must sign a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    pub threshold: usize,
    pub keys: Vec<PublicKey>,
}

impl Keyring {
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Keyring {
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        Keyring {
            threshold: threshold.max(1),
            keys,
        }
    }

    /// Parses a keyring file: `#` comments, an optional `threshold N` line (default 1), and
    /// one `<base64 key> [name]` per line.
    pub fn parse(path: &str, text: &str) -> Result<Keyring, KeyError> {
        let mut threshold = 1;
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            if first == "threshold" {
                threshold = words
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1 && words.next().is_none())
                    .ok_or_else(|| KeyError::BadThreshold {
                        path: path.to_owned(),
                        line: i + 1,
                        text: line.to_owned(),
                    })?;
                continue;
            }
            keys.push(PublicKey::parse(first).ok_or_else(|| KeyError::BadPublic {
                path: path.to_owned(),
                line: i + 1,
                text: first.to_owned(),
            })?);
        }
        let ring = Keyring::new(keys, threshold);
        if ring.threshold > ring.keys.len() {
            return Err(KeyError::ThresholdTooHigh {
                path: path.to_owned(),
                threshold: ring.threshold,
                keys: ring.keys.len(),
            });
        }
        Ok(ring)
    }

    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        Keyring::parse(&path.display().to_string(), &text)
    }

    /// Adds keys (from the config's `update.trusted_keys`) without changing the threshold.
    pub fn with(mut self, extra: impl IntoIterator<Item = PublicKey>) -> Keyring {
        self.keys.extend(extra);
        Keyring::new(self.keys, self.threshold)
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.binary_search(key).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_secret_and_a_loadable_pair() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let public = keygen(dir.path(), "release").unwrap();
        let secret = dir.path().join("release.key");
        assert_eq!(
            fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = SecretKey::load(&secret).unwrap();
        assert_eq!(key.public(), public);
        assert_eq!(
            load_public(&dir.path().join("release.pub")).unwrap(),
            public
        );
        let sig = key.sign(b"manifest");
        assert!(public.verify(b"manifest", &sig));
        assert!(!public.verify(b"manifesto", &sig));
        assert!(matches!(
            keygen(dir.path(), "release"),
            Err(KeyError::Exists(_))
        ));
        let secret_line = fs::read_to_string(&secret).unwrap();
        let secret_b64 = secret_line.lines().nth(1).unwrap();
        assert!(!format!("{key:?}").contains(&secret_b64[..16]));
    }

    #[test]
    fn keyring_parses_threshold_and_names_bad_lines() {
        let (a, _) = SecretKey::generate().unwrap();
        let (b, _) = SecretKey::generate().unwrap();
        let text = format!(
            "# release keys\nthreshold 2\n{} old\n{} new # rotated in 1.3\n",
            a.public(),
            b.public()
        );
        let ring = Keyring::parse("keys", &text).unwrap();
        assert_eq!(ring.threshold, 2);
        assert!(ring.contains(&a.public()) && ring.contains(&b.public()));

        let err = Keyring::parse("keys", "threshold 3\nAAAA\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Keyring::parse("keys", &format!("threshold 2\n{}\n", a.public())).unwrap_err();
        assert!(matches!(err, KeyError::ThresholdTooHigh { .. }), "{err}");
        let err = Keyring::parse("keys", "threshold zero\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
