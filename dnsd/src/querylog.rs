//! The query log: a ring of fixed-size slots in one file (under /data), so that its size
//! on disk is fixed, the oldest records are overwritten in place, and it survives a
//! restart. Each slot carries its sequence number and a CRC, so a torn write (power cut,
//! kill) costs at most the records being written and never the rest of the ring.
//!
//! Layout: a 256-byte header (`DNSDQLOG`, format version, slot size, slot count), then
//! `slots` slots of 256 bytes: `seq u64 | crc32 u32 | len u16 | payload`, little endian.
//! The record with sequence number `s` (from 1) lives in slot `(s - 1) % slots`. An empty
//! slot has `seq` 0. The CRC covers `seq`, `len` and the payload.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// Bytes per slot, and of the header.
pub const SLOT: usize = 256;
const MAGIC: &[u8; 8] = b"DNSDQLOG";
const VERSION: u32 = 1;
/// seq + crc + len.
const SLOT_HEAD: usize = 8 + 4 + 2;
const MAX_PAYLOAD: usize = SLOT - SLOT_HEAD;
/// Slots read at once when scanning: 1 MiB.
const CHUNK_SLOTS: u64 = 4096;

/// Why the query log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueryLogError {
    #[error("query log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How a query was answered, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Blocked; `source` is where the rule came from (`list ads`, `group kids`,
    /// `dns settings`).
    Blocked {
        source: String,
        rule: String,
    },
    Cached,
    /// From the cache past its TTL, because every upstream failed.
    Stale,
    Forwarded {
        upstream: String,
    },
    /// A local name (config records, the router's name).
    Local,
    /// SERVFAIL: no upstream answered.
    Failed,
    /// FORMERR, NOTIMP, REFUSED (rate limit).
    Rejected,
}

impl Outcome {
    fn tag(&self) -> u8 {
        match self {
            Outcome::Blocked { .. } => 1,
            Outcome::Cached => 2,
            Outcome::Stale => 3,
            Outcome::Forwarded { .. } => 4,
            Outcome::Local => 5,
            Outcome::Failed => 6,
            Outcome::Rejected => 7,
        }
    }

    /// One word for the outcome: `blocked`, `cached`, `stale`, `forwarded`, `local`,
    /// `failed`, `rejected`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Blocked { .. } => "blocked",
            Outcome::Cached => "cached",
            Outcome::Stale => "stale",
            Outcome::Forwarded { .. } => "forwarded",
            Outcome::Local => "local",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One answered query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub client: IpAddr,
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: RecordType,
    pub outcome: Outcome,
    pub rcode: ResponseCode,
    /// From the query's arrival until the answer was handed to the socket.
    pub latency_us: u32,
}

