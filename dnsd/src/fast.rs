//! The UDP fast path: plain queries for blocked and cached names answered straight from
//! the wire, without hickory's decoding, its per-query task and its encoder.
//!
//! Only the common shape is taken: one question of letters, digits, `-` and `_` in class
//! IN, no records but an optional EDNS OPT of version 0 without options. Anything else
//! (and every name, local or forwarded, that is not blocked or cached) goes to the
//! hickory path unchanged, so the fast path only has to agree with it on the easy cases;
//! `tests/fast.rs` checks that both give the same bytes, and `cargo xtask fuzz dns_fast`
//! checks the parser against hickory's.
//!
//! Blocked answers are encoded here the way hickory's encoder writes them (its name
//! compression included). Cached answers are the bytes the hickory path sent for the same
//! query, kept with the offsets of their TTLs: the ID is patched and the TTLs are lowered
//! by the time spent in the cache, as [`crate::cache::Cache::get`] does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use appliance::model::BlockMode;

use crate::answer::BLOCK_TTL;

const OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// hickory's cap on names it will try to compress against (`COMPRESSION_CANDIDATE_LIMIT`).
const POINTER_CANDIDATES: usize = 64;

/// The EDNS of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub dnssec_ok: bool,
}

/// A query the fast path can answer, read from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// Where the question section ends (after QTYPE and QCLASS).
    pub question_end: usize,
    pub qtype: u16,
    pub edns: Option<Edns>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Reads a query of the one shape the fast path answers; `name` gets the name in lowercase
/// without the final dot (as [`crate::policy::Policy::decide`] takes it). `None` means:
/// hand the packet to the hickory path.
pub fn parse(packet: &[u8], name: &mut String) -> Option<Question> {
    name.clear();
    let header = packet.get(..12)?;
    let (b2, b3) = (*header.get(2)?, *header.get(3)?);
    // A query (QR 0), opcode QUERY, AA and TC clear; RA, Z and the rcode bits clear.
    if b2 & 0xfe != 0 || b3 & 0xcf != 0 {
        return None;
    }
    let counts = (
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    );
    let additional = match counts {
        (1, 0, 0, n @ (0 | 1)) => n,
        _ => return None,
    };
    let mut pos = 12;
    loop {
        let len = usize::from(*packet.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        // Pointers (and the reserved 0x40/0x80 forms) are above 63.
        if len > 63 {
            return None;
        }
        let label = packet.get(pos + 1..pos + 1 + len)?;
        if !label.iter().all(|c| name_byte(*c)) {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|c| char::from(c.to_ascii_lowercase())));
        pos += 1 + len;
        if pos - 12 > 254 {
            return None;
        }
    }
    if name.is_empty() {
        return None;
    }
    let qtype = u16_at(packet, pos)?;
    let qclass = u16_at(packet, pos + 2)?;
    // OPT, meta types and ANY stay with hickory, which has its own rules for them.
    if qclass != CLASS_IN || qtype == 0 || qtype == OPT || qtype >= 128 {
        return None;
    }
    let question_end = pos + 4;
    let edns = if additional == 1 {
        // Root owner, type OPT, class = payload, TTL = rcode, version, DO + Z, no options.
        let opt = packet.get(question_end..)?;
        if opt.len() != 11 || opt.first() != Some(&0) || u16_at(opt, 1)? != OPT {
            return None;
        }
        let payload = u16_at(opt, 3)?;
        let (rcode, version, flags, rdlen) =
            (*opt.get(5)?, *opt.get(6)?, u16_at(opt, 7)?, u16_at(opt, 9)?);
        if rcode != 0 || version != 0 || flags & 0x7fff != 0 || rdlen != 0 {
            return None;
        }
        Some(Edns {
            payload,
            dnssec_ok: flags & 0x8000 != 0,
        })
    } else {
        if packet.len() != question_end {
            return None;
        }
        None
    };
    Some(Question {
        id: u16_at(packet, 0)?,
        recursion_desired: b2 & 1 != 0,
        checking_disabled: b3 & 0x10 != 0,
        question_end,
        qtype,
        edns,
    })
}

/// Writes names the way hickory's `BinEncoder` does: each name in full unless a suffix of
/// it equals, byte for byte, a suffix of a name written before (then a pointer), and every
/// suffix written is a candidate for later names.
struct Encoder<'a> {
    buf: &'a mut Vec<u8>,
    /// Where each candidate was written, and its bytes as written then (a later pointer
    /// may have replaced the end of a name in the buffer; hickory keeps copies too).
    candidates: Vec<(usize, Vec<u8>)>,
}

