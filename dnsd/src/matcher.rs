//! A compact set of domain names, looked up by suffix: the compiled form of a block list.
//!
//! A name is kept as its 64-bit fingerprint, not its bytes: a block list is only ever
//! asked "is this name in it", and the name that matched is the query's own suffix, so the
//! bytes of a million names (29 MB of a synthetic 1M list) bought nothing a lookup needs.
//! A set is one sorted array of fingerprints (8 bytes a name) and a directory of the first
//! index of each bucket of leading bits (4 bytes per 8 names at most), so a lookup is one
//! directory read and a binary search of about 8-16 neighbours in one or two cache lines,
//! without allocating. A reload builds the next list beside the one in use; at 8 bytes a
//! name the two together stay near the steady state (see dnsd/README.md, "Reload memory").
//!
//! Two different names share a fingerprint with a probability of about 2^-64: a lookup
//! of a name not in a 1M list hits one by mistake about once in 10^13 queries (five
//! suffixes a query), which blocks that name. The function is fixed by the stored format
//! ([`FORMAT`](crate::compiled)); changing it needs a new format tag.

use std::collections::HashMap;
use std::fmt;

/// A set of lowercase domain names, each with a 16-bit tag (the list or rule it came from).
///
/// Built by [`insert`](Self::insert) in any order, then sealed by
/// [`shrink_to_fit`](Self::shrink_to_fit) (the parsers and [`build`](Self::build) seal);
/// an unsealed set still answers, by a linear scan.
#[derive(Clone, Default)]
pub struct DomainSet {
    /// Fingerprints: sorted and distinct once sealed, in the order added before.
    prints: Vec<u64>,
    /// `dir[b]..dir[b + 1]` is where the fingerprints whose top `bits` bits are `b` lie.
    dir: Vec<u32>,
    bits: u32,
    sealed: bool,
    /// The tags that are not 0, by fingerprint: block lists tag nothing, and a tag per name
    /// would cost a 1M-name list 2 MB (twice over while a reload builds the next).
    tags: HashMap<u64, u16>,
}

impl fmt::Debug for DomainSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainSet")
            .field("names", &self.len())
            .field("sealed", &self.sealed)
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

/// Why a set could not be built or loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("more than 4 billion names in one list")]
    TooLarge,
    #[error("a name longer than 255 bytes (DNS names have at most 253)")]
    NameTooLong,
    #[error("compiled list is damaged: {0}")]
    Damaged(&'static str),
    #[error("cannot read the compiled list: {0}")]
    Io(String),
}

/// A bijective 64-bit mixer (splitmix64's finaliser): every input bit moves every output
/// bit, so chained over a name's 8-byte words it spreads names like a random function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The fingerprint of a name: its 8-byte words (the last zero-padded) chained through
/// [`mix`], seeded and closed with the length. Part of the stored format: never change it
/// without a new format tag in `compiled`.
pub fn fingerprint(name: &[u8]) -> u64 {
    const STEP: u64 = 0x9e37_79b9_7f4a_7c15;
    let len = name.len() as u64;
    let mut h = mix(len ^ 0x6a09_e667_f3bc_c908);
    let mut chunks = name.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h ^ u64::from_le_bytes(w)).wrapping_add(STEP);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        if let Some(dst) = w.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        h = mix(h ^ u64::from_le_bytes(w)).wrapping_add(STEP);
    }
    mix(h ^ len.rotate_left(32))
}

/// Directory bits for `n` names: buckets of 8-16 names on average, at most 2^24 buckets.
fn dir_bits(n: usize) -> u32 {
    (n / 8).max(1).ilog2().min(24)
}

impl DomainSet {
    /// Builds a set from names (already lowercase and without a trailing dot) and tags.
    /// Duplicates keep the smallest tag.
    pub fn build<S: AsRef<str>>(
        names: impl IntoIterator<Item = (S, u16)>,
    ) -> Result<Self, SetError> {
        let mut out = Self::default();
        for (name, tag) in names {
            out.insert(name.as_ref().as_bytes(), tag)?;
        }
        out.shrink_to_fit();
        Ok(out)
    }

    /// An empty set for the next copy of `previous`, sized for as many names, so that
    /// filling it does not grow the array step by step.
    pub fn against(previous: &DomainSet) -> Self {
        Self {
            prints: Vec::with_capacity(previous.len()),
            ..Self::default()
        }
    }

