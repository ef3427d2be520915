//! `receive_resume_token` decoding: where an interrupted receive stopped, so that the
//! sender can continue with `lzc_send_resume` instead of starting over.
//!
//! The token is `<version>-<checksum>-<packed length>-<payload>` with version 1, the
//! payload the hex of a zlib-compressed packed nvlist, and the checksum the first word of
//! its fletcher-4 (the sum of its little-endian 32-bit words), as libzfs writes and
//! reads it.

use super::lzc::{LzcError, NvList, NvValue};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(
        "resume token is corrupt: {0}; abort the partial receive (zfs receive -A) and send again"
    )]
    Corrupt(String),
    #[error("resume token version {0} is not supported (only 1)")]
    Version(u32),
}

/// The position and the stream a resumed send must continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    /// The snapshot being sent, full name on the sending side.
    pub toname: String,
    pub toguid: u64,
    /// GUID of the incremental source; `None` for a full stream.
    pub fromguid: Option<u64>,
    /// Where to continue: `lzc_send_resume`'s object and offset.
    pub object: u64,
    pub offset: u64,
    /// Bytes already received.
    pub bytes: u64,
    pub embed_ok: bool,
    pub large_block_ok: bool,
    pub compress_ok: bool,
    pub raw_ok: bool,
}

fn corrupt(why: impl Into<String>) -> TokenError {
    TokenError::Corrupt(why.into())
}

/// The first word of fletcher-4 over whole 32-bit little-endian words (trailing bytes do
/// not count, as in `fletcher_4_native_varsize`).
fn fletcher4_a(data: &[u8]) -> u64 {
    data.chunks_exact(4)
        .filter_map(|w| <[u8; 4]>::try_from(w).ok())
        .map(|w| u64::from(u32::from_le_bytes(w)))
        .fold(0u64, u64::wrapping_add)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub fn decode(token: &str) -> Result<ResumeToken, TokenError> {
    let mut parts = token.trim().splitn(4, '-');
    let mut next = |what: &str| {
        parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| corrupt(format!("no {what}")))
    };
    let version: u32 = next("version")?
        .parse()
        .map_err(|_| corrupt("the version is not a number"))?;
    if version != 1 {
        return Err(TokenError::Version(version));
    }
    let checksum = u64::from_str_radix(next("checksum")?, 16)
        .map_err(|_| corrupt("the checksum is not hex"))?;
    let packed_len =
        u64::from_str_radix(next("length")?, 16).map_err(|_| corrupt("the length is not hex"))?;
    let compressed =
        hex_decode(next("payload")?).ok_or_else(|| corrupt("the payload is not hex"))?;
    if fletcher4_a(&compressed) != checksum {
        return Err(corrupt("incorrect checksum"));
    }
    let limit = usize::try_from(packed_len).map_err(|_| corrupt("the length is too large"))?;
    let packed = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&compressed, limit)
        .map_err(|e| corrupt(format!("decompression failed ({:?})", e.status)))?;
    if packed.len() as u64 != packed_len {
        return Err(corrupt("the unpacked length differs from the header"));
    }
    let list = NvList::unpack(&packed).map_err(|e: LzcError| corrupt(e.to_string()))?;
    let pairs = list.pairs();
    let u64_of = |name: &str| {
        pairs.iter().find_map(|(n, v)| match v {
            NvValue::Uint64(x) if n == name => Some(*x),
            _ => None,
        })
    };
    let has = |name: &str| pairs.iter().any(|(n, _)| n == name);
    let need = |name: &str| u64_of(name).ok_or_else(|| corrupt(format!("no {name}")));
    let toname = pairs
        .iter()
        .find_map(|(n, v)| match v {
            NvValue::String(s) if n == "toname" => Some(s.clone()),
            _ => None,
        })
        .ok_or_else(|| corrupt("no toname"))?;
    Ok(ResumeToken {
        toname,
        toguid: need("toguid")?,
        fromguid: u64_of("fromguid"),
        object: need("object")?,
        offset: need("offset")?,
        bytes: u64_of("bytes").unwrap_or(0),
        embed_ok: has("embedok"),
        large_block_ok: has("largeblockok"),
        compress_ok: has("compressok"),
        raw_ok: has("rawok"),
    })
}

/// Builds a token the way the kernel does (`get_receive_resume_stats_impl`).
#[cfg(test)]
pub(crate) fn encode(list: &NvList) -> String {
    let packed = list.pack().unwrap();
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&packed, 6);
    let hex: String = compressed.iter().map(|b| format!("{b:02x}")).collect();
    format!("1-{:x}-{:x}-{hex}", fletcher4_a(&compressed), packed.len())
}

/// A kernel-shaped token of a receive of `toguid` from `fromguid`, for other modules' tests.
#[cfg(test)]
pub(crate) fn token_for_tests(fromguid: u64, toguid: u64) -> String {
    let mut l = NvList::new().unwrap();
    l.add_u64("fromguid", fromguid).unwrap();
    l.add_u64("object", 1).unwrap();
    l.add_u64("offset", 0).unwrap();
    l.add_u64("toguid", toguid).unwrap();
    l.add_string("toname", "tank/a@x").unwrap();
    encode(&l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NvList {
        let mut l = NvList::new().unwrap();
        l.add_u64("fromguid", 0x1111).unwrap();
        l.add_u64("object", 7).unwrap();
        l.add_u64("offset", 0x20000).unwrap();
        l.add_u64("bytes", 123_456).unwrap();
        l.add_u64("toguid", 0x2222).unwrap();
        l.add_string("toname", "tank/media@stored_hourly_2026-11-25T19:00:07Z")
            .unwrap();
        l.add_boolean("compressok").unwrap();
        l.add_boolean("largeblockok").unwrap();
        l
    }

    #[test]
    fn a_kernel_shaped_token_decodes() {
        let t = decode(&encode(&sample())).unwrap();
        assert_eq!(
            t,
            ResumeToken {
                toname: "tank/media@stored_hourly_2026-11-25T19:00:07Z".into(),
                toguid: 0x2222,
                fromguid: Some(0x1111),
                object: 7,
                offset: 0x20000,
                bytes: 123_456,
                embed_ok: false,
                large_block_ok: true,
                compress_ok: true,
                raw_ok: false,
            }
        );
    }

    #[test]
    fn damaged_tokens_are_refused_with_the_reason() {
        let good = encode(&sample());
        // Flip a bit in the payload's first (checksummed) word.
        let mut flipped = good.clone().into_bytes();
        let first = good.rfind('-').unwrap() + 2;
        flipped[first] = if flipped[first] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(decode(&flipped), Err(corrupt("incorrect checksum")));
        assert_eq!(
            decode(&good.replacen('1', "2", 1)),
            Err(TokenError::Version(2))
        );
        assert!(decode("1-0-0").is_err());
        assert!(decode("1-0-0-zz").is_err());
        assert!(decode("").is_err());
        let e = decode(&flipped).unwrap_err().to_string();
        assert!(e.contains("zfs receive -A"), "{e}");
    }

    #[test]
    fn checksum_is_the_word_sum() {
        assert_eq!(fletcher4_a(&[1, 0, 0, 0, 2, 0, 0, 0, 9]), 3);
    }
}
