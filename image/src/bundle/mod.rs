//! The OTA bundle: a signed manifest followed by the slot payload (the root squashfs, which
//! holds the kernel and initrd GRUB boots).
//!
//! ```text
//! "APPLBUN1"  u32 LE header length  header (JSON)  payload (manifest.payload.size bytes)
//! header = {"manifest": "<manifest JSON, the exact signed bytes>",
//!           "signatures": [{"key": "<base64>", "signature": "<base64>"}]}
//! ```
//!
//! The manifest travels as a string so the signed bytes are the bytes on disk: nothing is
//! re-serialized before verification. A device reads the header, checks signatures, then
//! compatibility, expiry and versions, and only then streams the payload, checking each chunk
//! against its hash before handing it on to be written.

pub mod cli;
pub mod keys;
pub mod version;

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use keys::{Keyring, PublicKey, SecretKey};
pub use version::Version;

pub const MAGIC: &[u8; 8] = b"APPLBUN1";
/// The manifest format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Chunk size of new bundles: small enough that a resumed download loses little, large
/// enough that the hash list of a 1 GiB slot stays at 64 KiB.
pub const CHUNK_SIZE: u64 = 1 << 20;
/// A header larger than this is not ours (a 1 GiB payload needs about 70 KiB).
const MAX_HEADER: u32 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// What hardware and layout the payload is for; must equal the device's.
    pub compatible: String,
    pub version: Version,
    /// The anti-rollback level: a device refuses bundles below the highest level it has
    /// committed, unless `allow_downgrade` is set.
    pub security_version: u64,
    /// The oldest installed version this bundle may update (migrations start there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; a device refuses the bundle after this.
    pub expires: u64,
    /// The signed exception to anti-rollback: a bundle re-signed with this set may go below
    /// the installed version and security floor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub size: u64,
    pub sha256: String,
    pub chunk_size: u64,
    /// SHA-256 of each chunk, in order; the last may be short.
    pub chunks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub manifest: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] io::Error),
    #[error("not an appliance bundle (no `APPLBUN1` magic)")]
    NotABundle,
    #[error("the bundle header is {0} bytes, more than a bundle has: a damaged or foreign file")]
    HeaderTooLarge(u32),
    #[error("the bundle header is damaged: {0}")]
    BadHeader(String),
    #[error("no signature by a trusted key (signed by: {signers}); trusted: {trusted}")]
    Untrusted { signers: String, trusted: String },
    #[error("signed by {have} trusted key(s); this device requires {need}")]
    NotEnoughSignatures { have: usize, need: usize },
    #[error("the signed manifest is not valid: {0}")]
    BadManifest(String),
    #[error(
        "manifest format {0} is newer than this device understands ({FORMAT}): install an intermediate release first"
    )]
    UnsupportedFormat(u32),
    #[error("the bundle is for `{bundle}`, this device is `{device}`")]
    Incompatible { bundle: String, device: String },
    #[error(
        "the bundle expired at {expires} (unix time), now is {now}: ask for a freshly signed bundle, or check the device clock"
    )]
    Expired { expires: u64, now: u64 },
    #[error(
        "version {bundle} is older than the installed {installed}: a downgrade needs a bundle signed with allow_downgrade"
    )]
    Downgrade { bundle: Version, installed: Version },
    #[error(
        "security version {bundle} is below this device's floor {floor}: a downgrade needs a bundle signed with allow_downgrade"
    )]
    BelowFloor { bundle: u64, floor: u64 },
    #[error(
        "the installed version {installed} is older than {min}, the oldest this bundle updates: install {min} first"
    )]
    TooOld { installed: Version, min: Version },
    #[error("the payload ends in chunk {chunk} of {chunks}: the bundle is truncated")]
    Truncated { chunk: usize, chunks: usize },
    #[error(
        "payload chunk {chunk} does not match its signed hash: the bundle is damaged or tampered with"
    )]
    ChunkMismatch { chunk: usize },
    #[error("the payload is longer than the signed size: the bundle is damaged or tampered with")]
    TrailingData,
}

/// What a device checks a bundle against.
#[derive(Debug, Clone)]
pub struct Policy {
    pub keyring: Keyring,
    pub compatible: String,
    pub installed: Version,
    pub security_floor: u64,
    /// Unix seconds.
    pub now: u64,
}

/// Reads the magic and header, leaving `r` at the first payload byte.
pub fn read_header(r: &mut impl Read) -> Result<Header, BundleError> {
    read_header_with_len(r).map(|(h, _)| h)
}