impl Encoder<'_> {
    fn pointer_to(&self, start: usize, end: usize) -> Option<usize> {
        let want = self.buf.get(start..end)?;
        self.candidates
            .iter()
            .find_map(|(at, bytes)| (bytes.as_slice() == want && *at < 0x3fff).then_some(*at))
    }

    /// `name`: dotted, without the final dot, of valid labels.
    fn name(&mut self, name: &str) {
        let mut starts = [0usize; 128];
        let mut n = 0;
        for label in name.split('.') {
            if let Some(s) = starts.get_mut(n) {
                *s = self.buf.len();
                n += 1;
            }
            self.buf
                .push(u8::try_from(label.len()).unwrap_or(63).min(63));
            self.buf.extend_from_slice(label.as_bytes());
        }
        let end = self.buf.len();
        for &start in starts.iter().take(n) {
            if let Some(at) = self.pointer_to(start, end) {
                self.buf.truncate(start);
                let p = 0xc000u16 | u16::try_from(at).unwrap_or(0);
                self.buf.extend_from_slice(&p.to_be_bytes());
                return;
            }
            if self.buf.len() < 0x3fff && self.candidates.len() < POINTER_CANDIDATES {
                let bytes = self.buf.get(start..end).unwrap_or_default().to_vec();
                self.candidates.push((start, bytes));
            }
        }
        self.buf.push(0);
    }

    fn record_head(&mut self, owner: &str, rtype: u16, ttl: u32) {
        self.name(owner);
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
    }

    fn rdata(&mut self, write: impl FnOnce(&mut Self)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        write(self);
        let len = u16::try_from(self.buf.len() - at - 2).unwrap_or(0);
        if let Some(slot) = self.buf.get_mut(at..at + 2) {
            slot.copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// The candidates hickory keeps for the question it copies: the whole section, which no
/// name can match, but it counts against the limit.
fn encoder_after_question(buf: &mut Vec<u8>, question_end: usize) -> Encoder<'_> {
    let candidates = vec![(12, buf.get(12..question_end).unwrap_or_default().to_vec())];
    // The question's own bytes are compared with the name bytes, which lack QTYPE/QCLASS:
    // they never match, as in hickory.
    Encoder { buf, candidates }
}

const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// Writes the answer for a blocked name, as [`crate::answer::blocked`] and hickory's
/// encoder would (see `tests/fast.rs`). `name` is the lowercase name [`parse`] gave.
pub fn blocked(
    out: &mut Vec<u8>,
    packet: &[u8],
    q: &Question,
    name: &str,
    mode: BlockMode,
    custom: &[IpAddr],
) -> Option<u8> {
    const NULL: [IpAddr; 2] = [
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    ];
    let addresses: &[IpAddr] = match mode {
        BlockMode::Nxdomain | BlockMode::Nodata => &[],
        BlockMode::Null => &NULL,
        BlockMode::Custom if custom.is_empty() => &NULL,
        BlockMode::Custom => custom,
    };
    let wanted = |ip: &&IpAddr| matches!((q.qtype, ip), (1, IpAddr::V4(_)) | (28, IpAddr::V6(_)));
    let answers = addresses.iter().filter(wanted).count();
    let rcode = if mode == BlockMode::Nxdomain {
        RCODE_NXDOMAIN
    } else {
        RCODE_NOERROR
    };
    let authorities = usize::from(answers == 0);
    out.clear();
    out.extend_from_slice(&q.id.to_be_bytes());
    out.push(0x80 | u8::from(q.recursion_desired));
    out.push(0x80 | if q.checking_disabled { 0x10 } else { 0 } | rcode);
    for count in [1, answers, authorities, usize::from(q.edns.is_some())] {
        out.extend_from_slice(&u16::try_from(count).ok()?.to_be_bytes());
    }
    out.extend_from_slice(packet.get(12..q.question_end)?);
    let mut enc = encoder_after_question(out, q.question_end);
    for ip in addresses.iter().filter(wanted) {
        match ip {
            IpAddr::V4(v4) => {
                enc.record_head(name, 1, BLOCK_TTL);
                enc.rdata(|e| e.buf.extend_from_slice(&v4.octets()));
            }
            IpAddr::V6(v6) => {
                enc.record_head(name, 28, BLOCK_TTL);
                enc.rdata(|e| e.buf.extend_from_slice(&v6.octets()));
            }
        }
    }
    if authorities == 1 {
        // The SOA of `answer::soa`, owned by the name itself.
        enc.record_head(name, 6, BLOCK_TTL);
        enc.rdata(|e| {
            e.name("dnsd.invalid");
            e.name("hostmaster.dnsd.invalid");
            for v in [1u32, 3600, 600, 86400, BLOCK_TTL] {
                e.buf.extend_from_slice(&v.to_be_bytes());
            }
        });
    }
    if let Some(edns) = q.edns {
        write_opt(out, edns);
    }
    Some(rcode)
}

/// The OPT record of dnsd's own answers: hickory's `Edns::new()` sized for the client
/// (`server::answer_edns`).
fn write_opt(out: &mut Vec<u8>, edns: Edns) {
    out.push(0);
    out.extend_from_slice(&OPT.to_be_bytes());
    out.extend_from_slice(&edns.payload.max(512).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return Some(pos + 2),
            l if l & 0xc0 != 0 => return None,
            l => pos += 1 + usize::from(l),
        }
    }
}

