//! A compact set of domain names, looked up by suffix: the compiled form of a block list.
//!
//! A million names as `String`s in a `HashSet` cost about 80 MB; here they cost the bytes
//! of the names plus 1 byte each and the table: one arena holding every name behind its
//! length byte, back to back, and an open-addressing table of `u32` arena offsets (8 or
//! 16 bytes a name at a load of 1/4 to 1/2). Tags are kept only where they are not 0.
//! Lookups hash the query name and each of its parent suffixes, so `a.b.ads.example`
//! finds `ads.example` in at most five probe sequences, without allocating.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A set of lowercase domain names, each with a 16-bit tag (the list or rule it came from).
///
/// A set rebuilt from a new copy of a list can be layered on the previous copy's names
/// ([`against`](Self::against)): names the old copy already has are marked in a bitmap
/// instead of copied, and only new names get their own arena. An unchanged list of 1M
/// names then costs 2.6 MB during a reload instead of a second 29 MB copy, which is what
/// keeps a reload's peak memory near the steady state.
#[derive(Clone, Default)]
pub struct DomainSet {
    /// The names this set holds itself (all of them unless layered).
    own: Arc<Flat>,
    /// The previous copy's names and which of them this set holds.
    base: Option<Base>,
}

#[derive(Clone)]
struct Base {
    /// Always a flat set: layering on a layered set takes its base, so lookups never go
    /// deeper than one level.
    names: Arc<Flat>,
    /// One bit per arena offset of `names`: set for the names this set holds.
    kept: Vec<u64>,
    count: usize,
}

impl Base {
    fn is_kept(&self, offset: u32) -> bool {
        let (w, b) = (offset as usize / 64, offset % 64);
        self.kept.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    fn keep(&mut self, offset: u32) {
        let (w, b) = (offset as usize / 64, offset % 64);
        if let Some(x) = self.kept.get_mut(w)
            && *x & (1 << b) == 0
        {
            *x |= 1 << b;
            self.count += 1;
        }
    }
}

/// The flat form: every name in one arena and an open-addressing table.
#[derive(Clone, Default)]
struct Flat {
    /// Every name as one length byte and its bytes, back to back, in the order added.
    arena: Vec<u8>,
    count: usize,
    /// The tags that are not 0, by arena offset: block lists tag nothing, and a tag per
    /// name would be 2 MB of a 1M-name list (twice over while a reload builds the next).
    tags: HashMap<u32, u16>,
    /// Open addressing: 0 is empty, else the arena offset of a name plus 1.
    table: Vec<u32>,
}

impl fmt::Debug for DomainSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainSet")
            .field("names", &self.len())
            .field("layered", &self.base.is_some())
            .field("heap_bytes", &self.heap_bytes())
            .finish()
    }
}

/// Why a set could not be built or loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetError {
    #[error("more than 4 GiB of names in one list")]
    TooLarge,
    #[error("a name longer than 255 bytes (DNS names have at most 253)")]
    NameTooLong,
    #[error("compiled list is damaged: {0}")]
    Damaged(&'static str),
}

/// FxHash-style mixing over 8-byte chunks: fast for short keys, and the table is rebuilt
/// on load, so the function may change between versions.
fn hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        if let Some(dst) = w.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    // Final avalanche so that the low bits used by the table depend on every byte.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// The table size for `n` names: a load of at most 1/2, a power of two.
fn table_size(n: usize) -> usize {
    (n * 2).next_power_of_two().max(16)
}

impl Flat {
    /// A set sized for `names` names of `bytes` bytes in all, so that filling it never
    /// reallocates (a doubling arena briefly holds its old and new buffers).
    fn with_capacity(names: usize, bytes: usize) -> Self {
        Self {
            arena: Vec::with_capacity(bytes + names),
            count: 0,
            tags: HashMap::new(),
            table: vec![0; table_size(names)],
        }
    }

    /// Adds a name, or lowers the tag of one already present. Names go straight into the
    /// arena, with duplicates found by the table, so building a set never holds the names
    /// twice.
    fn insert(&mut self, name: &[u8], tag: u16) -> Result<(), SetError> {
        let len = u8::try_from(name.len()).map_err(|_| SetError::NameTooLong)?;
        if (self.count + 1) * 2 > self.table.len() {
            self.grow();
        }
        let mask = self.table.len() - 1;
        let mut slot = hash(name) as usize & mask;
        loop {
            let e = self.table.get(slot).copied().unwrap_or(0);
            if e == 0 {
                break;
            }
            if self.name_at(e - 1) == name {
                // An absent tag is 0, which no tag is below.
                if let Some(t) = self.tags.get_mut(&(e - 1)) {
                    *t = (*t).min(tag);
                }
                return Ok(());
            }
            slot = (slot + 1) & mask;
        }
        let offset = u32::try_from(self.arena.len()).map_err(|_| SetError::TooLarge)?;
        if self.arena.len() + 1 + name.len() >= u32::MAX as usize {
            return Err(SetError::TooLarge);
        }
        self.arena.push(len);
        self.arena.extend_from_slice(name);
        self.count += 1;
        if tag != 0 {
            self.tags.insert(offset, tag);
        }
        if let Some(e) = self.table.get_mut(slot) {
            *e = offset + 1;
        }
        Ok(())
    }

