//! The firewall service: plan against the kernel, apply, remember, revert.
//!
//! # How netd knows what the kernel holds
//!
//! Listing the table (`nft -j list`) is what nft does slowest: with a 100k-address set it
//! takes most of a second. So netd does not list after writing. It keeps what it wrote
//! last (the rendered ruleset) and the ruleset generation id the kernel reported right
//! after that write (`NFT_MSG_GETGEN`, bumped by every committed nftables transaction in
//! the namespace, anyone's). Before planning it reads the generation again, one netlink
//! round trip:
//!
//! - the same generation: nothing was committed since, the table is what netd wrote. An
//!   unchanged desired ruleset plans nothing (no nft call at all); a changed one plans the
//!   incremental commands from the record to it ([`incremental`]), one atomic `nft -j -f`.
//! - another generation, or no record (a first start, a lost state file): someone
//!   committed something, maybe to this table; netd re-renders and replaces the whole
//!   table in one transaction, and lists it first only to be able to revert to it.
//!
//! The generation read after a write is trusted only if it is the one read before plus
//! one (our transaction alone); otherwise the record is kept without a generation and the
//! next apply replaces the table.
//!
//! With [`Firewall::with_state_file`] the record is kept in a file too (under `/run`,
//! which is emptied at boot together with the kernel's tables and generation), so that a
//! restarted netd still plans nothing for an unchanged table.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;

use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::types::NfFamily;
use serde_json::Value;

use super::TABLE;
use super::diff::{ChainHandles, Changes, incremental};
use super::nft::{Nft, NftError};
use super::ruleset::{Networks, Ruleset, set_zone_addresses, verdict_maps_to_placeholder};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("nothing to revert: no apply has been recorded")]
    NothingToRevert,
    #[error("zone {0:?} has no address set in the applied firewall")]
    UnknownZone(String),
}

/// Packets and bytes per rule comment.
pub type RuleCounters = BTreeMap<String, (u64, u64)>;

/// What an apply would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallPlan {
    /// The kernel holds exactly the desired table.
    Nothing,
    /// Change the table in place (one transaction): the commands from the record to the
    /// desired ruleset.
    Update { ruleset: Ruleset, changes: Changes },
    /// Replace the table (one transaction), for the given reason.
    Replace {
        ruleset: Ruleset,
        reason: &'static str,
    },
}

impl FirewallPlan {
    pub fn is_nothing(&self) -> bool {
        matches!(self, Self::Nothing)
    }

    /// One line for plans and logs, `None` for nothing to do.
    pub fn describe(&self) -> Option<String> {
        match self {
            Self::Nothing => None,
            Self::Update { changes, .. } => Some(format!(
                "update table inet {TABLE} in place: {}",
                changes.summary()
            )),
            Self::Replace { reason, .. } => Some(format!("replace table inet {TABLE} ({reason})")),
        }
    }
}

/// What the kernel reports before a plan: the ruleset generation, and the handles of the
/// rules of the chains whose rules change (read only when some do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub generation: u32,
    pub handles: ChainHandles,
}

#[derive(Debug, Clone)]
struct Applied {
    /// Shared with `previous` and the state writer rather than copied (6000 objects).
    ruleset: Arc<Ruleset>,
    /// The generation right after netd's write; `None` when it could not be attributed
    /// to that write alone.
    generation: Option<u32>,
}

/// What the kernel held before the last apply, to go back to.
#[derive(Debug, Clone)]
enum Previous {
    Absent,
    Ruleset(Arc<Ruleset>),
    /// A table netd did not write (or no longer remembers writing), as nft listed it.
    Listing(Value),
}

#[derive(Debug)]
pub struct Firewall<N> {
    nft: N,
    applied: Option<Applied>,
    previous: Option<Previous>,
    /// Zone addresses learned at run time (a DHCP lease), which the config cannot know.
    zone_addresses: BTreeMap<String, Vec<Ipv4Addr>>,
    state: Option<StateWriter>,
}

impl<N: Nft> Firewall<N> {
    pub fn new(nft: N) -> Self {
        Self {
            nft,
            applied: None,
            previous: None,
            zone_addresses: BTreeMap::new(),
            state: None,
        }
    }

    /// Like [`Firewall::new`], remembering the last apply in `path` across restarts. A
    /// missing or unreadable file only costs one table replacement.
    pub fn with_state_file(nft: N, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut fw = Self::new(nft);
        let mut saved = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse_state(&text, &path) {
                Some((applied, zones)) => {
                    saved = applied
                        .as_ref()
                        .map(|a| a.ruleset.address_sets().clone())
                        .unwrap_or_default();
                    fw.applied = applied;
                    fw.zone_addresses = zones;
                }
                None => {
                    tracing::warn!(path = %path.display(), "firewall: ignoring a bad state file")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "firewall: cannot read state: {e}"),
        }
        fw.state = Some(StateWriter::start(path, saved));
        fw
    }

    /// Waits until the state file holds the last apply (it is written on a thread of its
    /// own, after the apply has returned).
    pub fn sync_state(&self) {
        if let Some(w) = &self.state {
            w.sync();
        }
    }

    pub fn nft(&self) -> &N {
        &self.nft
    }

    pub fn nft_mut(&mut self) -> &mut N {
        &mut self.nft
    }

    /// The ruleset generation now: all a plan needs from the kernel.
    pub fn observe(&self) -> Result<Observed, FirewallError> {
        Ok(Observed {
            generation: self.nft.generation()?,
            handles: ChainHandles::new(),
        })
    }

    /// The kernel's handles of the rules of `chains` (one rule dump each, no set element
    /// read), or `None` when they cannot be read or the generation moved meanwhile: the
    /// plan then rewrites those chains, as it would without handles.
    fn handles(&self, chains: &[String], generation: u32) -> Option<ChainHandles> {
        let mut out = ChainHandles::new();
        for chain in chains {
            match self.nft.rules(Some(chain)) {
                Ok(Some(rules)) => {
                    out.insert(
                        chain.clone(),
                        rules.into_iter().map(|r| (r.handle, r.comment)).collect(),
                    );
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(
                        chain,
                        "firewall: cannot read rule handles, rewriting the chain: {e}"
                    );
                    return None;
                }
            }
        }
        match self.nft.generation() {
            Ok(g) if g == generation => Some(out),
            _ => None,
        }
    }