/// The offsets of the TTL fields of every record of `response` but OPT, whose TTL field
/// holds flags. `None` for a response that cannot be read or is truncated.
pub fn ttl_offsets(response: &[u8]) -> Option<Vec<usize>> {
    if response.get(2)? & 0x02 != 0 {
        return None;
    }
    let qd = u16_at(response, 4)?;
    let records = u32::from(u16_at(response, 6)?)
        + u32::from(u16_at(response, 8)?)
        + u32::from(u16_at(response, 10)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(response, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..records {
        pos = skip_name(response, pos)?;
        let rtype = u16_at(response, pos)?;
        let rdlen = usize::from(u16_at(response, pos + 8)?);
        if rtype != OPT {
            out.push(pos + 4);
        }
        pos += 10 + rdlen;
    }
    (pos == response.len()).then_some(out)
}

/// A response of the hickory path to a cached query, kept to answer the same query again.
#[derive(Debug)]
struct Wire {
    response: Box<[u8]>,
    /// TTL fields: offset, and the TTL at `inserted` (0 stays 0).
    ttls: Vec<(usize, u32)>,
    inserted: Instant,
    /// Until then the cache would answer without asking for a prefetch.
    fresh_until: Instant,
}

/// Responses to cached names as sent, keyed by the query without its ID: the same bytes
/// (flags, question in the client's case, EDNS size and DO bit) get the same answer.
///
/// Bounded by the cache's capacity; when full it starts afresh, which costs each name a few
/// more trips through the hickory path. An answer is kept once the cache entry has the hits
/// a prefetch needs ([`crate::cache::PREFETCH_MIN_HITS`]), and only until the cache would
/// prefetch it (the last tenth of its TTL): the next query then takes the hickory path,
/// which starts the prefetch, so popular names are refreshed as before. The fast path's
/// answers do not mark the entry for the cache's CLOCK eviction: a name answered only here
/// may be evicted from the cache and is then answered here until `fresh_until`.
#[derive(Debug)]
pub struct WireCache {
    /// Follows `dns.cache_size` ([`WireCache::set_capacity`]).
    capacity: std::sync::atomic::AtomicUsize,
    entries: Mutex<HashMap<Box<[u8]>, Wire>>,
}

/// What the hickory path learned about a cache hit, for [`WireCache::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheHit {
    /// When the cache entry was stored.
    pub inserted: Instant,
    pub now: Instant,
    pub expires: Instant,
    pub ttl: u32,
    /// The cache's flush count when the entry was read ([`crate::cache::Cache::epoch`]).
    pub epoch: u64,
}

impl WireCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: std::sync::atomic::AtomicUsize::new(capacity),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A new bound; copies past it are dropped all at once, as when the map fills.
    pub fn set_capacity(&self, capacity: usize) {
        let mut entries = self.lock();
        self.capacity
            .store(capacity, std::sync::atomic::Ordering::Relaxed);
        if entries.len() > capacity {
            entries.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Wire>> {
        // Every write is one insert or clear: a panic cannot leave it half done.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `response`, the hickory path's answer to `query` from the cache.
    pub fn insert(&self, query: &[u8], response: &[u8], hit: CacheHit) {
        let capacity = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        if capacity == 0 || query.len() < 12 || response.len() < 12 {
            return;
        }
        let fresh_until = hit
            .expires
            .checked_sub(Duration::from_millis(u64::from(hit.ttl) * 100))
            .unwrap_or(hit.inserted);
        if fresh_until <= hit.now {
            return;
        }
        let Some(offsets) = ttl_offsets(response) else {
            return;
        };
        let elapsed = u32::try_from(hit.now.duration_since(hit.inserted).as_secs()).unwrap_or(0);
        let ttls = offsets
            .into_iter()
            .filter_map(|at| {
                let sent = u32::from_be_bytes(response.get(at..at + 4)?.try_into().ok()?);
                Some((
                    at,
                    if sent == 0 {
                        0
                    } else {
                        sent.saturating_add(elapsed)
                    },
                ))
            })
            .collect();
        let key: Box<[u8]> = query.get(2..).unwrap_or_default().into();
        let mut entries = self.lock();
        if entries.len() >= capacity && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Wire {
                response: response.into(),
                ttls,
                inserted: hit.inserted,
                fresh_until,
            },
        );
    }

    /// Writes the answer to `query` into `out` if a fresh one is kept.
    pub fn answer(&self, query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(key) = query.get(2..) else {
            return false;
        };
        let entries = self.lock();
        let Some(w) = entries.get(key) else {
            return false;
        };
        if now >= w.fresh_until {
            return false;
        }
        let elapsed = u32::try_from(now.duration_since(w.inserted).as_secs()).unwrap_or(u32::MAX);
        out.clear();
        out.extend_from_slice(&w.response);
        if let (Some(id), Some(q)) = (out.get_mut(..2), query.get(..2)) {
            id.copy_from_slice(q);
        }
        for (at, base) in &w.ttls {
            if let Some(slot) = out.get_mut(*at..*at + 4) {
                slot.copy_from_slice(&base.saturating_sub(elapsed).to_be_bytes());
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response to `id` with one A record (TTL 100) and an OPT record.
    fn response(id: u16) -> Vec<u8> {
        let mut r = id.to_be_bytes().to_vec();
        r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1]);
        r.extend_from_slice(&[1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 100, 0, 4, 192, 0, 2, 1]);
        r.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        r
    }

    #[test]
    fn ttl_offsets_skip_the_opt_record_and_refuse_truncated_answers() {
        let r = response(1);
        assert_eq!(ttl_offsets(&r), Some(vec![30]));
        let mut tc = r.clone();
        tc[2] |= 0x02;
        assert_eq!(ttl_offsets(&tc), None);
        assert_eq!(ttl_offsets(&r[..r.len() - 1]), None);
    }

    #[test]
    fn kept_answers_get_the_id_and_lowered_ttls_until_the_prefetch_window() {
        let cache = WireCache::new(2);
        let t0 = Instant::now();
        // Stored 10 s before, TTL 200: sent with 100 left of a record TTL of 110.
        let hit = CacheHit {
            inserted: t0,
            now: t0 + Duration::from_secs(10),
            expires: t0 + Duration::from_secs(200),
            ttl: 200,
            epoch: 0,
        };
        let mut query = vec![0, 1];
        query.extend_from_slice(b"rest of the query");
        cache.insert(&query, &response(1), hit);
        let mut out = Vec::new();
        query[..2].copy_from_slice(&[0xab, 0xcd]);
        assert!(cache.answer(&query, t0 + Duration::from_millis(30_500), &mut out));
        let mut want = response(0xabcd);
        want[30..34].copy_from_slice(&80u32.to_be_bytes());
        assert_eq!(out, want);
        // The last tenth of the TTL belongs to the hickory path, which prefetches.
        assert!(cache.answer(&query, t0 + Duration::from_secs(179), &mut out));
        assert!(!cache.answer(&query, t0 + Duration::from_secs(180), &mut out));
        // Another query (a flag differs) is another entry.
        query[2] = 0;
        assert!(!cache.answer(&query, t0 + Duration::from_secs(20), &mut out));
    }

    #[test]
    fn a_full_copy_table_starts_afresh() {
        let cache = WireCache::new(2);
        let t0 = Instant::now();
        let hit = CacheHit {
            inserted: t0,
            now: t0,
            expires: t0 + Duration::from_secs(100),
            ttl: 100,
            epoch: 0,
        };
        for i in 0..3u8 {
            cache.insert(&[0, 0, i, 0, 0, 0, 0, 0, 0, 0, 0, 0], &response(0), hit);
        }
        assert_eq!(cache.len(), 1);
    }
}