    /// Adds a name, or lowers the tag of one already present.
    pub fn insert(&mut self, name: &[u8], tag: u16) -> Result<(), SetError> {
        if name.len() > 255 {
            return Err(SetError::NameTooLong);
        }
        if self.prints.len() >= u32::MAX as usize {
            return Err(SetError::TooLarge);
        }
        let fp = fingerprint(name);
        if tag == 0 {
            if let Some(t) = self.tags.get_mut(&fp) {
                *t = 0;
            }
        } else if let Some(t) = self.tags.get_mut(&fp) {
            *t = (*t).min(tag);
        } else if !self.contains(fp) {
            self.tags.insert(fp, tag);
        }
        if self.sealed {
            // Rare (tests, small config sets): keep the order, so lookups stay a search.
            if let Err(at) = self.prints.binary_search(&fp) {
                self.prints.insert(at, fp);
                self.index();
            }
        } else {
            self.prints.push(fp);
        }
        Ok(())
    }

    /// Seals a set: sorts and deduplicates the fingerprints in place (no second buffer),
    /// releases spare capacity and builds the directory.
    pub fn shrink_to_fit(&mut self) {
        if !self.sealed {
            self.prints.sort_unstable();
            self.prints.dedup();
            self.sealed = true;
        }
        self.tags.retain(|_, t| *t != 0);
        self.tags.shrink_to_fit();
        self.prints.shrink_to_fit();
        self.index();
    }

    fn index(&mut self) {
        let bits = dir_bits(self.prints.len());
        let buckets = 1usize << bits;
        let mut dir = Vec::with_capacity(buckets + 1);
        let mut at = 0usize;
        for b in 0..buckets {
            while self
                .prints
                .get(at)
                .is_some_and(|fp| ((fp >> 1 >> (63 - bits)) as usize) < b)
            {
                at += 1;
            }
            dir.push(at as u32);
        }
        dir.push(self.prints.len() as u32);
        self.dir = dir;
        self.bits = bits;
    }

    /// Whether the set holds the fingerprint `fp`.
    fn contains(&self, fp: u64) -> bool {
        if !self.sealed {
            return self.prints.contains(&fp);
        }
        // `>> 1 >> (63 - bits)`: a shift by 64 when bits is 0 would overflow.
        let b = (fp >> 1 >> (63 - self.bits)) as usize;
        let (Some(&lo), Some(&hi)) = (self.dir.get(b), self.dir.get(b + 1)) else {
            return false;
        };
        self.prints
            .get(lo as usize..hi as usize)
            .is_some_and(|bucket| bucket.binary_search(&fp).is_ok())
    }

    /// Kept for callers that log it: sets no longer share a previous copy's names (a
    /// fingerprint array costs less than the sharing did).
    pub fn is_layered(&self) -> bool {
        false
    }

    pub fn len(&self) -> usize {
        self.prints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held, for metrics and the memory budget.
    pub fn heap_bytes(&self) -> usize {
        // A hashbrown entry: key, value (padded), control byte.
        self.prints.capacity() * 8 + self.dir.capacity() * 4 + self.tags.capacity() * 17
    }

    /// The tag of `name` if the set holds exactly that name.
    pub fn get(&self, name: &[u8]) -> Option<u16> {
        let fp = fingerprint(name);
        self.contains(fp)
            .then(|| self.tags.get(&fp).copied().unwrap_or(0))
    }

    /// The most specific of `qname` and its parent domains that the set holds, with its
    /// tag. `skip_self` looks at the parents only (for `*.name` rules).
    pub fn find_suffix<'q>(&self, qname: &'q [u8], skip_self: bool) -> Option<(&'q [u8], u16)> {
        if self.prints.is_empty() {
            return None;
        }
        let mut rest = qname;
        let mut first = true;
        loop {
            if !(first && skip_self)
                && let Some(tag) = self.get(rest)
            {
                return Some((rest, tag));
            }
            first = false;
            let dot = rest.iter().position(|b| *b == b'.')?;
            rest = rest.get(dot + 1..)?;
        }
    }