    /// Packets and bytes per rule comment (a rule rendered once per family sums both), or
    /// `None` when the table does not exist. One rule dump: no set element is read, so
    /// it stays cheap with a 100k-address set.
    pub fn rule_counters(&self) -> Result<Option<RuleCounters>, FirewallError> {
        let Some(rules) = self.nft.rules(None)? else {
            return Ok(None);
        };
        let mut out = RuleCounters::new();
        for r in rules {
            if let (Some(comment), Some((packets, bytes))) = (r.comment, r.counter) {
                let e = out.entry(comment).or_default();
                e.0 += packets;
                e.1 += bytes;
            }
        }
        Ok(Some(out))
    }

    /// The table as the kernel lists it now (for status: rule counters). Slow with big
    /// sets; planning never needs it.
    pub fn listing(&self) -> Result<Option<Value>, FirewallError> {
        Ok(self.nft.list()?)
    }

    /// The rendered ruleset with the zone addresses learned at run time filled in.
    pub fn effective(&self, desired: &Ruleset) -> Ruleset {
        let mut rs = desired.clone();
        for (zone, addrs) in &self.zone_addresses {
            rs.set_zone_addresses(zone, addrs);
        }
        rs
    }

    /// Pure: what applying `desired` would do, given the kernel's generation.
    pub fn plan(&self, desired: &Ruleset, observed: &Observed) -> FirewallPlan {
        if let Some(a) = &self.applied
            && a.generation == Some(observed.generation)
            && desired.equals_with_zone_addresses(&a.ruleset, &self.zone_addresses)
        {
            return FirewallPlan::Nothing;
        }
        self.plan_effective(self.effective(desired), observed)
    }

    /// [`Firewall::plan`] of a ruleset that has the learned zone addresses filled in
    /// already, taken by value: the plan keeps it for the record instead of a copy.
    fn plan_effective(&self, desired: Ruleset, observed: &Observed) -> FirewallPlan {
        let reason = match &self.applied {
            None => "this netd has not applied the table yet",
            Some(a) if a.generation.is_none() => {
                "the last write could not be told apart from another one"
            }
            Some(a) if a.generation != Some(observed.generation) => {
                "the ruleset was changed since netd wrote it"
            }
            Some(a) => match incremental(&a.ruleset, &desired, &observed.handles) {
                Some(changes) if changes.is_empty() => return FirewallPlan::Nothing,
                Some(changes) => {
                    return FirewallPlan::Update {
                        ruleset: desired,
                        changes,
                    };
                }
                None => "a base chain or a set changed its definition",
            },
        };
        FirewallPlan::Replace {
            ruleset: desired,
            reason,
        }
    }

    /// Dry run of the desired table: nft and the kernel validate it, nothing changes.
    pub fn check(&self, desired: &Ruleset) -> Result<(), FirewallError> {
        Ok(self.nft.check(&self.effective(desired))?)
    }

    /// Observes, plans and, when needed, changes or replaces the table. Returns whether
    /// anything was written. Either is one nft transaction, so a failure leaves the
    /// kernel as it was and there is nothing to undo.
    pub fn apply(&mut self, desired: &Ruleset) -> Result<bool, FirewallError> {
        self.apply_owned(desired.clone())
    }

