//! TOTP (RFC 6238) as authenticator apps do it: HMAC-SHA-1, 30-second steps, 6 digits;
//! a code from the step before or after is accepted too, for clocks that drift.
//!
//! The secret file holds the base32 secret that the app was given (spaces and lower case
//! allowed, `=` padding optional), mode 0600.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac as _};
use sha1::Sha1;

/// Length of a step, in seconds.
pub const STEP: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;

/// Why a TOTP secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the TOTP secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TOTP secret file {path} is readable by group or others; run chmod 600 {path}")]
    Mode { path: PathBuf },
    #[error(
        "the TOTP secret file {path} does not hold a base32 secret of at least 80 bits (A-Z, 2-7)"
    )]
    Format { path: PathBuf },
}

/// A shared TOTP secret. Its Debug output hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl Secret {
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Parses the base32 text of an authenticator secret.
    pub fn from_base32(text: &str) -> Option<Self> {
        let bytes = base32_decode(text)?;
        // RFC 4226 asks for at least 128 bits and recommends 160; apps in use still hand
        // out 80-bit secrets, which is the floor here.
        (bytes.len() >= 10).then_some(Self(bytes))
    }

    /// Reads a secret file, refusing one that others may read.
    pub fn read_file(path: &Path) -> Result<Self, SecretError> {
        let read = |source| SecretError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(read)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecretError::Mode {
                path: path.to_owned(),
            });
        }
        let text = fs::read_to_string(path).map_err(read)?;
        Self::from_base32(&text).ok_or_else(|| SecretError::Format {
            path: path.to_owned(),
        })
    }

    /// The code of time step `counter` with `digits` digits (RFC 4226's HOTP).
    pub fn hotp(&self, counter: u64, digits: u32) -> u32 {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(&self.0) else {
            // HMAC takes keys of any length; this cannot happen.
            return u32::MAX;
        };
        mac.update(&counter.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest.get(19).copied().unwrap_or(0) & 0x0f);
        let word = digest
            .get(offset..offset + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes);
        (word & 0x7fff_ffff) % 10u32.pow(digits)
    }

    /// The code at unix time `now`.
    pub fn code_at(&self, now: u64, digits: u32) -> u32 {
        self.hotp(now / STEP, digits)
    }

    /// The time step whose code `code` is, within one step of `now`; None if none matches.
    /// Comparisons run over every candidate so the answer does not leak through timing.
    pub fn matching_step(&self, code: &str, now: u64) -> Option<u64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let given: u32 = code.parse().ok()?;
        let step = now / STEP;
        let mut found = None;
        for candidate in [step.saturating_sub(1), step, step + 1] {
            if self.hotp(candidate, DIGITS) == given && found.is_none() {
                found = Some(candidate);
            }
        }
        found
    }
}

/// RFC 4648 base32 without padding requirements; None on any other character.
fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u64, 0u32);
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let value = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column: the seed is the ASCII "12345678901234567890".
    #[test]
    fn rfc6238_test_vectors() {
        let secret = Secret::from_bytes(b"12345678901234567890".to_vec());
        for (time, code) in [
            (59, 94_287_082),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(secret.code_at(time, 8), code, "T={time}");
            assert_eq!(secret.code_at(time, 6), code % 1_000_000, "T={time}");
        }
    }

    #[test]
    fn base32_of_the_rfc_seed() {
        let s = Secret::from_base32("GEZDGNBV GY3TQOJQ gezdgnbvgy3tqojq").unwrap();
        assert_eq!(s, Secret::from_bytes(b"12345678901234567890".to_vec()));
        assert!(
            Secret::from_base32("GEZDGNBV1").is_none(),
            "1 is not base32"
        );
        assert!(Secret::from_base32("GEZDGNBV").is_none(), "too short");
    }

    #[test]
    fn one_step_of_drift_either_way_is_accepted() {
        let secret = Secret::from_bytes(b"12345678901234567890".to_vec());
        let now = 1_111_111_111;
        let step = now / STEP;
        for (drift, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let s = step.checked_add_signed(drift).unwrap();
            let code = format!("{:06}", secret.hotp(s, DIGITS));
            assert_eq!(
                secret.matching_step(&code, now),
                accepted.then_some(s),
                "drift {drift}"
            );
        }
        assert_eq!(secret.matching_step("12345", now), None);
        assert_eq!(secret.matching_step("abcdef", now), None);
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("totp");
        fs::write(&path, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Secret::read_file(&path),
            Err(SecretError::Mode { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Secret::read_file(&path).is_ok());
        assert!(!format!("{:?}", Secret::read_file(&path).unwrap()).contains("GEZ"));
    }
}