    fn grow(&mut self) {
        let cap = (self.table.len() * 2).max(16);
        self.rehash(cap);
    }

    fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        self.tags.shrink_to_fit();
    }

    /// (Re)builds the hash table at a load factor of at most 1/2.
    fn index(&mut self) {
        self.rehash(table_size(self.count));
    }

    fn rehash(&mut self, cap: usize) {
        let mut table = vec![0u32; cap];
        let mask = cap - 1;
        for (offset, name) in self.entries() {
            let mut slot = hash(name) as usize & mask;
            loop {
                match table.get_mut(slot) {
                    Some(e) if *e == 0 => {
                        *e = offset + 1;
                        break;
                    }
                    _ => slot = (slot + 1) & mask,
                }
            }
        }
        self.table = table;
    }

    fn name_at(&self, offset: u32) -> &[u8] {
        let start = offset as usize + 1;
        let len = self.arena.get(offset as usize).copied().unwrap_or(0) as usize;
        self.arena.get(start..start + len).unwrap_or(&[])
    }

    /// Arena offset and name of every entry, in the order added.
    fn entries(&self) -> impl Iterator<Item = (u32, &[u8])> {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            let len = *self.arena.get(at)? as usize;
            let name = self.arena.get(at + 1..at + 1 + len)?;
            let offset = at as u32;
            at += 1 + len;
            Some((offset, name))
        })
    }

    fn tag(&self, offset: u32) -> u16 {
        self.tags.get(&offset).copied().unwrap_or(0)
    }

    fn heap_bytes(&self) -> usize {
        // A hashbrown entry: key, value, control byte, at a load of 7/8 at most.
        self.arena.capacity() + self.table.capacity() * 4 + self.tags.capacity() * 9
    }

    /// The arena offset of `name` if the set holds exactly that name.
    fn find(&self, name: &[u8]) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut slot = hash(name) as usize & mask;
        loop {
            let e = *self.table.get(slot)?;
            if e == 0 {
                return None;
            }
            if self.name_at(e - 1) == name {
                return Some(e - 1);
            }
            slot = (slot + 1) & mask;
        }
    }
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

    /// An empty set that will share the names of `previous` it is given again (see the
    /// type's documentation). A name found in `previous` keeps the tag it has there: block
    /// lists tag nothing, and sets built with tags are never layered.
    pub fn against(previous: &DomainSet) -> Self {
        let names = match &previous.base {
            Some(b) => Arc::clone(&b.names),
            None => Arc::clone(&previous.own),
        };
        if names.count == 0 {
            return Self::default();
        }
        let kept = vec![0; names.arena.len().div_ceil(64)];
        Self {
            own: Arc::default(),
            base: Some(Base {
                names,
                kept,
                count: 0,
            }),
        }
    }

    /// Adds a name, or lowers the tag of one already present.
    pub fn insert(&mut self, name: &[u8], tag: u16) -> Result<(), SetError> {
        if let Some(b) = &mut self.base
            && let Some(offset) = b.names.find(name)
        {
            b.keep(offset);
            return Ok(());
        }
        // Not shared while a set is being built, so this never copies.
        Arc::make_mut(&mut self.own).insert(name, tag)
    }

    /// Completes a set: releases spare capacity, and turns a layered set into a flat one
    /// when the previous copy's names no longer fit it (more than a quarter of them gone,
    /// or more than a quarter as many new ones), since a layered set keeps every name of
    /// the base resident whether it still holds it or not.
    pub fn shrink_to_fit(&mut self) {
        if let Some(b) = &self.base {
            let base_n = b.names.count;
            if b.count == 0 {
                self.base = None;
            } else if (base_n - b.count) + self.own.count > base_n / 4 {
                self.flatten();
            }
        }
        Arc::make_mut(&mut self.own).shrink_to_fit();
    }

    fn flatten(&mut self) {
        let bytes = self.iter().map(|(n, _)| n.len()).sum();
        let mut flat = Flat::with_capacity(self.len(), bytes);
        for (name, tag) in self.iter() {
            // The names fit the set they come from, so they fit this one.
            if let Err(e) = flat.insert(name, tag) {
                tracing::warn!(error = %e, "cannot flatten a reloaded list; keeping it layered");
                return;
            }
        }
        self.own = Arc::new(flat);
        self.base = None;
    }

    /// Whether this set shares the names of a previous copy.
    pub fn is_layered(&self) -> bool {
        self.base.is_some()
    }

    pub fn len(&self) -> usize {
        self.own.count + self.base.as_ref().map_or(0, |b| b.count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held, for metrics and the memory budget; a shared base counts in full,
    /// since it stays resident as long as this set does.
    pub fn heap_bytes(&self) -> usize {
        self.own.heap_bytes()
            + self
                .base
                .as_ref()
                .map_or(0, |b| b.names.heap_bytes() + b.kept.capacity() * 8)
    }

    /// The tag of `name` if the set holds exactly that name.
    pub fn get(&self, name: &[u8]) -> Option<u16> {
        if let Some(b) = &self.base
            && let Some(offset) = b.names.find(name)
            && b.is_kept(offset)
        {
            return Some(b.names.tag(offset));
        }
        self.own.find(name).map(|o| self.own.tag(o))
    }

    /// The most specific of `qname` and its parent domains that the set holds, with its
    /// tag. `skip_self` looks at the parents only (for `*.name` rules).
    pub fn find_suffix<'q>(&self, qname: &'q [u8], skip_self: bool) -> Option<(&'q [u8], u16)> {
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

    /// Names with their tags: those shared with the previous copy first, then the others,
    /// each in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u16)> {
        let shared = self.base.iter().flat_map(|b| {
            b.names
                .entries()
                .filter(|(o, _)| b.is_kept(*o))
                .map(|(o, n)| (n, b.names.tag(o)))
        });
        shared.chain(self.own.entries().map(|(o, n)| (n, self.own.tag(o))))
    }

    /// Appends the set to `out` in the compiled-list format: counts, end offsets, tags and
    /// the names back to back, all little-endian. The table is not stored; it is rebuilt
    /// on load in milliseconds.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = self.write_into(out);
    }

    /// Streams the set in the compiled-list format (see [`write_to`](Self::write_to)), so
    /// that storing a list never holds a second copy of it in memory.
    pub fn write_into(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let names_len: usize = self.iter().map(|(n, _)| n.len()).sum();
        out.write_all(&(self.len() as u64).to_le_bytes())?;
        out.write_all(&(names_len as u64).to_le_bytes())?;
        let mut end = 0u32;
        for (name, _) in self.iter() {
            end += name.len() as u32;
            out.write_all(&end.to_le_bytes())?;
        }
        for (_, tag) in self.iter() {
            out.write_all(&tag.to_le_bytes())?;
        }
        for (name, _) in self.iter() {
            out.write_all(name)?;
        }
        Ok(())
    }

    /// Reads a set written by [`write_to`](Self::write_to) from the front of `input` and
    /// returns the rest. Every length and offset is checked: a damaged file is an error,
    /// never a panic or an out-of-bounds read.
    pub fn read_from(input: &[u8]) -> Result<(Self, &[u8]), SetError> {
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
        if names_len + n >= u32::MAX as usize {
            return Err(SetError::Damaged("size"));
        }
        let (ends_raw, input) = input.split_at(ends_bytes);
        let (tags_raw, input) = input.split_at(tags_bytes);
        let (names, rest) = input.split_at(names_len);
        let mut set = Flat {
            arena: Vec::with_capacity(names_len + n),
            count: n,
            tags: HashMap::new(),
            table: Vec::new(),
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
            let len = u8::try_from(name.len()).map_err(|_| SetError::Damaged("name length"))?;
            if tag != 0 {
                set.tags.insert(set.arena.len() as u32, tag);
            }
            set.arena.push(len);
            set.arena.extend_from_slice(name);
            start = end;
        }
        if start != names_len {
            return Err(SetError::Damaged("offsets"));
        }
        set.index();
        Ok((
            Self {
                own: Arc::new(set),
                base: None,
            },
            rest,
        ))
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
    }

    #[test]
    fn duplicates_keep_the_smallest_tag() {
        let s = DomainSet::build([("x.example", 7), ("x.example", 3), ("y.example", 1)]).unwrap();
        assert_eq!(s.get(b"x.example"), Some(3));
    }

    #[test]
    fn tags_cost_nothing_until_one_is_not_zero() {
        let mut s = DomainSet::build([("a.example", 0), ("b.example", 0)]).unwrap();
        assert!(s.own.tags.is_empty());
        s.insert(b"c.example", 5).unwrap();
        s.insert(b"a.example", 2).unwrap();
        assert_eq!(s.get(b"a.example"), Some(0), "0 stays the smallest");
        assert_eq!(s.get(b"b.example"), Some(0));
        assert_eq!(s.get(b"c.example"), Some(5));
        let mut buf = Vec::new();
        s.write_to(&mut buf);
        let (t, _) = DomainSet::read_from(&buf).unwrap();
        assert_eq!(t.iter().collect::<Vec<_>>(), s.iter().collect::<Vec<_>>());

        let untagged = DomainSet::build([("a.example", 0)]).unwrap();
        let mut buf = Vec::new();
        untagged.write_to(&mut buf);
        let (t, _) = DomainSet::read_from(&buf).unwrap();
        assert!(t.own.tags.is_empty(), "an all-zero set loads without tags");
        assert!(
            DomainSet::default()
                .insert("x".repeat(256).as_bytes(), 0)
                .is_err()
        );
        assert_eq!(t.get(b"a.example"), Some(0));
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
        let (t, rest) = DomainSet::read_from(&buf).unwrap();
        assert_eq!(rest, b"tail");
        assert_eq!(t.len(), 5000);
        for n in &names {
            assert_eq!(t.get(n.as_bytes()), Some(1));
        }
        for cut in [0, 7, 15, 100, buf.len() - 5] {
            assert!(DomainSet::read_from(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[16] = 0xff; // first end offset beyond the arena
        bad[17] = 0xff;
        bad[18] = 0xff;
        assert!(DomainSet::read_from(&bad).is_err());
    }

    #[test]
    fn memory_is_close_to_the_names() {
        let names: Vec<String> = (0..100_000)
            .map(|i| format!("tracker-{i}.ads.example.com"))
            .collect();
        let bytes: usize = names.iter().map(String::len).sum();
        let s = DomainSet::build(names.iter().map(|n| (n.as_str(), 0))).unwrap();
        // names + 1 (length) + at most 4*4 (table, load <= 1/2, rounded up) per name
        assert!(
            s.heap_bytes() <= bytes + names.len() * 17,
            "{} vs {bytes}",
            s.heap_bytes()
        );
    }

    fn layered(previous: &DomainSet, names: &[&str]) -> DomainSet {
        let mut s = DomainSet::against(previous);
        for n in names {
            s.insert(n.as_bytes(), 0).unwrap();
        }
        s.shrink_to_fit();
        s
    }

    fn flat_bytes(s: &DomainSet) -> Vec<u8> {
        let mut flat = DomainSet::default();
        for (n, t) in s.iter() {
            flat.insert(n, t).unwrap();
        }
        let mut buf = Vec::new();
        flat.write_to(&mut buf);
        buf
    }

    #[test]
    fn a_reload_shares_the_names_it_already_had() {
        let names: Vec<String> = (0..100).map(|i| format!("h{i}.example")).collect();
        let old = DomainSet::build(names.iter().map(|n| (n.as_str(), 0))).unwrap();
        let mut next: Vec<&str> = names.iter().skip(3).map(String::as_str).collect();
        next.extend(["new1.example", "new2.example", "h50.example"]);
        let s = layered(&old, &next);
        assert!(s.is_layered(), "a few percent changed: shared");
        assert_eq!(s.len(), 99);
        assert_eq!(s.get(b"h0.example"), None, "a removed name is gone");
        assert_eq!(s.get(b"h3.example"), Some(0));
        assert_eq!(s.get(b"new2.example"), Some(0));
        assert_eq!(
            s.find_suffix(b"a.new1.example", false).map(|x| x.0),
            Some(&b"new1.example"[..])
        );
        assert_eq!(old.get(b"h0.example"), Some(0), "the old copy is untouched");
        assert!(old.get(b"new1.example").is_none());

        let mut buf = Vec::new();
        s.write_to(&mut buf);
        assert_eq!(buf, flat_bytes(&s), "stored like a flat set");
        let (t, _) = DomainSet::read_from(&buf).unwrap();
        assert!(!t.is_layered());
        assert_eq!(t.len(), 99);

        // Layering on a layered set goes to its base: one level, whatever the history.
        let again = layered(&s, &["h5.example", "new2.example"]);
        assert!(!again.is_layered(), "most names gone: flattened");
        assert_eq!(again.len(), 2);
        let s2 = layered(&s, &next);
        assert!(s2.is_layered());
        assert!(Arc::ptr_eq(&s2.base.as_ref().unwrap().names, &old.own));
        assert_eq!(s2.iter().count(), 99);
    }

    #[test]
    fn a_list_that_changed_a_lot_is_rebuilt_flat() {
        let old = set(&["a.example", "b.example", "c.example", "d.example"]);
        let s = layered(&old, &["a.example", "x.example", "y.example"]);
        assert!(!s.is_layered());
        assert_eq!(
            s.iter().map(|(n, _)| n.to_vec()).collect::<Vec<_>>(),
            [
                b"a.example".to_vec(),
                b"x.example".to_vec(),
                b"y.example".to_vec()
            ]
        );
        assert_eq!(s.get(b"b.example"), None);
        assert!(
            layered(&DomainSet::default(), &["a.example"])
                .get(b"a.example")
                .is_some()
        );
    }
}
