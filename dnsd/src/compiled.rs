//! A block list compiled for lookups, and its on-disk form under /data, which lets dnsd
//! block from the first second after a restart, before any download.

use std::io::Write as _;
use std::path::Path;

use regex::{RegexSet, RegexSetBuilder};
use sha2::{Digest, Sha256};

use crate::lists::{ParseStats, ParsedList};
use crate::matcher::{DomainSet, SetError};

/// The format of a compiled list: sets of name fingerprints ([`crate::matcher::fingerprint`]).
const MAGIC: &[u8; 8] = b"APLDNSL2";
/// The first format, with the names themselves; still read after an upgrade.
const MAGIC_V1: &[u8; 8] = b"APLDNSL1";

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    sha: Sha256,
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One list, compiled.
#[derive(Debug, Clone)]
pub struct CompiledList {
    /// Blocked with their subdomains.
    pub block: DomainSet,
    /// Only their subdomains are blocked.
    pub block_subdomains: DomainSet,
    /// Exceptions: never blocked, with their subdomains.
    pub allow: DomainSet,
    regex_src: Vec<String>,
    /// The regexes in as few sets as fit the regex crate's size limit, each with the index
    /// of its first regex in `regex_src`.
    regex: Vec<(usize, RegexSet)>,
    pub stats: ParseStats,
}

/// Why a list could not be compiled, saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Set(#[from] SetError),
    #[error("regular expressions of the list do not compile together: {0}")]
    Regex(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("compiled list {path} is damaged: {why}")]
    Damaged { path: String, why: String },
}

/// Which rule of a list matched a name, for `applctl dns check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// `name` is listed and blocks itself and its subdomains.
    Domain(String),
    /// `*.name` blocks the subdomains of name.
    Wildcard(String),
    /// A regular expression.
    Regex(String),
    /// An exception `@@||name^`.
    Exception(String),
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Domain(d) => write!(f, "{d}"),
            Rule::Wildcard(d) => write!(f, "*.{d}"),
            Rule::Regex(r) => write!(f, "/{r}/"),
            Rule::Exception(d) => write!(f, "@@||{d}^"),
        }
    }
}

/// Compiles `src` into sets that each fit the regex crate's size limit, halving a set that
/// does not fit; a regex that fails on its own (too big, or an engine difference the
/// parser's check missed) is left out and counted: junk is counted, never fatal. Names
/// are matched lowercase, so the regexes are compiled case-insensitively (`/^Ads\./`).
pub(crate) fn regex_sets(src: Vec<String>) -> (Vec<String>, Vec<(usize, RegexSet)>, u64) {
    fn split(
        src: &[String],
        kept: &mut Vec<String>,
        sets: &mut Vec<(usize, RegexSet)>,
        skipped: &mut u64,
    ) {
        if src.is_empty() {
            return;
        }
        match regex_set(src) {
            Ok(set) => {
                sets.push((kept.len(), set));
                kept.extend_from_slice(src);
            }
            Err(e) => match src {
                [one] => {
                    tracing::warn!(regex = %one, error = %e, "regex left out");
                    *skipped += 1;
                }
                _ => {
                    let (a, b) = src.split_at(src.len() / 2);
                    split(a, kept, sets, skipped);
                    split(b, kept, sets, skipped);
                }
            },
        }
    }
    let (mut kept, mut sets, mut skipped) = (Vec::new(), Vec::new(), 0);
    split(&src, &mut kept, &mut sets, &mut skipped);
    (kept, sets, skipped)
}

