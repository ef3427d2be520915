//! GRUB's environment block: the file `load_env`/`save_env` read and write in place, so it
//! must be exactly 1024 bytes and never change size.

use std::collections::BTreeMap;

pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("grubenv variable `{0}` is not a plain name")]
    BadName(String),
    #[error("grubenv value of `{name}` has characters GRUB would escape: {value:?}")]
    BadValue { name: String, value: String },
    #[error("grubenv entries take {0} bytes, more than the {SIZE}-byte block")]
    TooLong(usize),
    #[error("not a GRUB environment block (size {0} or missing header)")]
    NotAnEnvBlock(usize),
}

/// Encodes variables as a block. Values are restricted to characters GRUB stores verbatim
/// (it escapes backslash and newline), which is all the slot state needs.
pub fn encode(vars: &BTreeMap<String, String>) -> Result<Vec<u8>, EnvError> {
    encode_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Encodes variables in the order given (the boot state puts its sequence number first and
/// its end marker last, so a torn write shows as a mismatch).
pub fn encode_pairs<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<u8>, EnvError> {
    let mut out = String::from(HEADER);
    for (name, value) in vars {
        let name_ok =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(EnvError::BadName(name.to_owned()));
        }
        if value
            .bytes()
            .any(|b| b == b'\\' || b == b'\n' || !(0x20..0x7f).contains(&b))
        {
            return Err(EnvError::BadValue {
                name: name.to_owned(),
                value: value.to_owned(),
            });
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    if out.len() > SIZE {
        return Err(EnvError::TooLong(out.len()));
    }
    let mut bytes = out.into_bytes();
    bytes.resize(SIZE, b'#');
    Ok(bytes)
}

/// Decodes a block written by [`encode`] or by GRUB.
pub fn decode(block: &[u8]) -> Result<BTreeMap<String, String>, EnvError> {
    let Some(body) = block.strip_prefix(HEADER.as_bytes()) else {
        return Err(EnvError::NotAnEnvBlock(block.len()));
    };
    if block.len() != SIZE {
        return Err(EnvError::NotAnEnvBlock(block.len()));
    }
    let text = String::from_utf8_lossy(body);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn round_trip_at_exactly_1024_bytes() {
        let v = vars(&[("ORDER", "A B"), ("A_OK", "1"), ("B_TRIES", "")]);
        let block = encode(&v).unwrap();
        assert_eq!(block.len(), SIZE);
        assert!(block.starts_with(b"# GRUB Environment Block\nA_OK=1\nB_TRIES=\nORDER=A B\n#"));
        assert_eq!(decode(&block).unwrap(), v);
    }

    #[test]
    fn refuses_what_grub_would_escape_or_overflow() {
        assert!(matches!(
            encode(&vars(&[("A", "x\\y")])),
            Err(EnvError::BadValue { .. })
        ));
        assert!(matches!(
            encode(&vars(&[("A B", "1")])),
            Err(EnvError::BadName(_))
        ));
        let long = "x".repeat(SIZE);
        assert!(matches!(
            encode(&vars(&[("A", &long)])),
            Err(EnvError::TooLong(_))
        ));
        assert!(decode(b"# GRUB Environment Block\n").is_err());
    }
}