    /// Appends the set to `out` in the compiled-list format (see
    /// [`write_into`](Self::write_into)).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = self.write_into(out);
    }

    /// Streams the set in the compiled-list format: the count, the number of tags, each
    /// tag as fingerprint and tag, then the fingerprints in ascending order, all
    /// little-endian. The directory is not stored; it is rebuilt on load.
    pub fn write_into(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut sealed;
        let this = if self.sealed {
            self
        } else {
            sealed = self.clone();
            sealed.shrink_to_fit();
            &sealed
        };
        out.write_all(&(this.prints.len() as u64).to_le_bytes())?;
        let mut tags: Vec<(u64, u16)> = this.tags.iter().map(|(f, t)| (*f, *t)).collect();
        tags.sort_unstable();
        out.write_all(&(tags.len() as u64).to_le_bytes())?;
        for (fp, tag) in tags {
            out.write_all(&fp.to_le_bytes())?;
            out.write_all(&tag.to_le_bytes())?;
        }
        let mut buf = [0u8; 8 * 512];
        for chunk in this.prints.chunks(512) {
            let mut n = 0;
            for (dst, fp) in buf.chunks_exact_mut(8).zip(chunk) {
                dst.copy_from_slice(&fp.to_le_bytes());
                n += 8;
            }
            out.write_all(buf.get(..n).unwrap_or(&[]))?;
        }
        Ok(())
    }

    /// Reads a set written by [`write_into`](Self::write_into) from `input`, of which at
    /// most `left` bytes remain (so a damaged count cannot make it reserve more than the
    /// file holds). Every count is checked and the fingerprints must ascend: a damaged
    /// file is an error, never a panic or a wrong set.
    pub fn read_stream(input: &mut impl std::io::Read, left: u64) -> Result<Self, SetError> {
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SetError::Damaged("truncated"),
            _ => SetError::Io(e.to_string()),
        };
        let mut word = [0u8; 8];
        input.read_exact(&mut word).map_err(io)?;
        let n = u64::from_le_bytes(word);
        input.read_exact(&mut word).map_err(io)?;
        let ntags = u64::from_le_bytes(word);
        let need = n
            .checked_mul(8)
            .and_then(|b| ntags.checked_mul(10).and_then(|t| b.checked_add(t)))
            .ok_or(SetError::Damaged("count"))?;
        if need > left.saturating_sub(16) || n >= u64::from(u32::MAX) {
            return Err(SetError::Damaged("count"));
        }
        let mut tags = HashMap::new();
        for _ in 0..ntags {
            let mut pair = [0u8; 10];
            input.read_exact(&mut pair).map_err(io)?;
            let (fp, tag) = pair.split_at(8);
            let fp = <[u8; 8]>::try_from(fp).map_err(|_| SetError::Damaged("tag"))?;
            let tag = <[u8; 2]>::try_from(tag).map_err(|_| SetError::Damaged("tag"))?;
            let tag = u16::from_le_bytes(tag);
            if tag != 0 {
                tags.insert(u64::from_le_bytes(fp), tag);
            }
        }
        let n = usize::try_from(n).map_err(|_| SetError::Damaged("count"))?;
        let mut prints = Vec::with_capacity(n);
        let mut buf = [0u8; 8 * 512];
        let mut last: Option<u64> = None;
        while prints.len() < n {
            let want = (n - prints.len()).min(512) * 8;
            let chunk = buf.get_mut(..want).ok_or(SetError::Damaged("count"))?;
            input.read_exact(chunk).map_err(io)?;
            for w in chunk.chunks_exact(8) {
                let fp = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or_default());
                if last.is_some_and(|l| l >= fp) {
                    return Err(SetError::Damaged("fingerprints out of order"));
                }
                last = Some(fp);
                prints.push(fp);
            }
        }
        let mut set = Self {
            prints,
            dir: Vec::new(),
            bits: 0,
            sealed: true,
            tags,
        };
        set.tags
            .retain(|fp, _| set.prints.binary_search(fp).is_ok());
        set.index();
        Ok(set)
    }

    /// Reads a set of the first stored format (names back to back: counts, end offsets,
    /// tags, names), so that lists stored by an older dnsd still load after an upgrade.
    pub fn read_v1(input: &[u8]) -> Result<(Self, &[u8]), SetError> {
        let (n, input) = take_u64(input)?;
        let (names_len, input) = take_u64(input)?;
        let n = usize::try_from(n).map_err(|_| SetError::Damaged("count"))?;
        let names_len = usize::try_from(names_len).map_err(|_| SetError::Damaged("size"))?;
        let ends_bytes = n.checked_mul(4).ok_or(SetError::Damaged("count"))?;
        let tags_bytes = n.checked_mul(2).ok_or(SetError::Damaged("count"))?;
        let need = ends_bytes
            .checked_add(tags_bytes)
            .and_then(|x| x.checked_add(names_len))
            .ok_or(SetError::Damaged("size"))?;
        if input.len() < need {
            return Err(SetError::Damaged("truncated"));
        }
        let (ends_raw, input) = input.split_at(ends_bytes);
        let (tags_raw, input) = input.split_at(tags_bytes);
        let (names, rest) = input.split_at(names_len);
        let mut set = Self {
            prints: Vec::with_capacity(n),
            ..Self::default()
        };
        let mut start = 0usize;
        let ends = ends_raw
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(u32::from_le_bytes);
        let tags = tags_raw
            .chunks_exact(2)
            .filter_map(|c| <[u8; 2]>::try_from(c).ok())
            .map(u16::from_le_bytes);
        for (end, tag) in ends.zip(tags) {
            let end = end as usize;
            let name = names.get(start..end).ok_or(SetError::Damaged("offsets"))?;
            set.insert(name, tag)
                .map_err(|_| SetError::Damaged("name length"))?;
            start = end;
        }
        if start != names_len {
            return Err(SetError::Damaged("offsets"));
        }
        set.shrink_to_fit();
        Ok((set, rest))
    }
}