/// One case-insensitive set, as the policy's own regexes are compiled too.
pub(crate) fn regex_set(src: &[String]) -> Result<RegexSet, regex::Error> {
    RegexSetBuilder::new(src).case_insensitive(true).build()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl CompiledList {
    pub fn compile(mut parsed: ParsedList) -> Result<Self, CompileError> {
        for set in [
            &mut parsed.block,
            &mut parsed.block_subdomains,
            &mut parsed.allow,
        ] {
            set.shrink_to_fit();
        }
        let (regex_src, regex, skipped) = regex_sets(std::mem::take(&mut parsed.regex));
        parsed.stats.skipped += skipped;
        Ok(Self {
            block: parsed.block,
            block_subdomains: parsed.block_subdomains,
            allow: parsed.allow,
            regex_src,
            regex,
            stats: parsed.stats,
        })
    }

    /// Number of rules of every kind.
    pub fn len(&self) -> usize {
        self.block.len() + self.block_subdomains.len() + self.allow.len() + self.regex_src.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn heap_bytes(&self) -> usize {
        self.block.heap_bytes()
            + self.block_subdomains.heap_bytes()
            + self.allow.heap_bytes()
            + self.regex_src.iter().map(String::len).sum::<usize>()
    }

    /// The blocking rule that matches `qname` (lowercase, no trailing dot), if any.
    pub fn blocks(&self, qname: &str) -> Option<Rule> {
        let q = qname.as_bytes();
        if let Some((hit, _)) = self.block.find_suffix(q, false) {
            return Some(Rule::Domain(text(hit)));
        }
        if let Some((hit, _)) = self.block_subdomains.find_suffix(q, true) {
            return Some(Rule::Wildcard(text(hit)));
        }
        self.regex.iter().find_map(|(start, set)| {
            let i = set.matches(qname).iter().next()?;
            self.regex_src
                .get(start + i)
                .map(|r| Rule::Regex(r.clone()))
        })
    }

    /// The exception that covers `qname`, if any.
    pub fn excepts(&self, qname: &str) -> Option<Rule> {
        self.allow
            .find_suffix(qname.as_bytes(), false)
            .map(|(hit, _)| Rule::Exception(text(hit)))
    }

    /// The compiled form: magic, the three sets, the regexes, the stats, and a SHA-256 of
    /// all of it, so a torn file is refused rather than half-loaded.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.heap_bytes() + 64);
        // Writing to a Vec cannot fail.
        let _ = self.write_into(&mut out);
        out
    }

    /// Streams the compiled form (see [`to_bytes`](Self::to_bytes)) into `out`, hashing as
    /// it goes: storing a list costs a write buffer, not a second copy of the list.
    fn write_into(&self, out: impl std::io::Write) -> std::io::Result<()> {
        let mut out = Hashing {
            inner: out,
            sha: Sha256::new(),
        };
        out.write_all(MAGIC)?;
        self.block.write_into(&mut out)?;
        self.block_subdomains.write_into(&mut out)?;
        self.allow.write_into(&mut out)?;
        out.write_all(&(self.regex_src.len() as u64).to_le_bytes())?;
        for r in &self.regex_src {
            out.write_all(&(r.len() as u64).to_le_bytes())?;
            out.write_all(r.as_bytes())?;
        }
        for v in [
            self.stats.lines,
            self.stats.comments,
            self.stats.entries,
            self.stats.skipped,
        ] {
            out.write_all(&v.to_le_bytes())?;
        }
        let sum = out.sha.finalize();
        out.inner.write_all(&sum)?;
        out.inner.flush()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let body_len = bytes.len().checked_sub(32).ok_or("too short")?;
        let (body, sum) = bytes.split_at(body_len);
        if body.starts_with(MAGIC_V1) {
            return Self::from_v1(body, sum);
        }
        Self::read_checked(&mut { body }, body.len() as u64, sum)
    }

    /// Reads the body of a compiled list (everything before the checksum, `len` bytes) from
    /// `input` while hashing it, and returns it only if the hash equals `sum`: the sets are
    /// built straight from the stream, so loading a list never holds its file in memory
    /// beside it.
    fn read_checked(input: &mut impl std::io::Read, len: u64, sum: &[u8]) -> Result<Self, String> {
        let mut input = HashingReader {
            inner: std::io::Read::take(input, len),
            sha: Sha256::new(),
        };
        let list = Self::read_body(&mut input, len);
        // Read to the end so the hash covers the whole body, whatever the parse did.
        let trailing =
            std::io::copy(&mut input, &mut std::io::sink()).map_err(|e| e.to_string())?;
        if input.sha.finalize().as_slice() != sum {
            return Err("checksum mismatch".into());
        }
        let list = list?;
        if trailing != 0 {
            return Err("trailing bytes".into());
        }
        Ok(list)
    }

    fn read_body(input: &mut impl std::io::Read, len: u64) -> Result<Self, String> {
        fn read(input: &mut impl std::io::Read, buf: &mut [u8]) -> Result<(), String> {
            input.read_exact(buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "truncated".to_owned(),
                _ => e.to_string(),
            })
        }
        fn read_u64(input: &mut impl std::io::Read) -> Result<u64, String> {
            let mut w = [0u8; 8];
            read(input, &mut w)?;
            Ok(u64::from_le_bytes(w))
        }
        let mut magic = [0u8; 8];
        read(input, &mut magic)?;
        if &magic != MAGIC {
            return Err("not a compiled list".into());
        }
        let mut sets = Vec::with_capacity(3);
        for _ in 0..3 {
            sets.push(DomainSet::read_stream(&mut *input, len).map_err(|e| e.to_string())?);
        }
        let n = read_u64(input)?;
        if n > len / 8 {
            return Err("regex count".into());
        }
        let mut regex_src = Vec::new();
        for _ in 0..n {
            let rlen = read_u64(input)?;
            if rlen > len {
                return Err("regex length".into());
            }
            let mut r = vec![0u8; usize::try_from(rlen).map_err(|_| "regex length")?];
            read(input, &mut r)?;
            regex_src.push(String::from_utf8(r).map_err(|_| "regex is not UTF-8")?);
        }
        let mut stats = [0u64; 4];
        for s in &mut stats {
            *s = read_u64(input)?;
        }
        let mut sets = sets.into_iter();
        let (Some(block), Some(block_subdomains), Some(allow)) =
            (sets.next(), sets.next(), sets.next())
        else {
            return Err("sets missing".into());
        };
        Self::assemble(block, block_subdomains, allow, regex_src, stats)
    }

    fn assemble(
        block: DomainSet,
        block_subdomains: DomainSet,
        allow: DomainSet,
        regex_src: Vec<String>,
        stats: [u64; 4],
    ) -> Result<Self, String> {
        // Stored regexes were kept by the same split when compiled: none is left out here
        // unless the regex crate changed under them.
        let (regex_src, regex, _) = regex_sets(regex_src);
        Ok(Self {
            block,
            block_subdomains,
            allow,
            regex_src,
            regex,
            stats: ParseStats {
                lines: stats[0],
                comments: stats[1],
                entries: stats[2],
                skipped: stats[3],
            },
        })
    }

    /// The first format (the names themselves), read whole.
    fn from_v1(body: &[u8], sum: &[u8]) -> Result<Self, String> {
        if Sha256::digest(body).as_slice() != sum {
            return Err("checksum mismatch".into());
        }
        let rest = body
            .strip_prefix(MAGIC_V1.as_slice())
            .ok_or("not a compiled list")?;
        let (block, rest) = DomainSet::read_v1(rest).map_err(|e| e.to_string())?;
        let (block_subdomains, rest) = DomainSet::read_v1(rest).map_err(|e| e.to_string())?;
        let (allow, mut rest) = DomainSet::read_v1(rest).map_err(|e| e.to_string())?;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err("truncated".into());
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        let read_u64 = |b: &[u8]| -> Result<u64, String> {
            <[u8; 8]>::try_from(b)
                .map(u64::from_le_bytes)
                .map_err(|_| "truncated".to_owned())
        };
        let n = read_u64(take(8)?)?;
        let mut regex_src = Vec::new();
        for _ in 0..n {
            let len = usize::try_from(read_u64(take(8)?)?).map_err(|_| "regex length")?;
            let r = std::str::from_utf8(take(len)?).map_err(|_| "regex is not UTF-8")?;
            regex_src.push(r.to_owned());
        }
        let mut stats = [0u64; 4];
        for s in &mut stats {
            *s = read_u64(take(8)?)?;
        }
        if !rest.is_empty() {
            return Err("trailing bytes".into());
        }
        Self::assemble(block, block_subdomains, allow, regex_src, stats)
    }

    /// Writes the compiled list atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), CompileError> {
        let io = |e| CompileError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::io::BufWriter::with_capacity(
                1 << 16,
                std::fs::File::create(&tmp).map_err(io)?,
            );
            self.write_into(&mut f).map_err(io)?;
            let f = f.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    /// Loads a stored list, streaming: the file is never held whole beside the sets built
    /// from it (a `POST /reload` reads every list while the copies in use still answer).
    pub fn load(path: &Path) -> Result<Self, CompileError> {
        use std::io::{Read as _, Seek as _};
        let io = |e| CompileError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let damaged = |why| CompileError::Damaged {
            path: path.display().to_string(),
            why,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let body_len = len
            .checked_sub(32)
            .ok_or_else(|| damaged("too short".into()))?;
        let mut magic = [0u8; 8];
        if f.read_exact(&mut magic).is_ok() && &magic == MAGIC_V1 {
            let bytes = std::fs::read(path).map_err(io)?;
            return Self::from_bytes(&bytes).map_err(damaged);
        }
        let mut sum = [0u8; 32];
        f.seek(std::io::SeekFrom::Start(body_len)).map_err(io)?;
        f.read_exact(&mut sum).map_err(io)?;
        f.rewind().map_err(io)?;
        let mut input = std::io::BufReader::with_capacity(1 << 16, f);
        Self::read_checked(&mut input, body_len, &sum).map_err(damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lists::parse;
    use appliance::model::ListFormat;

    fn list() -> CompiledList {
        let text = "||ads.example^\n@@||ok.ads.example^\n*.wild.example\n/^ad[0-9]+\\./\n0.0.0.0 t.example\n";
        CompiledList::compile(parse(text, ListFormat::Auto)).unwrap()
    }

    #[test]
    fn rules_match_as_documented() {
        let l = list();
        assert_eq!(
            l.blocks("x.ads.example"),
            Some(Rule::Domain("ads.example".into()))
        );
        assert_eq!(l.blocks("wild.example"), None);
        assert_eq!(
            l.blocks("a.wild.example"),
            Some(Rule::Wildcard("wild.example".into()))
        );
        assert_eq!(
            l.blocks("ad12.example.org"),
            Some(Rule::Regex("^ad[0-9]+\\.".into()))
        );
        assert_eq!(l.blocks("example.org"), None);
        assert_eq!(
            l.excepts("ok.ads.example"),
            Some(Rule::Exception("ok.ads.example".into()))
        );
        assert_eq!(l.stats.entries, 5);
    }

    #[test]
    fn saved_and_loaded_intact_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lists/x.bin");
        let l = list();
        l.save(&p).unwrap();
        let m = CompiledList::load(&p).unwrap();
        assert_eq!(m.blocks("x.ads.example"), l.blocks("x.ads.example"));
        assert_eq!(m.blocks("ad1.x"), l.blocks("ad1.x"));
        assert_eq!(m.stats, l.stats);

        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(
            bytes,
            l.to_bytes(),
            "the streamed file is the in-memory form"
        );
        for cut in [0, 8, bytes.len() / 2, bytes.len() - 1] {
            assert!(CompiledList::from_bytes(&bytes[..cut]).is_err());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(CompiledList::from_bytes(&flipped).is_err());
    }
}
