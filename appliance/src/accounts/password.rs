//! argon2id password hashes in PHC form, as `api.users.<name>.password_hash` holds them.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Why no hash could be made.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password is empty; choose one of at least {MIN_LEN} characters")]
    Empty,
    #[error("the password is shorter than {MIN_LEN} characters; choose a longer one")]
    TooShort,
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error("argon2 refused to hash: {0}")]
    Argon2(String),
}

/// The shortest password `applctl passwd` hashes.
pub const MIN_LEN: usize = 8;

/// Hashes `password` with argon2id at the crate's default cost (19 MiB, 2 passes: OWASP's
/// recommendation) and a fresh 16-byte salt.
pub fn hash(password: &str) -> Result<String, HashError> {
    hash_with(password, Params::default())
}

/// Hashes with explicit argon2 parameters (tests use a cheap cost).
pub fn hash_with(password: &str, params: Params) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    if password.chars().count() < MIN_LEN {
        return Err(HashError::TooShort);
    }
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|e| HashError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Argon2(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon2(e.to_string()))
}

/// Whether `password` matches the PHC string `phc`. The cost comes from the string, so old
/// hashes keep working when the default changes. A malformed string matches nothing.
pub fn verify(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// A hash of nothing anybody knows, verified when the user does not exist so that a
/// login for an unknown name costs as much time as one with a wrong password.
pub(crate) const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ww6yuT9Q4jmA0ydkYsCyvEA+UkB5bmN3Oz7g52oYbIk";

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash_with("correct horse", cheap()).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{h}");
        assert!(
            crate::types::PasswordHash::parse(&h).is_ok(),
            "the config accepts it"
        );
        assert!(verify(&h, "correct horse"));
        assert!(!verify(&h, "correct horsE"));
        assert!(!verify("not a hash", "correct horse"));
        // Salted: the same password hashes differently.
        assert_ne!(h, hash_with("correct horse", cheap()).unwrap());
    }

    #[test]
    fn short_or_empty_passwords_are_refused() {
        assert!(matches!(hash_with("", cheap()), Err(HashError::Empty)));
        assert!(matches!(
            hash_with("1234567", cheap()),
            Err(HashError::TooShort)
        ));
    }

    #[test]
    fn argon2i_hashes_are_refused() {
        let h = Argon2::new(Algorithm::Argon2i, Version::V0x13, cheap())
            .hash_password(
                b"password1",
                &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(!verify(&h, "password1"));
    }

    #[test]
    fn the_dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
