//! Keys and references to secrets. A secret itself never appears in appliance.toml: only
//! a path to a file under /data (mode 0600), a public key, or a password hash.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::{ValueError, string_newtype};

/// The directory that holds every secret file.
pub const SECRETS_ROOT: &str = "/data/";

/// A path to a file under /data that holds a secret (private key, preshared key, password).
/// The daemon that reads it refuses a file that is group- or world-readable.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretPath(String);

impl SecretPath {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "secrets live in files under /data with mode 0600, like /data/secrets/wg0.key";
        if !s.starts_with(SECRETS_ROOT) || s.len() <= SECRETS_ROOT.len() {
            return Err(ValueError::new(
                format!("secret file {s:?} is not under /data"),
                HINT,
            ));
        }
        if s.split('/').any(|c| c == ".." || c == ".") || s.ends_with('/') || s.contains("//") {
            return Err(ValueError::new(
                format!("secret file {s:?} is not a plain path"),
                HINT,
            ));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(ValueError::new(
                format!("secret file {s:?} contains a control character"),
                HINT,
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    SecretPath,
    "path of a secret file under /data (mode 0600)",
    Some("^/data/.+")
);

/// A WireGuard (Curve25519) or ed25519 public key: base64 of exactly 32 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key32([u8; 32]);

/// A WireGuard public key.
pub type WgKey = Key32;

impl Key32 {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "a key is 44 characters of base64 encoding 32 bytes, as `wg pubkey` prints";
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| ValueError::new(format!("key {s:?} is not base64"), HINT))?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            ValueError::new(format!("key {s:?} is {} bytes, not 32", bytes.len()), HINT)
        })?;
        Ok(Self(arr))
    }
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
impl fmt::Display for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}
string_newtype!(
    Key32,
    "public key: base64 of 32 bytes",
    Some("^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
);

/// An argon2id password hash in PHC format, as `applctl passwd` or `argon2 -id -e` print:
/// `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "store an argon2id hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash), never a plain password";
        let parts: Vec<&str> = s.split('$').collect();
        let ok = matches!(parts.as_slice(), ["", "argon2id", v, params, salt, hash]
            if v.starts_with("v=")
            && params.split(',').all(|p| p.split_once('=').is_some_and(|(k, n)| matches!(k, "m" | "t" | "p") && n.parse::<u32>().is_ok()))
            && is_b64(salt) && salt.len() >= 11 && is_b64(hash) && hash.len() >= 22);
        if !ok {
            return Err(ValueError::new(
                "password_hash is not an argon2id PHC string",
                HINT,
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
fn is_b64(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}
impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    PasswordHash,
    "argon2id password hash in PHC format",
    Some("^\\$argon2id\\$")
);

/// An OpenSSH public key line: `ssh-ed25519 AAAA... comment`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SshPublicKey(String);

impl SshPublicKey {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "paste a public key line as in authorized_keys: ssh-ed25519 AAAA... user@host";
        const TYPES: [&str; 6] = [
            "ssh-ed25519",
            "ssh-rsa",
            "ecdsa-sha2-nistp256",
            "ecdsa-sha2-nistp384",
            "ecdsa-sha2-nistp521",
            "sk-ssh-ed25519@openssh.com",
        ];
        if s.contains("PRIVATE KEY") {
            return Err(ValueError::new("this is a private key", HINT));
        }
        let mut it = s.split_whitespace();
        let (Some(kind), Some(blob)) = (it.next(), it.next()) else {
            return Err(ValueError::new("not an SSH public key line", HINT));
        };
        if !TYPES.contains(&kind) {
            return Err(ValueError::new(
                format!("unknown SSH key type {kind:?}"),
                HINT,
            ));
        }
        let raw = STANDARD
            .decode(blob)
            .map_err(|_| ValueError::new("the key body is not base64", HINT))?;
        // The blob starts with the key type as an SSH string; a mismatch means a pasting error.
        let inner_len = raw
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_be_bytes(b) as usize);
        let inner = inner_len.and_then(|n| raw.get(4..4 + n));
        if inner != Some(kind.as_bytes()) {
            return Err(ValueError::new(
                format!("the key body does not hold a {kind} key"),
                HINT,
            ));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(ValueError::new(
                "the key line contains a control character",
                HINT,
            ));
        }
        Ok(Self(s.trim().to_owned()))
    }
}
impl fmt::Display for SshPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    SshPublicKey,
    "OpenSSH public key line",
    Some("^(ssh-|ecdsa-|sk-)")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths() {
        assert!(SecretPath::parse("/data/secrets/wg0.key").is_ok());
        assert!(SecretPath::parse("/etc/shadow").is_err());
        assert!(SecretPath::parse("/data/../etc/shadow").is_err());
        assert!(SecretPath::parse("/data/").is_err());
    }

    #[test]
    fn wg_keys() {
        let k = STANDARD.encode([7u8; 32]);
        assert_eq!(WgKey::parse(&k).map(|k| k.to_string()), Ok(k));
        assert!(WgKey::parse(&STANDARD.encode([7u8; 31])).is_err());
        assert!(WgKey::parse("not base64!").is_err());
    }

    #[test]
    fn password_hashes() {
        let good = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$K1cz2nSx9J3m3F9y4mZB3X3w8n2Qm9t2u1m8Zp0aQxE";
        assert!(PasswordHash::parse(good).is_ok());
        assert!(PasswordHash::parse("hunter2").is_err());
        assert!(PasswordHash::parse("$2b$12$abcdefghijklmnopqrstuv").is_err());
    }

    #[test]
    fn ssh_keys() {
        let mut blob = Vec::new();
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[1u8; 32]);
        let line = format!("ssh-ed25519 {} admin@laptop", STANDARD.encode(&blob));
        assert!(SshPublicKey::parse(&line).is_ok());
        let wrong = format!("ssh-rsa {} admin@laptop", STANDARD.encode(&blob));
        assert!(SshPublicKey::parse(&wrong).is_err());
        assert!(SshPublicKey::parse("-----BEGIN OPENSSH PRIVATE KEY-----").is_err());
    }
}