/// [`read_header`], and the payload's offset in the bundle (where a resumed download of
/// chunk `k` starts: offset + k × chunk size).
pub fn read_header_with_len(r: &mut impl Read) -> Result<(Header, u64), BundleError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::NotABundle,
        _ => BundleError::Io(e),
    })?;
    if &magic != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(BundleError::HeaderTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)
        .map_err(|e| BundleError::BadHeader(format!("truncated header: {e}")))?;
    let header = serde_json::from_slice(&buf).map_err(|e| BundleError::BadHeader(e.to_string()))?;
    Ok((header, 12 + u64::from(len)))
}

fn write_header(w: &mut impl Write, header: &Header) -> Result<(), BundleError> {
    let json = serde_json::to_vec(header).map_err(|e| BundleError::BadHeader(e.to_string()))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_HEADER)
        .ok_or(BundleError::HeaderTooLarge(u32::MAX))?;
    w.write_all(MAGIC)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&json)?;
    Ok(())
}

impl Header {
    /// The manifest without checking anything: for `inspect`, never for installing.
    pub fn unverified_manifest(&self) -> Result<Manifest, BundleError> {
        parse_manifest(&self.manifest)
    }

    /// The keys whose signatures over the manifest are valid, trusted or not.
    pub fn valid_signers(&self) -> Vec<PublicKey> {
        let mut out: Vec<PublicKey> = self
            .signatures
            .iter()
            .filter_map(|s| {
                let key = PublicKey::parse(&s.key)?;
                let sig = STANDARD.decode(&s.signature).ok()?;
                key.verify(self.manifest.as_bytes(), &sig).then_some(key)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Checks signatures, then the manifest against the device; returns the manifest only
    /// when the bundle may be installed.
    pub fn verify(&self, policy: &Policy) -> Result<Manifest, BundleError> {
        let signers = self.valid_signers();
        let trusted = signers
            .iter()
            .filter(|k| policy.keyring.contains(k))
            .count();
        if trusted == 0 {
            let names = |keys: &[PublicKey]| {
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.iter()
                        .map(PublicKey::id)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            return Err(BundleError::Untrusted {
                signers: names(&signers),
                trusted: names(&policy.keyring.keys),
            });
        }
        if trusted < policy.keyring.threshold {
            return Err(BundleError::NotEnoughSignatures {
                have: trusted,
                need: policy.keyring.threshold,
            });
        }
        let m = parse_manifest(&self.manifest)?;
        if m.compatible != policy.compatible {
            return Err(BundleError::Incompatible {
                bundle: m.compatible,
                device: policy.compatible.clone(),
            });
        }
        if policy.now > m.expires {
            return Err(BundleError::Expired {
                expires: m.expires,
                now: policy.now,
            });
        }
        if let Some(min) = m.min_version
            && policy.installed < min
        {
            return Err(BundleError::TooOld {
                installed: policy.installed,
                min,
            });
        }
        if !m.allow_downgrade {
            if m.version < policy.installed {
                return Err(BundleError::Downgrade {
                    bundle: m.version,
                    installed: policy.installed,
                });
            }
            if m.security_version < policy.security_floor {
                return Err(BundleError::BelowFloor {
                    bundle: m.security_version,
                    floor: policy.security_floor,
                });
            }
        }
        Ok(m)
    }
}

fn parse_manifest(text: &str) -> Result<Manifest, BundleError> {
    // The format is read first so that a newer manifest says "too new", not "unknown field".
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let f: Format =
        serde_json::from_str(text).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    if f.format != FORMAT {
        return Err(BundleError::UnsupportedFormat(f.format));
    }
    let m: Manifest =
        serde_json::from_str(text).map_err(|e| BundleError::BadManifest(e.to_string()))?;
    let expected = m.payload.size.div_ceil(m.payload.chunk_size.max(1));
    if m.payload.chunk_size == 0 || m.payload.chunks.len() as u64 != expected {
        return Err(BundleError::BadManifest(format!(
            "{} chunk hashes for {} bytes in chunks of {}",
            m.payload.chunks.len(),
            m.payload.size,
            m.payload.chunk_size
        )));
    }
    Ok(m)
}

/// Streams a payload, yielding each chunk only after its hash matched the manifest. The
/// signed chunk list covers every byte, so the whole-payload hash (kept in the manifest
/// for people and tools) is not computed again: that would double the hashing.
#[derive(Debug)]
pub struct PayloadReader<'m, R> {
    inner: R,
    manifest: &'m Manifest,
    next: usize,
    buf: Vec<u8>,
}

impl<'m, R: Read> PayloadReader<'m, R> {
    /// `inner` must be positioned at the first payload byte (after [`read_header`]).
    pub fn new(inner: R, manifest: &'m Manifest) -> Self {
        Self::resume(inner, manifest, 0)
    }

    /// Continues at chunk `first` (a resumed download); `inner` is at that chunk's start.
    pub fn resume(inner: R, manifest: &'m Manifest, first: usize) -> Self {
        PayloadReader {
            inner,
            manifest,
            next: first,
            buf: Vec::new(),
        }
    }

    /// The next verified chunk with its index, or `None` after the last one (when the
    /// payload also ended where the manifest says).
    pub fn next_chunk(&mut self) -> Result<Option<(usize, &[u8])>, BundleError> {
        let p = &self.manifest.payload;
        let chunks = p.chunks.len();
        if self.next >= chunks {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(BundleError::TrailingData);
            }
            return Ok(None);
        }
        let start = self.next as u64 * p.chunk_size;
        let len = p.chunk_size.min(p.size - start) as usize;
        self.buf.resize(len, 0);
        self.inner
            .read_exact(&mut self.buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => BundleError::Truncated {
                    chunk: self.next,
                    chunks,
                },
                _ => BundleError::Io(e),
            })?;
        let digest = hex::encode(Sha256::digest(&self.buf));
        if p.chunks.get(self.next) != Some(&digest) {
            return Err(BundleError::ChunkMismatch { chunk: self.next });
        }
        let index = self.next;
        self.next += 1;
        Ok(Some((index, &self.buf)))
    }
}

/// What the creator of a bundle states about it.
#[derive(Debug, Clone)]
pub struct Release {
    pub compatible: String,
    pub version: Version,
    pub security_version: u64,
    pub min_version: Option<Version>,
    pub created: u64,
    pub expires: u64,
    pub allow_downgrade: bool,
}

/// Hashes `payload` in chunks and returns the manifest that describes it.
pub fn describe(payload: &Path, release: &Release) -> Result<Manifest, BundleError> {
    let mut f = fs::File::open(payload)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    loop {
        let n = fill(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        whole.update(chunk);
        chunks.push(hex::encode(Sha256::digest(chunk)));
        size += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(Manifest {
        format: FORMAT,
        compatible: release.compatible.clone(),
        version: release.version,
        security_version: release.security_version,
        min_version: release.min_version,
        created: release.created,
        expires: release.expires,
        allow_downgrade: release.allow_downgrade,
        payload: Payload {
            size,
            sha256: hex::encode(whole.finalize()),
            chunk_size: CHUNK_SIZE,
            chunks,
        },
    })
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(buf.get_mut(n..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes a bundle of `payload` signed by `keys` to `out` (through a temporary file, so a
/// failed write leaves no half bundle).
pub fn create(
    payload: &Path,
    release: &Release,
    keys: &[&SecretKey],
    out: &Path,
) -> Result<Manifest, BundleError> {
    let manifest = describe(payload, release)?;
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| BundleError::BadManifest(e.to_string()))?;
    let header = Header {
        signatures: keys.iter().map(|k| sign_text(k, &text)).collect(),
        manifest: text,
    };
    write_bundle(&header, &mut fs::File::open(payload)?, out)?;
    Ok(manifest)
}

fn sign_text(key: &SecretKey, manifest: &str) -> Signature {
    Signature {
        key: key.public().to_string(),
        signature: STANDARD.encode(key.sign(manifest.as_bytes())),
    }
}

/// Adds `key`'s signature to the bundle at `path` (rewritten through a temporary file).
pub fn add_signature(path: &Path, key: &SecretKey) -> Result<Manifest, BundleError> {
    let mut f = fs::File::open(path)?;
    let mut header = read_header(&mut f)?;
    let manifest = header.unverified_manifest()?;
    let public = key.public().to_string();
    header.signatures.retain(|s| s.key != public);
    header.signatures.push(sign_text(key, &header.manifest));
    write_bundle(&header, &mut f, path)?;
    Ok(manifest)
}

fn write_bundle(header: &Header, payload: &mut impl Read, out: &Path) -> Result<(), BundleError> {
    let tmp = out.with_extension("partial");
    let result = (|| {
        let mut w = BufWriter::new(fs::File::create(&tmp)?);
        write_header(&mut w, header)?;
        io::copy(payload, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads and checks a whole bundle file against `policy` without writing anything: what
/// `bundle verify` does, and what the installer does chunk by chunk.
pub fn verify_file(path: &Path, policy: &Policy) -> Result<Manifest, BundleError> {
    let mut f = io::BufReader::new(fs::File::open(path)?);
    let header = read_header(&mut f)?;
    let manifest = header.verify(policy)?;
    let mut payload = PayloadReader::new(f, &manifest);
    while payload.next_chunk()?.is_some() {}
    Ok(manifest)
}

#[cfg(test)]
mod tests;