    /// [`Firewall::apply`] of a ruleset the caller no longer needs (the daemon's freshly
    /// rendered one): planned and recorded without copying it.
    pub fn apply_owned(&mut self, desired: Ruleset) -> Result<bool, FirewallError> {
        match self.write(desired)? {
            Some(previous) => {
                self.previous = Some(previous);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Plans and writes; returns what the kernel held before, or `None` when nothing
    /// needed writing.
    fn write(&mut self, mut desired: Ruleset) -> Result<Option<Previous>, FirewallError> {
        let mut took = Laps::start();
        let mut observed = self.observe()?;
        took.lap("observe");
        let trusted = self.applied.as_ref().and_then(|a| a.generation) == Some(observed.generation);
        if let Some(a) = &self.applied
            && a.generation == Some(observed.generation)
            && desired.equals_with_zone_addresses(&a.ruleset, &self.zone_addresses)
        {
            tracing::debug!("firewall: nothing to apply");
            return Ok(None);
        }
        for (zone, addrs) in &self.zone_addresses {
            desired.set_zone_addresses(zone, addrs);
        }
        let plan = self.plan_effective(desired, &observed);
        took.lap("plan");
        // rules change: with the kernel's handles only the changed rules are, and the
        // rest of their chains keep counting
        let plan = match plan {
            FirewallPlan::Update { ruleset, changes } if !changes.chains_rewritten.is_empty() => {
                match self.handles(&changes.chains_rewritten, observed.generation) {
                    Some(handles) => {
                        observed.handles = handles;
                        let plan = self.plan_effective(ruleset, &observed);
                        took.lap("handles_replan");
                        plan
                    }
                    None => FirewallPlan::Update { ruleset, changes },
                }
            }
            other => other,
        };
        match plan {
            FirewallPlan::Nothing => {
                tracing::debug!("firewall: nothing to apply");
                Ok(None)
            }
            FirewallPlan::Update { ruleset, changes } => {
                let previous = self
                    .applied
                    .as_ref()
                    .map(|a| Previous::Ruleset(a.ruleset.clone()));
                tracing::info!(changes = %changes.summary(), "firewall: updating table inet {TABLE} in place");
                let batch = Nftables {
                    objects: changes.commands.into(),
                };
                // Refused: nothing was committed, the record still holds.
                self.nft.run(&batch)?;
                took.lap("nft");
                self.record(ruleset, observed.generation);
                took.lap("record");
                tracing::info!(took = %took, "firewall: table updated in place");
                Ok(previous)
            }
            FirewallPlan::Replace { ruleset, reason } => {
                self.replace(ruleset, reason, observed.generation, trusted)
            }
        }
    }

    fn replace(
        &mut self,
        ruleset: Ruleset,
        reason: &'static str,
        generation: u32,
        trusted: bool,
    ) -> Result<Option<Previous>, FirewallError> {
        let previous = match (&self.applied, trusted) {
            (Some(a), true) => Previous::Ruleset(a.ruleset.clone()),
            // the table may hold anything: list it once, to be able to go back
            _ => match self.nft.list()? {
                None => Previous::Absent,
                Some(listing) => Previous::Listing(listing),
            },
        };
        tracing::info!(reason, "firewall: replacing table inet {TABLE}");
        self.nft.apply(&ruleset)?;
        self.record(ruleset, generation);
        Ok(Some(previous))
    }

    /// Puts back what the kernel held before the last apply that changed something.
    pub fn revert(&mut self) -> Result<(), FirewallError> {
        let previous = self.previous.take().ok_or(FirewallError::NothingToRevert)?;
        match previous {
            Previous::Absent => {
                self.nft.run(&delete_table())?;
                self.applied = None;
                self.save_state();
            }
            Previous::Ruleset(rs) => {
                // with the zone addresses of now: a lease renewed since then stays valid
                let rs = self.effective(&rs);
                self.write(rs)?;
            }
            Previous::Listing(listing) => {
                self.nft.run(&readd_listing(&listing)?)?;
                self.applied = None;
                self.save_state();
            }
        }
        Ok(())
    }

    /// A zone's own addresses changed (a new DHCP lease on WAN): refresh its set in one
    /// transaction, leaving every rule alone.
    pub fn set_zone_addresses(
        &mut self,
        zone: &str,
        addrs: &[Ipv4Addr],
    ) -> Result<(), FirewallError> {
        if let Some(a) = &self.applied
            && !a.ruleset.has_zone_set(zone)
        {
            return Err(FirewallError::UnknownZone(zone.into()));
        }
        let before = self.nft.generation()?;
        self.nft.run(&set_zone_addresses(zone, addrs))?;
        self.zone_addresses.insert(zone.into(), addrs.to_vec());
        match self.applied.take() {
            Some(a) => {
                let trusted = a.generation == Some(before);
                let mut rs = Arc::unwrap_or_clone(a.ruleset);
                rs.set_zone_addresses(zone, addrs);
                self.record(rs, before);
                if !trusted && let Some(a) = &mut self.applied {
                    a.generation = None;
                    self.save_state();
                }
            }
            None => self.save_state(),
        }
        Ok(())
    }

    /// Remembers `ruleset` as the table's content, with the generation after the write
    /// when it is `before + 1`: our transaction and no other.
    fn record(&mut self, ruleset: Ruleset, before: u32) {
        let generation = match self.nft.generation() {
            Ok(after) if after == before.wrapping_add(1) => Some(after),
            Ok(after) => {
                tracing::info!(
                    before,
                    after,
                    "firewall: another nftables transaction ran next to ours; the next apply replaces the table"
                );
                None
            }
            Err(e) => {
                tracing::warn!("firewall: cannot read the ruleset generation after a write: {e}");
                None
            }
        };
        self.applied = Some(Applied {
            ruleset: Arc::new(ruleset),
            generation,
        });
        self.save_state();
    }

    /// Hands the record to the state writer; the file is written after the apply returns.
    fn save_state(&mut self) {
        if let Some(w) = &self.state {
            w.save(Snapshot {
                applied: self
                    .applied
                    .as_ref()
                    .map(|a| (a.ruleset.clone(), a.generation)),
                zones: self.zone_addresses.clone(),
            });
        }
    }
}

/// What the state file is to hold.
#[derive(Debug)]
struct Snapshot {
    applied: Option<(Arc<Ruleset>, Option<u32>)>,
    zones: BTreeMap<String, Vec<Ipv4Addr>>,
}

#[derive(Debug)]
enum ToWriter {
    Save(Snapshot),
    Sync(std::sync::mpsc::Sender<()>),
}

/// Writes the state file on a thread of its own, so that an apply does not wait for the
/// record's JSON (about 1 MB for 2000 forwards, 6 ms). Snapshots are written in the
/// order given, and one that a newer one follows before it was started is skipped.
///
/// A crash (or kill) before a snapshot is on disk leaves the file with the record before
/// it, whose generation is the one before that write; the kernel's is at least one
/// more, so a restarted netd does not trust the record and replaces the table once,
/// atomically, exactly as after a lost file. The file is replaced by rename, so it is
/// one record or the other, never a mix; it lives under /run, which a reboot empties
/// together with the kernel's tables, so it is not fsynced. Dropping the writer (netd's
/// orderly stop) waits for the last snapshot.
#[derive(Debug)]
struct StateWriter {
    tx: Option<std::sync::mpsc::Sender<ToWriter>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl StateWriter {
    fn start(path: PathBuf, saved: BTreeMap<String, Networks>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let at = path.clone();
        let thread = std::thread::Builder::new()
            .name("fw-state".into())
            .spawn(move || write_loop(&at, saved, &rx));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("firewall: no state writer thread, the state is not kept: {e}");
                None
            }
        };
        Self {
            tx: thread.is_some().then_some(tx),
            thread,
            path,
        }
    }

    fn send(&self, msg: ToWriter) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok())
    }

    fn save(&self, snapshot: Snapshot) {
        if !self.send(ToWriter::Save(snapshot)) {
            tracing::warn!(path = %self.path.display(), "firewall: the state writer is gone, the state is not saved");
        }
    }

    fn sync(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.send(ToWriter::Sync(tx)) {
            let _ = rx.recv();
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    path: &Path,
    mut saved: BTreeMap<String, Networks>,
    rx: &std::sync::mpsc::Receiver<ToWriter>,
) {
    while let Ok(first) = rx.recv() {
        let mut latest = None;
        let mut waiting = Vec::new();
        for msg in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match msg {
                ToWriter::Save(s) => latest = Some(s),
                ToWriter::Sync(done) => waiting.push(done),
            }
        }
        if let Some(s) = latest {
            let applied = s.applied.as_ref().map(|(rs, g)| (&**rs, *g));
            match write_state(path, applied, &s.zones, &saved) {
                Ok(now) => saved = now,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "firewall: cannot save state: {e}");
                    // what the side files hold is unknown now: write them all next time
                    saved.clear();
                }
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

/// Milliseconds per step of one firewall write, for the log (the daemon path's
/// breakdown of its `firewall` step).
struct Laps {
    since: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl Laps {
    fn start() -> Self {
        Self {
            since: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, now - self.since));
        self.since = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, d)) in self.laps.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.1}ms", d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

const STATE_VERSION: u64 = 3;

/// The state file's shape, borrowed: serialized straight to the file. The large address
/// sets live in side files of their own (`<state file>.<set name>`), rewritten only when
/// they change: the record of a one-forward change then stays small.
#[derive(serde::Serialize)]
struct StateOut<'a> {
    version: u64,
    applied: Option<AppliedOut<'a>>,
    zone_addresses: &'a BTreeMap<String, Vec<Ipv4Addr>>,
}

#[derive(serde::Serialize)]
struct AppliedOut<'a> {
    ruleset: &'a [NfListObject<'static>],
    /// Set name to the fingerprint of its side file's content.
    address_sets: BTreeMap<&'a str, SideFile>,
    generation: Option<u32>,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq)]
struct SideFile {
    len: usize,
    fnv: u64,
}

impl SideFile {
    /// FNV-1a over the networks: stable across builds, unlike std's hasher, and enough
    /// to notice a side file that does not belong to the record.
    fn of(nets: &[IpNet]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for n in nets {
            match n.addr() {
                IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
                IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
            }
            eat(n.prefix_len());
        }
        Self {
            len: nets.len(),
            fnv: h,
        }
    }
}