fn take_u64(input: &[u8]) -> Result<(u64, &[u8]), SetError> {
    if input.len() < 8 {
        return Err(SetError::Damaged("truncated"));
    }
    let (head, rest) = input.split_at(8);
    let mut w = [0u8; 8];
    w.copy_from_slice(head);
    Ok((u64::from_le_bytes(w), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> DomainSet {
        DomainSet::build(names.iter().enumerate().map(|(i, n)| (*n, i as u16))).unwrap()
    }

    fn round_trip(s: &DomainSet) -> DomainSet {
        let mut buf = Vec::new();
        s.write_to(&mut buf);
        DomainSet::read_stream(&mut buf.as_slice(), buf.len() as u64).unwrap()
    }

    #[test]
    fn exact_and_suffix() {
        let s = set(&["ads.example", "tracker.example.net", "ads.example"]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(b"ads.example"), Some(0));
        assert_eq!(s.get(b"example"), None);
        assert_eq!(
            s.find_suffix(b"a.b.ads.example", false),
            Some((&b"ads.example"[..], 0))
        );
        assert_eq!(s.find_suffix(b"ads.example", true), None);
        assert_eq!(s.find_suffix(b"notads.example", false), None);
        assert_eq!(s.find_suffix(b"", false), None);
        assert_eq!(
            DomainSet::default().find_suffix(b"ads.example", false),
            None
        );
    }

    #[test]
    fn duplicates_keep_the_smallest_tag() {
        let s = DomainSet::build([("x.example", 7), ("x.example", 3), ("y.example", 1)]).unwrap();
        assert_eq!(s.get(b"x.example"), Some(3));
        let s = DomainSet::build([("x.example", 0), ("x.example", 3)]).unwrap();
        assert_eq!(s.get(b"x.example"), Some(0), "0 first stays the smallest");
        assert!(s.tags.is_empty());
    }

    #[test]
    fn tags_cost_nothing_until_one_is_not_zero() {
        let mut s = DomainSet::build([("a.example", 0), ("b.example", 0)]).unwrap();
        assert!(s.tags.is_empty());
        s.insert(b"c.example", 5).unwrap();
        s.insert(b"a.example", 2).unwrap();
        assert_eq!(s.get(b"a.example"), Some(0), "0 stays the smallest");
        assert_eq!(s.get(b"b.example"), Some(0));
        assert_eq!(s.get(b"c.example"), Some(5));
        assert_eq!(s.len(), 3);
        let t = round_trip(&s);
        for n in ["a.example", "b.example", "c.example", "d.example"] {
            assert_eq!(t.get(n.as_bytes()), s.get(n.as_bytes()), "{n}");
        }
        assert_eq!(t.tags.len(), 1);

        let t = round_trip(&DomainSet::build([("a.example", 0)]).unwrap());
        assert!(t.tags.is_empty(), "an all-zero set loads without tags");
        assert_eq!(t.get(b"a.example"), Some(0));
        assert!(
            DomainSet::default()
                .insert("x".repeat(256).as_bytes(), 0)
                .is_err()
        );
    }

    #[test]
    fn survives_a_round_trip_and_rejects_damage() {
        let names: Vec<String> = (0..5000)
            .map(|i| format!("host{i}.example{}.com", i % 7))
            .collect();
        let s = DomainSet::build(names.iter().map(|n| (n.as_str(), 1))).unwrap();
        let mut buf = Vec::new();
        s.write_to(&mut buf);
        buf.extend_from_slice(b"tail");
        let mut input = buf.as_slice();
        let t = DomainSet::read_stream(&mut input, buf.len() as u64).unwrap();
        assert_eq!(input, b"tail");
        assert_eq!(t.len(), 5000);
        for n in &names {
            assert_eq!(t.get(n.as_bytes()), Some(1));
            assert_eq!(t.get(format!("x{n}").as_bytes()), None);
        }
        for cut in [0, 7, 15, 100, buf.len() - 5] {
            let mut input = &buf[..cut];
            assert!(
                DomainSet::read_stream(&mut input, cut as u64).is_err(),
                "cut at {cut}"
            );
        }
        let mut huge = buf.clone();
        huge[6] = 0xff; // a count beyond the file
        assert_eq!(
            DomainSet::read_stream(&mut huge.as_slice(), buf.len() as u64).err(),
            Some(SetError::Damaged("count"))
        );
        // Two fingerprints swapped: out of order, refused rather than half-found.
        let start = 16 + 10 * 5000;
        let mut swapped = buf.clone();
        let (a, b) = swapped[start..start + 16].split_at_mut(8);
        a.swap_with_slice(b);
        assert!(DomainSet::read_stream(&mut swapped.as_slice(), buf.len() as u64).is_err());
    }

    #[test]
    fn eight_bytes_and_a_bit_per_name() {
        let names: Vec<String> = (0..100_000)
            .map(|i| format!("tracker-{i}.ads.example.com"))
            .collect();
        let s = DomainSet::build(names.iter().map(|n| (n.as_str(), 0))).unwrap();
        // 8 bytes of fingerprint and at most 4 bytes of directory per 8 names.
        assert!(
            s.heap_bytes() <= names.len() * 8 + names.len() / 2 + 64,
            "{}",
            s.heap_bytes()
        );
        for n in names.iter().step_by(997) {
            assert_eq!(s.get(n.as_bytes()), Some(0));
        }
    }

    #[test]
    fn fingerprints_of_similar_names_differ() {
        // Names that differ in one byte, in the zero padding of the last word, in length
        // only, or that a word-wise XOR would confuse.
        let mut names: Vec<Vec<u8>> = Vec::new();
        for i in 0..300_000u32 {
            names.push(format!("a{i}.example").into_bytes());
            names.push(format!("b{i:08}.example.com").into_bytes());
        }
        names.extend([
            b"abcdefgh".to_vec(),
            b"abcdefg".to_vec(),
            b"abcdefgh\0".to_vec(),
        ]);
        let mut prints: Vec<u64> = names.iter().map(|n| fingerprint(n)).collect();
        prints.sort_unstable();
        prints.dedup();
        assert_eq!(prints.len(), names.len());
        assert_eq!(
            fingerprint(b"ads.example"),
            0x0ce7_54d9_219b_ca7b,
            "the stored format depends on this value: a change needs a new format tag"
        );
    }

    #[test]
    fn a_reload_starts_sized_for_the_previous_copy() {
        let names: Vec<String> = (0..100).map(|i| format!("h{i}.example")).collect();
        let old = DomainSet::build(names.iter().map(|n| (n.as_str(), 0))).unwrap();
        let mut s = DomainSet::against(&old);
        assert!(s.prints.capacity() >= 100);
        for n in names.iter().skip(3) {
            s.insert(n.as_bytes(), 0).unwrap();
        }
        s.insert(b"new.example", 0).unwrap();
        assert_eq!(
            s.get(b"new.example"),
            Some(0),
            "an unsealed set answers too"
        );
        s.shrink_to_fit();
        assert!(!s.is_layered());
        assert_eq!(s.len(), 98);
        assert_eq!(s.get(b"h0.example"), None, "a removed name is gone");
        assert_eq!(s.get(b"h3.example"), Some(0));
        assert_eq!(old.get(b"h0.example"), Some(0), "the old copy is untouched");
    }

    /// The first stored format, as dnsd wrote it before fingerprints.
    fn v1_bytes(names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(names.len() as u64).to_le_bytes());
        let total: usize = names.iter().map(|n| n.len()).sum();
        out.extend_from_slice(&(total as u64).to_le_bytes());
        let mut end = 0u32;
        for n in names {
            end += n.len() as u32;
            out.extend_from_slice(&end.to_le_bytes());
        }
        for _ in names {
            out.extend_from_slice(&0u16.to_le_bytes());
        }
        for n in names {
            out.extend_from_slice(n.as_bytes());
        }
        out
    }

    #[test]
    fn the_first_format_still_loads() {
        let mut buf = v1_bytes(&["a.example", "b.example.net"]);
        buf.extend_from_slice(b"tail");
        let (s, rest) = DomainSet::read_v1(&buf).unwrap();
        assert_eq!(rest, b"tail");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.find_suffix(b"x.b.example.net", false).map(|x| x.0),
            Some(&b"b.example.net"[..])
        );
        let mut bad = buf.clone();
        bad[16] = 0xff;
        bad[17] = 0xff;
        assert!(DomainSet::read_v1(&bad).is_err());
        assert!(DomainSet::read_v1(&buf[..20]).is_err());
    }
}