impl Record {
    /// The record as the control API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "time_ms": self.time_ms,
            "client": self.client.to_string(),
            "name": self.name,
            "type": self.qtype.to_string(),
            "outcome": self.outcome.kind(),
            "rcode": rcode_name(self.rcode),
            "latency_us": self.latency_us,
        });
        if let Some(o) = v.as_object_mut() {
            match &self.outcome {
                Outcome::Blocked { source, rule } => {
                    o.insert("source".into(), source.clone().into());
                    o.insert("rule".into(), rule.clone().into());
                }
                Outcome::Forwarded { upstream } => {
                    o.insert("upstream".into(), upstream.clone().into());
                }
                _ => {}
            }
        }
        v
    }

    /// The payload of a slot. Long rules, sources and names are cut to fit (at a char
    /// boundary), rules first, since a name is what a reader looks for.
    fn encode(&self, out: &mut Vec<u8>) {
        let base = out.len();
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.latency_us.to_le_bytes());
        out.extend_from_slice(&u16::from(self.qtype).to_le_bytes());
        out.extend_from_slice(&u16::from(self.rcode).to_le_bytes());
        match self.client {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        out.push(self.outcome.tag());
        let (a, b) = match &self.outcome {
            Outcome::Blocked { source, rule } => (source.as_str(), rule.as_str()),
            Outcome::Forwarded { upstream } => (upstream.as_str(), ""),
            _ => ("", ""),
        };
        // Three length bytes follow the fixed part.
        let room = MAX_PAYLOAD.saturating_sub(out.len() - base + 3);
        let name = cut(&self.name, room);
        let a = cut(a, room - name.len());
        let b = cut(b, room - name.len() - a.len());
        for s in [name, a, b] {
            out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(s.as_bytes());
        }
    }

    fn decode(p: &[u8]) -> Option<Self> {
        let mut r = Reader(p);
        let time_ms = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let latency_us = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let qtype = RecordType::from(u16::from_le_bytes(r.take(2)?.try_into().ok()?));
        let rcode =
            <ResponseCode as From<u16>>::from(u16::from_le_bytes(r.take(2)?.try_into().ok()?));
        let client = match r.take(1)?.first()? {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).ok()?)),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).ok()?)),
            _ => return None,
        };
        let tag = *r.take(1)?.first()?;
        let name = r.string()?;
        let a = r.string()?;
        let b = r.string()?;
        let outcome = match tag {
            1 => Outcome::Blocked { source: a, rule: b },
            2 => Outcome::Cached,
            3 => Outcome::Stale,
            4 => Outcome::Forwarded { upstream: a },
            5 => Outcome::Local,
            6 => Outcome::Failed,
            7 => Outcome::Rejected,
            _ => return None,
        };
        Some(Self {
            time_ms,
            client,
            name,
            qtype,
            outcome,
            rcode,
            latency_us,
        })
    }
}

/// The mnemonic dig prints (`NOERROR`, `NXDOMAIN`, ...).
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn cut(s: &str, max: usize) -> &str {
    let max = max.min(usize::from(u8::MAX));
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::from(*self.take(1)?.first()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// CRC-32 (IEEE) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        // `i < 256` by the loop; slices' `get_mut` is not const yet.
        #[allow(clippy::indexing_slicing)]
        {
            t[i] = c;
        }
        i += 1;
    }
    t
};

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            let i = usize::from((crc as u8) ^ b);
            crc = (crc >> 8) ^ CRC_TABLE.get(i).copied().unwrap_or(0);
        }
    }
    !crc
}

fn encode_slot(seq: u64, record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + SLOT_HEAD, 0);
    record.encode(out);
    let len = out.len() - start - SLOT_HEAD;
    let len16 = u16::try_from(len).unwrap_or(0).to_le_bytes();
    let seq_b = seq.to_le_bytes();
    let crc = crc32(&[&seq_b, &len16, out.get(start + SLOT_HEAD..).unwrap_or(&[])]);
    let mut head = [0u8; SLOT_HEAD];
    head[..8].copy_from_slice(&seq_b);
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    head[12..14].copy_from_slice(&len16);
    if let Some(h) = out.get_mut(start..start + SLOT_HEAD) {
        h.copy_from_slice(&head);
    }
    out.resize(start + SLOT, 0);
}

/// The sequence number and record of a slot, if it holds an intact one.
fn decode_slot(slot: &[u8]) -> Option<(u64, Record)> {
    let seq = u64::from_le_bytes(slot.get(..8)?.try_into().ok()?);
    if seq == 0 {
        return None;
    }
    let crc = u32::from_le_bytes(slot.get(8..12)?.try_into().ok()?);
    let len_b = slot.get(12..14)?;
    let len = usize::from(u16::from_le_bytes(len_b.try_into().ok()?));
    let payload = slot.get(SLOT_HEAD..SLOT_HEAD + len)?;
    if crc32(&[&seq.to_le_bytes(), len_b, payload]) != crc {
        return None;
    }
    Some((seq, Record::decode(payload)?))
}