fn side_path(path: &Path, set: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(set);
    PathBuf::from(name)
}

fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write(&mut out)?;
    std::io::Write::flush(&mut out)?;
    drop(out);
    std::fs::rename(&tmp, path)
}

/// Writes the side files that changed, then the record; returns what the side files hold.
fn write_state(
    path: &Path,
    applied: Option<(&Ruleset, Option<u32>)>,
    zones: &BTreeMap<String, Vec<Ipv4Addr>>,
    saved: &BTreeMap<String, Networks>,
) -> std::io::Result<BTreeMap<String, Networks>> {
    let sets = applied
        .map(|(rs, _)| rs.address_sets().clone())
        .unwrap_or_default();
    for (name, nets) in &sets {
        let unchanged = saved
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(s, nets) || s == nets);
        if !unchanged {
            write_atomically(&side_path(path, name), |out| {
                Ok(serde_json::to_writer(out, &**nets)?)
            })?;
        }
    }
    let state = StateOut {
        version: STATE_VERSION,
        applied: applied.map(|(rs, generation)| AppliedOut {
            ruleset: rs.objects(),
            address_sets: sets
                .iter()
                .map(|(k, v)| (k.as_str(), SideFile::of(v)))
                .collect(),
            generation,
        }),
        zone_addresses: zones,
    };
    write_atomically(path, |out| Ok(serde_json::to_writer(out, &state)?))?;
    for gone in saved.keys().filter(|k| !sets.contains_key(*k)) {
        let _ = std::fs::remove_file(side_path(path, gone));
    }
    Ok(sets)
}

type State = (Option<Applied>, BTreeMap<String, Vec<Ipv4Addr>>);

fn parse_state(text: &str, path: &Path) -> Option<State> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("version")?.as_u64()? != STATE_VERSION {
        return None;
    }
    let zones = serde_json::from_value(v.get("zone_addresses")?.clone()).ok()?;
    let applied = match v.get("applied")? {
        Value::Null => None,
        a => {
            let objects: Vec<NfListObject<'static>> =
                serde_json::from_value(a.get("ruleset")?.clone()).ok()?;
            let refs: BTreeMap<String, SideFile> =
                serde_json::from_value(a.get("address_sets")?.clone()).ok()?;
            let mut sets = BTreeMap::new();
            for (name, expected) in refs {
                let file = std::fs::read(side_path(path, &name)).ok()?;
                let nets: Vec<IpNet> = serde_json::from_slice(&file).ok()?;
                if SideFile::of(&nets) != expected {
                    return None;
                }
                sets.insert(name, Arc::new(nets));
            }
            let mut ruleset = Ruleset::default();
            objects.into_iter().for_each(|o| ruleset.push(o));
            let generation = a
                .get("generation")
                .and_then(Value::as_u64)
                .and_then(|g| u32::try_from(g).ok());
            Some(Applied {
                ruleset: Arc::new(ruleset.with_address_sets(sets)),
                generation,
            })
        }
    };
    Some((applied, zones))
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    })
}

fn delete_table() -> Nftables<'static> {
    Nftables {
        objects: vec![
            NfObject::CmdObject(NfCmd::Add(table())),
            NfObject::CmdObject(NfCmd::Delete(table())),
        ]
        .into(),
    }
}

/// A listing turned back into the transaction that recreates it. Handles go: on input
/// they would mean "add after the rule with this handle".
fn readd_listing(listing: &Value) -> Result<Nftables<'static>, NftError> {
    let mut listing = listing.clone();
    verdict_maps_to_placeholder(&mut listing);
    let parsed: Nftables<'static> = serde_json::from_value(listing)?;
    let mut objects = delete_table().objects.into_owned();
    objects.push(NfObject::CmdObject(NfCmd::Add(table())));
    // nft lists maps before chains, but a map's elements jump to chains, and rules name
    // maps: maps go in after the chains, rules last
    let (mut maps, mut rules) = (Vec::new(), Vec::new());
    for obj in parsed.objects.iter() {
        let NfObject::ListObject(o) = obj else {
            continue;
        };
        let o = match o.clone() {
            NfListObject::Table(_) | NfListObject::MetainfoObject(_) => continue,
            NfListObject::Chain(mut c) => {
                c.handle = None;
                NfListObject::Chain(c)
            }
            NfListObject::Rule(mut r) => {
                r.handle = None;
                NfListObject::Rule(r)
            }
            NfListObject::Set(mut s) => {
                s.handle = None;
                NfListObject::Set(s)
            }
            NfListObject::Map(mut m) => {
                m.handle = None;
                NfListObject::Map(m)
            }
            other => other,
        };
        let into = match &o {
            NfListObject::Map(_) => &mut maps,
            NfListObject::Rule(_) => &mut rules,
            _ => &mut objects,
        };
        into.push(NfObject::CmdObject(NfCmd::Add(o)));
    }
    objects.extend(maps);
    objects.extend(rules);
    Ok(Nftables {
        objects: objects.into(),
    })
}

/// The parts of a listing that say what the table does: no metainfo, no handles, counters
/// at zero, set elements sorted (their listed order depends on the set's hashing).
pub fn normalize_listing(listing: &Value) -> Value {
    let objects = listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    Value::Array(
        objects
            .iter()
            .filter(|o| o.get("metainfo").is_none())
            .map(|o| {
                let mut o = o.clone();
                if let Some(inner) = o.as_object_mut().and_then(|m| m.values_mut().next())
                    && let Some(m) = inner.as_object_mut()
                {
                    m.remove("handle");
                    if let Some(exprs) = m.get_mut("expr").and_then(Value::as_array_mut) {
                        exprs.iter_mut().for_each(zero_counter);
                    }
                    if let Some(elems) = m.get_mut("elem").and_then(Value::as_array_mut) {
                        elems.sort_by_key(ToString::to_string);
                    }
                }
                o
            })
            .collect(),
    )
}

fn zero_counter(stmt: &mut Value) {
    if let Some(c) = stmt.get_mut("counter").and_then(Value::as_object_mut) {
        for v in c.values_mut() {
            *v = Value::from(0);
        }
    }
}