/// An absolute path to a file on the appliance, such as a local block list.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(String);
impl AbsPath {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write an absolute path, like /data/dns/local.txt";
        if !s.starts_with('/')
            || s.split('/').any(|c| c == "..")
            || s.chars().any(|c| c.is_control())
        {
            return Err(ValueError::new(
                format!("{s:?} is not an absolute plain path"),
                HINT,
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(AbsPath, "absolute path", Some("^/"));

/// A disk for a ZFS vdev, named by its stable link under /dev/disk/by-id, so that a pool
/// survives disks being enumerated in another order. Only by-id: stored imports pools by
/// scanning /dev/disk/by-id (`zpool import -d`) and compares the declared disks with the
/// names zpool shows from there, so a by-path, by-partuuid or by-uuid name would be another
/// disk after the first reboot (by-uuid even names the pool, the same on every member).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskPath(String);
impl DiskPath {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "name disks by their link under /dev/disk/by-id, such as /dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567 (ls -l /dev/disk/by-id shows the link of each /dev/sdX); by-path, by-partuuid and by-uuid names are not kept across the import at boot";
        let ok = s
            .strip_prefix("/dev/disk/by-id/")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
        if !ok {
            return Err(ValueError::new(
                format!("disk {s:?} is not a /dev/disk/by-id path"),
                HINT,
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for DiskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    DiskPath,
    "stable disk path under /dev/disk/by-id",
    Some("^/dev/disk/by-id/[^/]+$")
);

/// A SHA-256 certificate fingerprint, 64 hex digits (colons allowed), as
/// `applctl api fingerprint` prints it; or an SSH key's, `SHA256:` and 43 base64 digits, as
/// `ssh-keygen -l` prints it (the same 32 bytes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);
impl Fingerprint {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "a SHA-256 fingerprint is 64 hex digits, colons allowed, or \
                            SHA256: and 43 base64 digits as ssh-keygen -l prints it";
        if let Some(b64) = s.strip_prefix("SHA256:")
            && b64.len() == 43
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64)
            && let Ok(out) = <[u8; 32]>::try_from(bytes)
        {
            return Ok(Self(out));
        }
        let hexs: String = s
            .strip_prefix("sha256:")
            .unwrap_or(s)
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hexs, &mut out)
            .map_err(|_| ValueError::new(format!("{s:?} is not a SHA-256 fingerprint"), HINT))?;
        Ok(Self(out))
    }
}
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}
string_newtype!(Fingerprint, "SHA-256 fingerprint", None);