/// Which records `recent` returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub client: Option<IpAddr>,
    /// The name or any name under it.
    pub domain: Option<String>,
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        self.client.is_none_or(|c| c == r.client)
            && self.domain.as_deref().is_none_or(|d| {
                r.name == d
                    || r.name
                        .strip_suffix(d)
                        .is_some_and(|head| head.ends_with('.'))
            })
    }
}

/// The ring file. One writer appends (the log task); readers may read at any time, and
/// skip a slot being rewritten under them because its sequence number or CRC is off.
#[derive(Debug)]
pub struct QueryLog {
    path: PathBuf,
    file: File,
    slots: u64,
    /// Sequence number of the next record.
    next: AtomicU64,
}

impl QueryLog {
    /// Opens the ring at `path` with room for `size` bytes, or creates it. Returns `None`
    /// when `size` holds fewer than two slots (the config's way to turn the log off). A
    /// file of another size or format is started afresh.
    pub fn open(path: &Path, size: u64) -> Result<Option<Self>, QueryLogError> {
        let io_err = |source| QueryLogError::Io {
            path: path.to_owned(),
            source,
        };
        let slots = Self::slots_for(size);
        if slots < 2 {
            return Ok(None);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let header = header(slots);
        let mut found = [0u8; SLOT];
        let matches = file.read_exact_at(&mut found, 0).is_ok()
            && found == header
            && file.metadata().map_err(io_err)?.len() == (slots + 1) * SLOT as u64;
        let log = Self {
            path: path.to_owned(),
            file,
            slots,
            next: AtomicU64::new(1),
        };
        if matches {
            let last = log.scan().map_err(io_err)?;
            log.next.store(last + 1, Ordering::Release);
            tracing::info!(path = %path.display(), records = log.len(), "query log opened");
        } else {
            if found.iter().any(|b| *b != 0) {
                tracing::warn!(path = %path.display(), "query log has another size or format; starting it afresh");
            }
            log.file.set_len(0).map_err(io_err)?;
            log.file
                .set_len((slots + 1) * SLOT as u64)
                .map_err(io_err)?;
            log.file.write_all_at(&header, 0).map_err(io_err)?;
        }
        Ok(Some(log))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a ring of `size` bytes holds (under 2: the log is off).
    pub fn slots_for(size: u64) -> u64 {
        (size / SLOT as u64).saturating_sub(1)
    }

    /// This ring at `size` bytes, keeping its newest records (as many as fit, renumbered
    /// from 1): written beside it, synced, and renamed over it, so that a crash leaves one
    /// whole ring or the other. `None` when `size` turns the log off (the file is left as
    /// it is, as at a start with the log off). Readers of this ring keep reading the old
    /// file until they drop it; the caller must stop appending to it first.
    pub fn resized(&self, size: u64) -> Result<Option<Self>, QueryLogError> {
        let slots = Self::slots_for(size);
        if slots < 2 {
            return Ok(None);
        }
        let tmp = self.path.with_extension("resize");
        let written = self.copy_newest(&tmp, slots);
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(QueryLogError::Io { path: tmp, source });
        }
        Self::open(&self.path, size)
    }

    fn copy_newest(&self, tmp: &Path, slots: u64) -> io::Result<()> {
        let _ = std::fs::remove_file(tmp);
        let file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        file.set_len((slots + 1) * SLOT as u64)?;
        file.write_all_at(&header(slots), 0)?;
        let next = self.next.load(Ordering::Acquire);
        let oldest = next.saturating_sub(self.slots).max(1);
        let mut seq = next.saturating_sub(slots).max(oldest);
        let mut new_seq = 1u64;
        let mut buf = vec![0u8; CHUNK_SLOTS as usize * SLOT];
        let mut out = Vec::with_capacity(buf.len());
        // Forward in chunks that do not cross the end of the old file; damaged slots
        // are left out, as a read would skip them.
        while seq < next {
            let slot = (seq - 1) % self.slots;
            let n = (next - seq).min(CHUNK_SLOTS).min(self.slots - slot);
            let bytes = buf.get_mut(..n as usize * SLOT).unwrap_or_default();
            self.file.read_exact_at(bytes, (slot + 1) * SLOT as u64)?;
            out.clear();
            let first_new = new_seq;
            for (i, raw) in bytes.chunks_exact(SLOT).enumerate() {
                if let Some((found, r)) = decode_slot(raw)
                    && found == seq + i as u64
                {
                    encode_slot(new_seq, &r, &mut out);
                    new_seq += 1;
                }
            }
            file.write_all_at(&out, first_new * SLOT as u64)?;
            seq += n;
        }
        file.sync_all()?;
        std::fs::rename(tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Records the ring can hold.
    pub fn capacity(&self) -> u64 {
        self.slots
    }

    /// Records held now.
    pub fn len(&self) -> u64 {
        (self.next.load(Ordering::Acquire) - 1).min(self.slots)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest intact sequence number in the file, 0 if none. Reads only the
    /// sequence numbers of the whole ring, then checks the CRC of the newest ones until
    /// one is intact: a restart reads 64 MiB, but checks one slot or a few.
    fn scan(&self) -> io::Result<u64> {
        let mut seqs = Vec::new();
        let mut buf = vec![0u8; CHUNK_SLOTS as usize * SLOT];
        let mut first = 0;
        while first < self.slots {
            let n = CHUNK_SLOTS.min(self.slots - first);
            let bytes = buf.get_mut(..n as usize * SLOT).unwrap_or_default();
            self.file.read_exact_at(bytes, (first + 1) * SLOT as u64)?;
            for (i, slot) in bytes.chunks_exact(SLOT).enumerate() {
                let seq = slot
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                if seq != 0 && (seq - 1) % self.slots == first + i as u64 {
                    seqs.push(seq);
                }
            }
            first += n;
        }
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        let mut slot = [0u8; SLOT];
        for seq in seqs {
            self.file
                .read_exact_at(&mut slot, ((seq - 1) % self.slots + 1) * SLOT as u64)?;
            if decode_slot(&slot).is_some_and(|(s, _)| s == seq) {
                return Ok(seq);
            }
        }
        Ok(0)
    }

    /// Appends records, overwriting the oldest. Only one task may call this.
    pub fn append(&self, records: &[Record]) -> io::Result<()> {
        let mut seq = self.next.load(Ordering::Acquire);
        let mut buf = Vec::with_capacity(records.len() * SLOT);
        let mut run_start = seq;
        for r in records {
            encode_slot(seq, r, &mut buf);
            seq += 1;
            // A run stops at the end of the file; the next one starts at slot 0.
            if (seq - 1).is_multiple_of(self.slots) {
                self.write_run(run_start, &buf)?;
                buf.clear();
                run_start = seq;
            }
        }
        if !buf.is_empty() {
            self.write_run(run_start, &buf)?;
        }
        self.next.store(seq, Ordering::Release);
        Ok(())
    }

    fn write_run(&self, first_seq: u64, bytes: &[u8]) -> io::Result<()> {
        let slot = (first_seq - 1) % self.slots;
        self.file.write_all_at(bytes, (slot + 1) * SLOT as u64)
    }

    /// Flushes written records to the disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Up to `limit` records matching `filter`, newest first.
    pub fn recent(&self, limit: usize, filter: &Filter) -> io::Result<Vec<Record>> {
        let next = self.next.load(Ordering::Acquire);
        let oldest = next.saturating_sub(self.slots).max(1);
        let mut out = Vec::new();
        let mut buf = vec![0u8; CHUNK_SLOTS as usize * SLOT];
        // Walk back from the newest in chunks that do not cross the end of the file.
        let mut hi = next; // exclusive
        while hi > oldest && out.len() < limit {
            let hi_slot = (hi - 2) % self.slots; // slot of seq hi - 1
            let n = (hi - oldest).min(CHUNK_SLOTS).min(hi_slot + 1);
            let lo = hi - n;
            let first_slot = (lo - 1) % self.slots;
            let bytes = buf.get_mut(..n as usize * SLOT).unwrap_or_default();
            self.file
                .read_exact_at(bytes, (first_slot + 1) * SLOT as u64)?;
            for (i, slot) in bytes.chunks_exact(SLOT).enumerate().rev() {
                let want = lo + i as u64;
                if let Some((seq, r)) = decode_slot(slot)
                    && seq == want
                    && filter.matches(&r)
                {
                    out.push(r);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            hi = lo;
        }
        Ok(out)
    }
}

fn header(slots: u64) -> [u8; SLOT] {
    let mut h = [0u8; SLOT];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SLOT as u32).to_le_bytes());
    h[16..24].copy_from_slice(&slots.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            time_ms: 1_700_000_000_000 + i,
            client: IpAddr::V4(Ipv4Addr::new(192, 168, 1, (i % 7) as u8)),
            name: format!("n{i}.example"),
            qtype: RecordType::A,
            outcome: if i.is_multiple_of(2) {
                Outcome::Blocked {
                    source: "list ads".into(),
                    rule: "example".into(),
                }
            } else {
                Outcome::Forwarded {
                    upstream: "9.9.9.9:53".into(),
                }
            },
            rcode: ResponseCode::NoError,
            latency_us: 123,
        }
    }

    fn size(slots: u64) -> u64 {
        (slots + 1) * SLOT as u64
    }

    fn names(rs: &[Record]) -> Vec<String> {
        rs.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn a_record_round_trips_and_long_fields_are_cut() {
        let mut r = rec(1);
        r.client = "fd00::7".parse().unwrap();
        r.rcode = ResponseCode::BADCOOKIE; // an extended rcode
        r.qtype = RecordType::HTTPS;
        let mut buf = Vec::new();
        encode_slot(9, &r, &mut buf);
        assert_eq!(buf.len(), SLOT);
        assert_eq!(decode_slot(&buf), Some((9, r.clone())));

        r.name = format!("{}.example", "a".repeat(240));
        r.outcome = Outcome::Blocked {
            source: "list ads".into(),
            rule: format!("/{}/", "é".repeat(100)),
        };
        buf.clear();
        encode_slot(10, &r, &mut buf);
        assert_eq!(buf.len(), SLOT);
        let (_, back) = decode_slot(&buf).unwrap();
        assert!(r.name.starts_with(&back.name) && back.name.len() > 190);
        let Outcome::Blocked { rule, .. } = back.outcome else {
            panic!()
        };
        assert!(rule.is_empty(), "the rule goes first: {rule}");
    }

    #[test]
    fn a_resize_keeps_the_newest_records_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let log = QueryLog::open(&path, size(10)).unwrap().unwrap();
        log.append(&(1..=25).map(rec).collect::<Vec<_>>()).unwrap();
        let newest = |log: &QueryLog| names(&log.recent(100, &Filter::default()).unwrap());
        // Smaller: the newest 4, across the old file's end (slots 4..=24 wrapped).
        let small = log.resized(size(4)).unwrap().unwrap();
        assert_eq!(small.capacity(), 4);
        assert_eq!(small.len(), 4);
        let want: Vec<String> = (22..=25).rev().map(|i| format!("n{i}.example")).collect();
        assert_eq!(newest(&small), want);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size(4));
        // Larger: all 4 kept, and appending goes on after them.
        let big = small.resized(size(50)).unwrap().unwrap();
        assert_eq!((big.capacity(), big.len()), (50, 4));
        big.append(&[rec(26)]).unwrap();
        assert_eq!(newest(&big)[..2], ["n26.example", "n25.example"]);
        // Reopened as at a restart: the same ring.
        drop(big);
        let again = QueryLog::open(&path, size(50)).unwrap().unwrap();
        assert_eq!(again.len(), 5);
        assert!(again.resized(100).unwrap().is_none(), "too small: off");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn the_ring_wraps_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueryLog::open(&dir.path().join("q"), size(10))
            .unwrap()
            .unwrap();
        assert_eq!(log.capacity(), 10);
        let all: Vec<Record> = (1..=25).map(rec).collect();
        // Batches of odd sizes cross the end of the file mid-batch.
        for batch in all.chunks(7) {
            log.append(batch).unwrap();
        }
        assert_eq!(log.len(), 10);
        let got = log.recent(100, &Filter::default()).unwrap();
        let want: Vec<String> = (16..=25).rev().map(|i| format!("n{i}.example")).collect();
        assert_eq!(names(&got), want);
        assert_eq!(
            names(&log.recent(3, &Filter::default()).unwrap()),
            want[..3]
        );
        assert_eq!(
            std::fs::metadata(log.path()).unwrap().len(),
            size(10),
            "the file never grows"
        );
    }

    #[test]
    fn filters_by_client_and_domain() {
        let dir = tempfile::tempdir().unwrap();
        let log = QueryLog::open(&dir.path().join("q"), size(50))
            .unwrap()
            .unwrap();
        let mut rs: Vec<Record> = (1..=20).map(rec).collect();
        rs[4].name = "x.ads.example".into();
        rs[5].name = "ads.example".into();
        rs[6].name = "bads.example".into();
        log.append(&rs).unwrap();
        let f = Filter {
            domain: Some("ads.example".into()),
            client: None,
        };
        assert_eq!(
            names(&log.recent(10, &f).unwrap()),
            ["ads.example", "x.ads.example"]
        );
        let f = Filter {
            client: Some("192.168.1.3".parse().unwrap()),
            domain: None,
        };
        assert_eq!(
            names(&log.recent(10, &f).unwrap()),
            ["n17.example", "n10.example", "n3.example"]
        );
    }

    #[test]
    fn a_restart_continues_where_the_ring_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        {
            let log = QueryLog::open(&path, size(8)).unwrap().unwrap();
            log.append(&(1..=13).map(rec).collect::<Vec<_>>()).unwrap();
        }
        let log = QueryLog::open(&path, size(8)).unwrap().unwrap();
        assert_eq!(log.len(), 8);
        log.append(&[rec(14)]).unwrap();
        let got = log.recent(100, &Filter::default()).unwrap();
        let want: Vec<String> = (7..=14).rev().map(|i| format!("n{i}.example")).collect();
        assert_eq!(names(&got), want);

        // Another size starts afresh.
        let log = QueryLog::open(&path, size(4)).unwrap().unwrap();
        assert!(log.is_empty());
        assert!(
            QueryLog::open(&path, 300).unwrap().is_none(),
            "too small: off"
        );
    }

    #[test]
    fn a_torn_or_corrupt_slot_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        {
            let log = QueryLog::open(&path, size(16)).unwrap().unwrap();
            log.append(&(1..=10).map(rec).collect::<Vec<_>>()).unwrap();
        }
        // The last record torn (half written), one in the middle with a flipped bit.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xAA; 100], 10 * SLOT as u64 + 40).unwrap();
        f.write_all_at(&[0x01], 4 * SLOT as u64 + 20).unwrap();
        drop(f);
        let log = QueryLog::open(&path, size(16)).unwrap().unwrap();
        let got = log.recent(100, &Filter::default()).unwrap();
        let want: Vec<String> = [9, 8, 7, 6, 5, 3, 2, 1]
            .iter()
            .map(|i| format!("n{i}.example"))
            .collect();
        assert_eq!(names(&got), want);
        // The torn slot is overwritten by the next record.
        assert_eq!(log.len(), 9);
        log.append(&[rec(99)]).unwrap();
        assert_eq!(
            log.recent(1, &Filter::default()).unwrap()[0].name,
            "n99.example"
        );
    }
}