/// Packets and bytes per rule comment (config rules are commented with their name or
/// `rules[i]`); a config rule rendered as several nft rules (one per address family)
/// reports their sum.
pub fn rule_counters(listing: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let objects = listing
        .get("nftables")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for rule in objects.iter().filter_map(|o| o.get("rule")) {
        let Some(comment) = rule.get("comment").and_then(Value::as_str) else {
            continue;
        };
        let counters = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("counter"));
        for c in counters {
            let get = |k| c.get(k).and_then(Value::as_u64).unwrap_or(0);
            let e = out.entry(comment.to_owned()).or_default();
            e.0 += get("packets");
            e.1 += get("bytes");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use nftables::schema::{NfListObject, Rule};
    use nftables::types::NfFamily;
    use serde_json::json;

    use super::*;
    use crate::firewall::render::tests::rich;
    use crate::firewall::{FakeNft, render};

    fn default_rs() -> Ruleset {
        render(&appliance::default_config().unwrap())
    }

    fn listing<N: Nft>(fw: &Firewall<N>) -> Value {
        normalize_listing(&fw.listing().unwrap().unwrap())
    }

    /// A listing as a sorted list of objects: an updated table holds the same objects as
    /// a fresh one, not always in the same order.
    fn same_content(listing: &Value) -> Vec<String> {
        let mut v: Vec<String> = listing
            .as_array()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        v.sort();
        v
    }

    fn of_kind(listing: &Value, kind: &str) -> Vec<Value> {
        listing
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get(kind).cloned())
            .collect()
    }

    /// A ruleset nft refuses as a whole: its last rule names a chain that does not exist.
    fn broken() -> Ruleset {
        let mut broken = rich();
        broken.push(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: "no_such_chain".into(),
            ..Rule::default()
        }));
        broken
    }

    /// A rule someone added by hand.
    fn stray_rule() -> Nftables<'static> {
        Nftables {
            objects: vec![NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
                family: NfFamily::INet,
                table: TABLE.into(),
                chain: "input".into(),
                expr: vec![crate::firewall::expr::accept()].into(),
                handle: None,
                index: None,
                comment: Some("by hand".into()),
            })))]
            .into(),
        }
    }

    #[test]
    fn second_apply_plans_nothing_and_writes_nothing() {
        let mut fw = Firewall::new(FakeNft::new());
        let rs = default_rs();
        assert!(matches!(
            fw.plan(&rs, &fw.observe().unwrap()),
            FirewallPlan::Replace {
                reason: "this netd has not applied the table yet",
                ..
            }
        ));
        assert!(fw.apply(&rs).unwrap());
        assert_eq!(fw.nft().writes, 1);
        let observed = fw.observe().unwrap();
        assert_eq!(fw.plan(&rs, &observed), FirewallPlan::Nothing);
        assert!(!fw.apply(&rs).unwrap());
        assert_eq!(fw.nft().writes, 1);
    }

    #[test]
    fn a_table_this_netd_did_not_write_is_replaced_once() {
        let mut nft = FakeNft::new();
        nft.apply(&default_rs()).unwrap();
        let mut fw = Firewall::new(nft);
        let observed = fw.observe().unwrap();
        assert!(matches!(
            fw.plan(&default_rs(), &observed),
            FirewallPlan::Replace {
                reason: "this netd has not applied the table yet",
                ..
            }
        ));
        assert!(fw.apply(&default_rs()).unwrap());
        assert!(!fw.apply(&default_rs()).unwrap());
    }

    #[test]
    fn config_change_replaces_the_table() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&default_rs()).unwrap();
        let observed = fw.observe().unwrap();
        let FirewallPlan::Update { ruleset, changes } = fw.plan(&rich(), &observed) else {
            panic!("expected an update in place")
        };
        assert_eq!(ruleset, rich());
        assert!(
            changes.chains_added > 0 && changes.sets_added > 0,
            "{changes:?}"
        );
        assert!(fw.apply(&rich()).unwrap());
        assert_eq!(fw.nft().writes, 2);
        // the updated table is exactly what a fresh one would be
        let mut fresh = FakeNft::new();
        fresh.apply(&rich()).unwrap();
        assert_eq!(
            same_content(&listing(&fw)),
            same_content(&normalize_listing(&fresh.list().unwrap().unwrap()))
        );
    }

    #[test]
    fn edits_behind_netds_back_are_undone() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&default_rs()).unwrap();
        fw.nft_mut().run(&stray_rule()).unwrap();
        let observed = fw.observe().unwrap();
        assert!(matches!(
            fw.plan(&default_rs(), &observed),
            FirewallPlan::Replace {
                reason: "the ruleset was changed since netd wrote it",
                ..
            }
        ));
        assert!(fw.apply(&default_rs()).unwrap());
        assert!(!listing(&fw).to_string().contains("by hand"));

        fw.nft_mut().run(&delete_table()).unwrap();
        assert!(
            fw.apply(&default_rs()).unwrap(),
            "a deleted table comes back"
        );
    }

    #[test]
    fn revert_restores_the_previous_ruleset() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&default_rs()).unwrap();
        let before = listing(&fw);
        fw.apply(&rich()).unwrap();
        assert_ne!(listing(&fw), before);
        fw.revert().unwrap();
        assert_eq!(same_content(&listing(&fw)), same_content(&before));
        // the revert is remembered as applied: the old config is a no-op again
        assert!(!fw.apply(&default_rs()).unwrap());
        assert!(matches!(fw.revert(), Err(FirewallError::NothingToRevert)));
    }

    #[test]
    fn revert_of_the_first_apply_removes_the_table() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&default_rs()).unwrap();
        fw.revert().unwrap();
        assert_eq!(fw.listing().unwrap(), None);
    }

    #[test]
    fn revert_restores_a_foreign_table_from_its_listing() {
        let mut nft = FakeNft::new();
        nft.apply(&rich()).unwrap();
        nft.run(&stray_rule()).unwrap();
        let mut fw = Firewall::new(nft);
        let foreign = listing(&fw);
        fw.apply(&default_rs()).unwrap();
        fw.revert().unwrap();
        let mut restored = listing(&fw);
        // counters come back with the values they had; normalizing zeroes both sides
        assert_eq!(restored.take(), foreign);
    }

    #[test]
    fn a_failed_apply_changes_nothing() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&default_rs()).unwrap();
        let before = listing(&fw);
        let broken = broken();
        let err = fw.apply(&broken).unwrap_err();
        assert!(err.to_string().contains("no_such_chain"), "{err}");
        assert_eq!(listing(&fw), before);
        assert_eq!(fw.nft().writes, 1);
        // the previous apply is still the one to revert to
        fw.revert().unwrap();
        assert_eq!(fw.listing().unwrap(), None);
    }

    #[test]
    fn check_validates_without_writing() {
        let fw = Firewall::new(FakeNft::new());
        fw.check(&rich()).unwrap();
        let broken = broken();
        assert!(fw.check(&broken).is_err());
        assert_eq!(fw.nft().writes, 0);
        assert_eq!(fw.listing().unwrap(), None);
    }

    #[test]
    fn zone_address_change_touches_only_the_set() {
        let mut fw = Firewall::new(FakeNft::new());
        let rs = default_rs();
        fw.apply(&rs).unwrap();
        let rules_before = of_kind(&listing(&fw), "rule");
        let addr: Ipv4Addr = "203.0.113.9".parse().unwrap();
        fw.set_zone_addresses("wan", &[addr]).unwrap();
        assert_eq!(fw.nft().writes, 2);
        let after = listing(&fw);
        assert_eq!(of_kind(&after, "rule"), rules_before);
        let wan = of_kind(&after, "set")
            .into_iter()
            .find(|s| s["name"] == "wan_addr4")
            .unwrap();
        assert_eq!(wan["elem"], json!(["203.0.113.9"]));
        // the learned address is part of the desired state from now on
        assert!(!fw.apply(&rs).unwrap());
        assert_eq!(fw.nft().writes, 2);
        // and survives a config change
        fw.apply(&rich()).unwrap();
        assert!(listing(&fw).to_string().contains("203.0.113.9"));
        assert!(matches!(
            fw.set_zone_addresses("dmz", &[addr]),
            Err(FirewallError::UnknownZone(_))
        ));
    }

    #[test]
    fn a_restarted_netd_with_its_state_file_plans_nothing() {
        let dir = std::env::temp_dir().join(format!("netd-fw-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("firewall.json");
        let _ = std::fs::remove_file(&path);

        let mut fw = Firewall::with_state_file(FakeNft::new(), &path);
        fw.apply(&default_rs()).unwrap();
        fw.set_zone_addresses("wan", &["203.0.113.9".parse().unwrap()])
            .unwrap();
        let kernel = fw.nft().clone();
        fw.sync_state();

        let mut restarted = Firewall::with_state_file(kernel.clone(), &path);
        assert!(!restarted.apply(&default_rs()).unwrap());
        assert_eq!(restarted.nft().writes, kernel.writes);

        // without the file (or with a broken one) the first apply rewrites once
        std::fs::write(&path, "{not json").unwrap();
        let mut amnesiac = Firewall::with_state_file(kernel, &path);
        assert!(amnesiac.apply(&default_rs()).unwrap());
        // their state writers are done once they are dropped
        drop((fw, restarted, amnesiac));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn normalizing_drops_handles_counters_and_set_order() {
        let a = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"set": {"name": "s", "handle": 3, "elem": ["10.0.0.2", "10.0.0.1"]}},
            {"rule": {"chain": "input", "handle": 9, "expr": [{"counter": {"packets": 5, "bytes": 70}}]}}
        ]});
        assert_eq!(
            normalize_listing(&a),
            json!([
                {"set": {"name": "s", "elem": ["10.0.0.1", "10.0.0.2"]}},
                {"rule": {"chain": "input", "expr": [{"counter": {"packets": 0, "bytes": 0}}]}}
            ])
        );
    }

    /// The default router with the named TCP forwards; each name's first letter picks its
    /// port (8000 + letter) and server (192.168.1.(10 + letter)).
    fn with_forwards(names: &[&str]) -> Ruleset {
        let mut src = appliance::DEFAULT_CONFIG.to_owned();
        for n in names {
            let i = usize::from(n.as_bytes()[0] - b'a');
            src.push_str(&format!(
                "\n[firewall.forwards.{n}]\nprotocol = \"tcp\"\nport = {}\nto = \"192.168.1.{}\"\n",
                8000 + i,
                10 + i
            ));
        }
        render(&appliance::load_str(&src).unwrap())
    }

    fn fresh_listing(rs: &Ruleset) -> Vec<String> {
        let mut nft = FakeNft::new();
        nft.apply(rs).unwrap();
        same_content(&normalize_listing(&nft.list().unwrap().unwrap()))
    }

    #[test]
    fn one_forward_added_is_one_small_update_in_place() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_forwards(&["a", "b"])).unwrap();
        let commands = fw.nft().commands;
        let rs = with_forwards(&["a", "b", "c"]);
        let FirewallPlan::Update { changes, .. } = fw.plan(&rs, &fw.observe().unwrap()) else {
            panic!("expected an update in place")
        };
        assert_eq!(changes.chains_added, 1);
        assert!(changes.chains_rewritten.is_empty(), "{changes:?}");
        assert_eq!(
            changes.chains_deleted + changes.sets_added + changes.sets_deleted,
            0
        );
        // add chain, its map element, the forward's rule
        assert_eq!(changes.commands.len(), 3, "{changes:?}");
        assert_eq!(
            fw.plan(&rs, &fw.observe().unwrap()).describe().unwrap(),
            "update table inet appliance in place: 1 chain(s) added, 1 set element(s) added"
        );
        assert!(fw.apply(&rs).unwrap());
        assert_eq!(fw.nft().writes, 2);
        assert_eq!(fw.nft().commands - commands, 3);
        assert_eq!(same_content(&listing(&fw)), fresh_listing(&rs));
        assert!(!fw.apply(&rs).unwrap(), "the record follows the update");
    }

    #[test]
    fn one_forward_removed_deletes_its_chain_after_the_dispatch() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_forwards(&["a", "b", "c"])).unwrap();
        let rs = with_forwards(&["a", "c"]);
        let FirewallPlan::Update { changes, .. } = fw.plan(&rs, &fw.observe().unwrap()) else {
            panic!("expected an update in place")
        };
        assert_eq!(changes.chains_deleted, 1);
        assert_eq!(changes.elements_deleted, 1);
        assert!(changes.chains_rewritten.is_empty(), "{changes:?}");
        // the fake refuses to delete a chain a rule still jumps to: order matters
        assert!(fw.apply(&rs).unwrap());
        assert_eq!(same_content(&listing(&fw)), fresh_listing(&rs));
        // the last forward goes: the dispatch rule and its map go with it
        fw.apply(&with_forwards(&[])).unwrap();
        assert_eq!(
            same_content(&listing(&fw)),
            fresh_listing(&with_forwards(&[]))
        );
    }

    /// `with_forwards` plus a WAN-to-LAN drop rule whose 100 sources are prefixes: an
    /// interval set in the table.
    fn with_forwards_and_prefixes(names: &[&str]) -> Ruleset {
        let mut src = appliance::DEFAULT_CONFIG.to_owned();
        for n in names {
            let i = usize::from(n.as_bytes()[0] - b'a');
            src.push_str(&format!(
                "\n[firewall.forwards.{n}]\nprotocol = \"tcp\"\nport = {}\nto = \"192.168.1.{}\"\n",
                8000 + i,
                10 + i
            ));
        }
        let list: Vec<String> = (0..100).map(|i| format!("\"10.0.{i}.0/24\"")).collect();
        src.push_str(&format!(
            "\n[[firewall.rules]]\nname = \"blocklist\"\nfrom = \"wan\"\nto = \"lan\"\naction = \"drop\"\nsource = [{}]\n",
            list.join(", ")
        ));
        render(&appliance::load_str(&src).unwrap())
    }

    fn element_commands(changes: &Changes) -> usize {
        changes
            .commands
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    NfObject::CmdObject(
                        NfCmd::Add(NfListObject::Element(_))
                            | NfCmd::Delete(NfListObject::Element(_))
                    )
                )
            })
            .count()
    }

    #[test]
    fn beside_an_interval_set_forwards_change_without_element_commands() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_forwards_and_prefixes(&["a", "b"])).unwrap();
        for names in [&["a", "b", "c"][..], &["a", "c"], &["c"], &[]] {
            let rs = with_forwards_and_prefixes(names);
            let FirewallPlan::Update { changes, .. } = fw.plan(&rs, &fw.observe().unwrap()) else {
                panic!("expected an update in place for {names:?}")
            };
            // nft 1.0.6 would fetch the 100 prefixes for an element command
            assert_eq!(element_commands(&changes), 0, "{names:?}: {changes:?}");
            assert!(fw.apply(&rs).unwrap());
            assert_eq!(same_content(&listing(&fw)), fresh_listing(&rs), "{names:?}");
        }
        // without an interval set a removal stays one element deletion
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_forwards(&["a", "b"])).unwrap();
        let FirewallPlan::Update { changes, .. } =
            fw.plan(&with_forwards(&["a"]), &fw.observe().unwrap())
        else {
            panic!("expected an update in place")
        };
        assert_eq!(element_commands(&changes), 1, "{changes:?}");
    }

    #[test]
    fn a_changed_address_list_changes_set_elements_only() {
        let base = default_rs();
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&base).unwrap();
        let mut moved = base.clone();
        assert!(moved.set_zone_addresses("lan", &["192.168.7.1".parse().unwrap()]));
        let FirewallPlan::Update { changes, .. } = fw.plan(&moved, &fw.observe().unwrap()) else {
            panic!("expected an update in place")
        };
        assert_eq!((changes.elements_added, changes.elements_deleted), (1, 1));
        assert!(changes.chains_rewritten.is_empty());
        fw.apply(&moved).unwrap();
        assert_eq!(same_content(&listing(&fw)), fresh_listing(&moved));
    }

    #[test]
    fn a_base_chain_policy_change_replaces_the_table() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&default_rs()).unwrap();
        let src = appliance::DEFAULT_CONFIG.to_owned();
        let cfg = appliance::load_str(&src).unwrap();
        let mut changed = render(&cfg);
        changed = {
            let mut rs = Ruleset::default();
            for o in changed.objects() {
                let mut o = o.clone();
                if let NfListObject::Chain(c) = &mut o
                    && c.name == "output"
                {
                    c.policy = Some(nftables::types::NfChainPolicy::Drop);
                }
                rs.push(o);
            }
            rs
        };
        assert!(matches!(
            fw.plan(&changed, &fw.observe().unwrap()),
            FirewallPlan::Replace {
                reason: "a base chain or a set changed its definition",
                ..
            }
        ));
        fw.apply(&changed).unwrap();
        // the record was trusted: the revert needs no listing and goes back in place
        fw.revert().unwrap();
        assert_eq!(same_content(&listing(&fw)), fresh_listing(&default_rs()));
    }

    #[test]
    fn a_refused_update_changes_nothing() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_forwards(&["a"])).unwrap();
        let before = listing(&fw);
        fw.nft_mut().fail_next =
            Some("Error: Could not process rule: Device or resource busy".into());
        let err = fw.apply(&with_forwards(&["a", "b"])).unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        assert_eq!(listing(&fw), before);
        // nothing was committed: the record holds, the old config is still a no-op
        assert!(!fw.apply(&with_forwards(&["a"])).unwrap());
        assert!(fw.apply(&with_forwards(&["a", "b"])).unwrap());
        assert_eq!(
            same_content(&listing(&fw)),
            fresh_listing(&with_forwards(&["a", "b"]))
        );
    }

    #[test]
    fn a_restarted_netd_updates_in_place_from_its_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.json");
        let mut fw = Firewall::with_state_file(FakeNft::new(), &path);
        fw.apply(&with_forwards(&["a"])).unwrap();
        fw.sync_state();
        let mut restarted = Firewall::with_state_file(fw.nft().clone(), &path);
        assert!(matches!(
            restarted.plan(&with_forwards(&["a", "b"]), &restarted.observe().unwrap()),
            FirewallPlan::Update { .. }
        ));
        restarted.apply(&with_forwards(&["a", "b"])).unwrap();
        assert_eq!(
            same_content(&listing(&restarted)),
            fresh_listing(&with_forwards(&["a", "b"]))
        );
    }

    /// The state is written after the apply returns: a netd killed before that leaves the
    /// record of the apply before, whose generation is no longer the kernel's.
    #[test]
    fn a_state_file_one_apply_behind_the_kernel_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.json");
        let mut fw = Firewall::with_state_file(FakeNft::new(), &path);
        fw.apply(&with_forwards(&["a"])).unwrap();
        fw.sync_state();
        let behind = std::fs::read(&path).unwrap();
        fw.apply(&with_forwards(&["a", "b"])).unwrap();
        drop(fw.state.take());
        std::fs::write(&path, behind).unwrap();

        let mut restarted = Firewall::with_state_file(fw.nft().clone(), &path);
        let desired = with_forwards(&["a", "b"]);
        assert!(matches!(
            restarted.plan(&desired, &restarted.observe().unwrap()),
            FirewallPlan::Replace { .. }
        ));
        assert!(restarted.apply(&desired).unwrap());
        assert_eq!(same_content(&listing(&restarted)), fresh_listing(&desired));
        restarted.sync_state();
        let mut again = Firewall::with_state_file(restarted.nft().clone(), &path);
        assert!(!again.apply(&desired).unwrap());
    }

    #[test]
    fn a_changed_long_address_list_is_element_updates_and_its_side_file() {
        use crate::firewall::render::tests::with_long_source;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.json");
        let side = dir.path().join("firewall.json.rules.3.src4");
        let mut fw = Firewall::with_state_file(FakeNft::new(), &path);
        fw.apply(&with_long_source(100)).unwrap();
        fw.sync_state();
        // the record itself does not hold the 100 networks
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains("100.65.0.1")
        );

        let rs = with_long_source(101);
        let FirewallPlan::Update { changes, .. } = fw.plan(&rs, &fw.observe().unwrap()) else {
            panic!("expected an update in place")
        };
        assert_eq!((changes.elements_added, changes.elements_deleted), (1, 0));
        assert!(changes.chains_rewritten.is_empty(), "{changes:?}");
        assert_eq!(changes.commands.len(), 1);
        fw.apply(&rs).unwrap();
        fw.sync_state();
        assert_eq!(same_content(&listing(&fw)), fresh_listing(&rs));
        let side_written = std::fs::metadata(&side).unwrap().modified().unwrap();

        // a forward added leaves the side file alone
        let mut plus = rs.clone();
        for o in with_forwards(&["a"]).objects() {
            if !rs.objects().contains(o) {
                plus.push(o.clone());
            }
        }
        let before = std::fs::read(&side).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fw.apply(&plus).unwrap();
        fw.sync_state();
        assert_eq!(std::fs::read(&side).unwrap(), before);
        assert_eq!(
            std::fs::metadata(&side).unwrap().modified().unwrap(),
            side_written
        );

        // a restart reads both files and plans nothing
        let kernel = fw.nft().clone();
        let mut restarted = Firewall::with_state_file(kernel.clone(), &path);
        assert!(!restarted.apply(&plus).unwrap());
        // a side file that is not the record's: the state is not trusted
        std::fs::write(&side, r#"["100.64.0.0/24"]"#).unwrap();
        let doubtful = Firewall::with_state_file(kernel, &path);
        assert!(matches!(
            doubtful.plan(&plus, &doubtful.observe().unwrap()),
            FirewallPlan::Replace { .. }
        ));
    }

    /// The default router with input rules from the LAN, each `name:port`.
    fn with_rules(rules: &[&str]) -> Ruleset {
        let mut src = appliance::DEFAULT_CONFIG.to_owned();
        for r in rules {
            let (name, port) = r.split_once(':').unwrap();
            src.push_str(&format!(
                "\n[[firewall.rules]]\nname = \"{name}\"\nfrom = \"lan\"\nprotocol = \"tcp\"\nports = [{port}]\naction = \"accept\"\n"
            ));
        }
        render(&appliance::load_str(&src).unwrap())
    }

    /// Rules by chain, in chain order, without handles and counters.
    fn rules_by_chain<N: Nft>(fw: &Firewall<N>) -> Vec<(String, Value)> {
        let mut rules: Vec<(String, Value)> = of_kind(&listing(fw), "rule")
            .into_iter()
            .map(|r| (r["chain"].as_str().unwrap().to_owned(), r))
            .collect();
        // stable: the order inside a chain stays
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        rules
    }

    fn fresh_rules(rs: &Ruleset) -> Vec<(String, Value)> {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(rs).unwrap();
        rules_by_chain(&fw)
    }

    fn handles_of(fw: &Firewall<FakeNft>) -> BTreeMap<String, u64> {
        fw.nft()
            .rules(None)
            .unwrap()
            .unwrap()
            .into_iter()
            .filter_map(|r| Some((r.comment?, r.handle)))
            .collect()
    }

    #[test]
    fn a_changed_rule_is_replaced_by_handle_and_its_neighbours_stay() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_rules(&["a:22", "b:80", "c:443"])).unwrap();
        let before = handles_of(&fw);

        // without handles (a plan alone) the chain would be rewritten
        let changed = with_rules(&["a:2222", "b:80", "c:443"]);
        let FirewallPlan::Update { changes, .. } = fw.plan(&changed, &fw.observe().unwrap()) else {
            panic!("expected an update in place")
        };
        assert_eq!(changes.chains_rewritten, ["input_lan"]);

        let commands = fw.nft().commands;
        assert!(fw.apply(&changed).unwrap());
        assert_eq!(
            fw.nft().commands - commands,
            2,
            "delete and insert one rule"
        );
        let now = handles_of(&fw);
        assert_ne!(now["a"], before["a"]);
        assert_eq!((now["b"], now["c"]), (before["b"], before["c"]));
        assert_eq!(rules_by_chain(&fw), fresh_rules(&changed));

        // one added in the middle, one taken out: the others keep their handles
        let next = with_rules(&["a:2222", "n:53", "c:443"]);
        fw.apply(&next).unwrap();
        let after = handles_of(&fw);
        assert_eq!(after["a"], now["a"]);
        assert_eq!(after["c"], before["c"]);
        assert!(!after.contains_key("b"));
        assert_eq!(rules_by_chain(&fw), fresh_rules(&next));

        let fewer = with_rules(&["c:443"]);
        fw.apply(&fewer).unwrap();
        assert_eq!(handles_of(&fw)["c"], before["c"]);
        assert_eq!(rules_by_chain(&fw), fresh_rules(&fewer));
        let more = with_rules(&["x:1", "c:443", "y:2", "z:3"]);
        fw.apply(&more).unwrap();
        assert_eq!(handles_of(&fw)["c"], before["c"]);
        assert_eq!(rules_by_chain(&fw), fresh_rules(&more));
        assert!(!fw.apply(&more).unwrap(), "the record follows");
    }

    #[test]
    fn handles_that_do_not_match_the_record_rewrite_the_chain() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&with_rules(&["a:22", "b:80"])).unwrap();
        let changed = with_rules(&["a:2222", "b:80"]);
        let mut observed = fw.observe().unwrap();
        // a rule the record does not know about (the generation check would catch a
        // real one; the plan must not trust handles that disagree either)
        observed
            .handles
            .insert("input_lan".into(), vec![(7, Some("a".into()))]);
        let FirewallPlan::Update { changes, .. } = fw.plan(&changed, &observed) else {
            panic!("expected an update in place")
        };
        assert_eq!(changes.chains_rewritten, ["input_lan"]);
        assert_eq!(changes.rules_inserted, 0);
    }

    #[test]
    fn counters_come_from_the_rule_dump() {
        let mut fw = Firewall::new(FakeNft::new());
        assert_eq!(fw.rule_counters().unwrap(), None);
        fw.apply(&rich()).unwrap();
        let counters = fw.rule_counters().unwrap().unwrap();
        assert_eq!(counters, rule_counters(&fw.listing().unwrap().unwrap()));
    }

    #[test]
    fn counters_are_reported_per_rule_name() {
        let mut fw = Firewall::new(FakeNft::new());
        fw.apply(&rich()).unwrap();
        let counters = rule_counters(&fw.listing().unwrap().unwrap());
        // the fake's counters all read 42 packets; ssh-admin is one rule per family
        assert_eq!(counters["ssh-admin"], (84, 8400));
        assert_eq!(counters["forward web"], (42, 4200));
        assert!(!counters.contains_key("off"));
    }
}
