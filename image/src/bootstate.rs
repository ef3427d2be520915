//! The A/B boot state, power-safe: two copies of a GRUB environment block on the ESP, each
//! with a sequence number first and the same number again as its last variable.
//!
//! A writer always overwrites the copy that is *not* the newest valid one, with the next
//! sequence number, then fsyncs. A power cut can therefore tear at most the copy being
//! written; a torn copy has `SEQ != END` (or does not parse) and GRUB and Linux both fall
//! back to the other copy, which holds the last complete state. GRUB itself only rewrites
//! the newest copy in place to spend a boot try, changing one digit, so a torn write there
//! leaves each sector either before or after the change, both valid states.
//!
//! `grub.cfg` implements the same choice ([`BootState::next_boot`]) in GRUB script; the
//! tests keep the two in step.

use std::fmt;
use std::fs;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::grubenv;

/// The copies, relative to the ESP's root.
pub const COPIES: [&str; 2] = ["EFI/appliance/grubenv.0", "EFI/appliance/grubenv.1"];
/// Trial boots a freshly installed slot gets before GRUB gives up on it.
pub const TRIAL_TRIES: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The GPT partition label of the slot's root.
    pub fn partlabel(self) -> &'static str {
        match self {
            Slot::A => "rootA",
            Slot::B => "rootB",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

impl FromStr for Slot {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(StateError::Invalid(format!("`{s}` is not a slot (A or B)"))),
        }
    }
}

/// One slot's entry: whether it may boot at all, and its remaining trial boots (`None` =
/// committed: it boots without spending tries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    pub ok: bool,
    pub tries: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    pub seq: u64,
    /// The slot GRUB tries first, then the other.
    pub first: Slot,
    pub a: SlotState,
    pub b: SlotState,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the boot state is not valid: {0}")]
    Invalid(String),
    #[error("neither copy of the boot state on the ESP is valid ({0}); `repair` rewrites them")]
    NoValidCopy(String),
    #[error(transparent)]
    Env(#[from] grubenv::EnvError),
}

impl BootState {
    /// A freshly flashed disk: A committed, B empty.
    pub fn initial() -> BootState {
        BootState {
            seq: 1,
            first: Slot::A,
            a: SlotState {
                ok: true,
                tries: None,
            },
            b: SlotState {
                ok: false,
                tries: None,
            },
        }
    }

    pub fn slot(&self, s: Slot) -> SlotState {
        match s {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    fn slot_mut(&mut self, s: Slot) -> &mut SlotState {
        match s {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// What GRUB boots next and whether that boot spends a try (mirrors grub.cfg).
    pub fn next_boot(&self) -> Option<(Slot, bool)> {
        [self.first, self.first.other()]
            .into_iter()
            .find_map(|s| match self.slot(s) {
                SlotState { ok: false, .. } => None,
                SlotState { tries: None, .. } => Some((s, false)),
                SlotState { tries: Some(n), .. } if (1..=3).contains(&n) => Some((s, true)),
                _ => None,
            })
    }

    /// Makes `slot` the next boot on trial with `tries` boots, the other slot behind it.
    pub fn trial(&mut self, slot: Slot, tries: u8) {
        self.first = slot;
        *self.slot_mut(slot) = SlotState {
            ok: true,
            tries: Some(tries.clamp(1, 3)),
        };
    }

    /// `slot` booted and is healthy: it boots from now on without spending tries.
    pub fn commit(&mut self, slot: Slot) {
        self.first = slot;
        *self.slot_mut(slot) = SlotState {
            ok: true,
            tries: None,
        };
    }

    /// Never boot `slot` again until something is installed there (it is being written,
    /// or it failed its trial).
    pub fn disable(&mut self, slot: Slot) {
        *self.slot_mut(slot) = SlotState {
            ok: false,
            tries: None,
        };
        if self.first == slot {
            self.first = slot.other();
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, StateError> {
        let seq = self.seq.to_string();
        let order = format!("{} {}", self.first, self.first.other());
        let flag = |s: SlotState| if s.ok { "1" } else { "0" }.to_owned();
        let tries = |s: SlotState| s.tries.map(|t| t.to_string()).unwrap_or_default();
        let (a_ok, a_tries, b_ok, b_tries) =
            (flag(self.a), tries(self.a), flag(self.b), tries(self.b));
        Ok(grubenv::encode_pairs([
            ("SEQ", seq.as_str()),
            ("ORDER", order.as_str()),
            ("A_OK", a_ok.as_str()),
            ("A_TRIES", a_tries.as_str()),
            ("B_OK", b_ok.as_str()),
            ("B_TRIES", b_tries.as_str()),
            ("END", seq.as_str()),
        ])?)
    }

    pub fn decode(block: &[u8]) -> Result<BootState, StateError> {
        let vars = grubenv::decode(block)?;
        let get = |k: &str| {
            vars.get(k)
                .map(String::as_str)
                .ok_or_else(|| StateError::Invalid(format!("{k} is missing")))
        };
        let seq: u64 = get("SEQ")?
            .parse()
            .map_err(|_| StateError::Invalid("SEQ is not a number".into()))?;
        if get("END")? != get("SEQ")? {
            return Err(StateError::Invalid(format!(
                "SEQ {} and END {} differ: a torn write",
                get("SEQ")?,
                get("END")?
            )));
        }
        let first = get("ORDER")?
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse()?;
        let slot = |ok: &str, tries: &str| -> Result<SlotState, StateError> {
            let ok = match get(ok)? {
                "1" => true,
                "0" => false,
                other => return Err(StateError::Invalid(format!("{ok}={other}"))),
            };
            // GRUB counts down to 0, which it treats like "no tries left".
            let tries = match get(tries)? {
                "" => None,
                n => Some(
                    n.parse::<u8>()
                        .map_err(|_| StateError::Invalid(format!("{tries}={n}")))?,
                ),
            };
            Ok(SlotState { ok, tries })
        };
        Ok(BootState {
            seq,
            first,
            a: slot("A_OK", "A_TRIES")?,
            b: slot("B_OK", "B_TRIES")?,
        })
    }
}

/// The two copies as found on the ESP.
#[derive(Debug)]
pub struct Found {
    pub copies: [Result<BootState, String>; 2],
}

impl Found {
    /// The index and state of the newest valid copy (what GRUB uses).
    pub fn current(&self) -> Option<(usize, &BootState)> {
        self.copies
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().ok().map(|s| (i, s)))
            .max_by_key(|(_, s)| s.seq)
    }

    pub fn all_valid(&self) -> bool {
        self.copies.iter().all(Result::is_ok)
    }
}

/// The boot state files under a mounted ESP.
#[derive(Debug, Clone)]
pub struct BootEnv {
    paths: [PathBuf; 2],
}

impl BootEnv {
    pub fn new(esp: &Path) -> BootEnv {
        BootEnv {
            paths: COPIES.map(|c| esp.join(c)),
        }
    }

    pub fn read(&self) -> Found {
        Found {
            copies: self.paths.clone().map(|p| {
                fs::read(&p)
                    .map_err(|e| format!("{}: {e}", p.display()))
                    .and_then(|b| BootState::decode(&b).map_err(|e| e.to_string()))
            }),
        }
    }

    /// The current state, or an error that says what is wrong with both copies.
    pub fn current(&self) -> Result<BootState, StateError> {
        let found = self.read();
        match found.current() {
            Some((_, s)) => Ok(s.clone()),
            None => Err(StateError::NoValidCopy(
                found
                    .copies
                    .iter()
                    .filter_map(|c| c.as_ref().err().cloned())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// Applies `change` to the current state and writes it as the next sequence number
    /// into the copy that is not the newest valid one.
    pub fn update(&self, change: impl FnOnce(&mut BootState)) -> Result<BootState, StateError> {
        let found = self.read();
        let (newest, mut state) = match found.current() {
            Some((i, s)) => (Some(i), s.clone()),
            None => (None, BootState::initial()),
        };
        change(&mut state);
        state.seq = found
            .copies
            .iter()
            .filter_map(|c| c.as_ref().ok().map(|s| s.seq))
            .max()
            .unwrap_or(0)
            + 1;
        let target = match newest {
            Some(i) => 1 - i,
            None => 0,
        };
        self.write_copy(target, &state)?;
        Ok(state)
    }

    /// Makes both copies valid again after a torn write or damage: the newest valid state
    /// is written over the bad copy. With no valid copy at all, `fallback` is written (the
    /// running slot, committed, is the only state known to boot).
    pub fn repair(&self, fallback: Slot) -> Result<Option<BootState>, StateError> {
        let found = self.read();
        if found.all_valid() {
            return Ok(None);
        }
        let state = match found.current() {
            Some((_, s)) => {
                let mut s = s.clone();
                s.seq += 1;
                s
            }
            None => {
                let mut s = BootState::initial();
                s.commit(fallback);
                s.disable(fallback.other());
                s.first = fallback;
                s
            }
        };
        for (i, c) in found.copies.iter().enumerate() {
            if c.is_err() {
                self.write_copy(i, &state)?;
            }
        }
        if found.current().is_none() {
            // Both were bad: the second copy gets the same state one sequence later so the
            // two are distinct and both valid.
            let mut next = state.clone();
            next.seq += 1;
            self.write_copy(1, &next)?;
            return Ok(Some(next));
        }
        Ok(Some(state))
    }

    /// Writes in place (GRUB finds the file by its blocks; a rename would move them) and
    /// syncs before returning.
    fn write_copy(&self, i: usize, state: &BootState) -> Result<(), StateError> {
        let path = self.paths.get(i).cloned().unwrap_or_default();
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let block = state.encode()?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&block).map_err(io)?;
        f.set_len(grubenv::SIZE as u64).map_err(io)?;
        f.sync_all().map_err(io)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Writes a fresh state into both copies (image build).
    pub fn init(&self, state: &BootState) -> Result<(), StateError> {
        let mut second = state.clone();
        self.write_copy(0, state)?;
        second.seq = state.seq + 1;
        self.write_copy(1, &second)
    }
}

/// The initial copies' bytes, for the image builder: `(name on the ESP, block)`.
pub fn initial_blocks() -> Result<[(&'static str, Vec<u8>); 2], StateError> {
    let first = BootState::initial();
    let mut second = first.clone();
    second.seq += 1;
    Ok([(COPIES[0], first.encode()?), (COPIES[1], second.encode()?)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> (tempfile::TempDir, BootEnv) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("EFI/appliance")).unwrap();
        let env = BootEnv::new(dir.path());
        env.init(&BootState::initial()).unwrap();
        (dir, env)
    }

    #[test]
    fn a_fresh_disk_boots_a_committed() {
        let (_d, env) = env();
        let s = env.current().unwrap();
        assert_eq!(s.next_boot(), Some((Slot::A, false)));
        assert_eq!(s.seq, 2);
    }

    #[test]
    fn trial_then_commit_alternates_copies_and_counts_up() {
        let (_d, env) = env();
        let s = env.update(|s| s.trial(Slot::B, TRIAL_TRIES)).unwrap();
        assert_eq!(s.seq, 3);
        assert_eq!(s.next_boot(), Some((Slot::B, true)));
        let found = env.read();
        assert_eq!(
            found.current().unwrap().0,
            0,
            "seq 3 went over the older copy 0"
        );
        let s = env.update(|s| s.commit(Slot::B)).unwrap();
        assert_eq!(s.next_boot(), Some((Slot::B, false)));
        assert_eq!(env.read().current().unwrap().0, 1);
        assert_eq!(env.current().unwrap(), s);
    }

    #[test]
    fn spent_tries_fall_back_to_the_other_slot() {
        let mut s = BootState::initial();
        s.trial(Slot::B, 1);
        assert_eq!(s.next_boot(), Some((Slot::B, true)));
        s.b.tries = Some(0);
        assert_eq!(s.next_boot(), Some((Slot::A, false)));
        s.disable(Slot::A);
        assert_eq!(s.next_boot(), None);
    }

    #[test]
    fn a_torn_write_leaves_the_previous_state() {
        let (_d, env) = env();
        let before = env.current().unwrap();
        // Simulate a cut halfway through writing the next state: first sector new, rest old.
        let mut next = before.clone();
        next.trial(Slot::B, 3);
        next.seq = before.seq + 1;
        let target = 1 - env.read().current().unwrap().0;
        let new_block = next.encode().unwrap();
        let path = &env.paths[target];
        let mut old_block = fs::read(path).unwrap();
        // A block whose SEQ line is new but whose END line is old.
        let text = String::from_utf8(new_block.clone()).unwrap();
        let end_at = text.find("END=").unwrap();
        old_block[..end_at].copy_from_slice(&new_block[..end_at]);
        fs::write(path, &old_block).unwrap();
        let found = env.read();
        assert!(found.copies[target].is_err(), "{:?}", found.copies[target]);
        assert_eq!(env.current().unwrap(), before);
        // Repair rewrites the torn copy; both valid afterwards, the state unchanged.
        let repaired = env.repair(Slot::A).unwrap().unwrap();
        assert!(env.read().all_valid());
        assert_eq!(repaired.next_boot(), before.next_boot());
    }

    #[test]
    fn with_both_copies_gone_repair_commits_the_running_slot() {
        let (d, env) = env();
        for c in COPIES {
            fs::write(d.path().join(c), b"garbage").unwrap();
        }
        assert!(matches!(env.current(), Err(StateError::NoValidCopy(_))));
        let s = env.repair(Slot::B).unwrap().unwrap();
        assert_eq!(s.next_boot(), Some((Slot::B, false)));
        assert!(env.read().all_valid());
        assert_eq!(env.repair(Slot::B).unwrap(), None);
    }

    #[test]
    fn blocks_are_grub_sized_with_seq_first_and_end_last() {
        let blocks = initial_blocks().unwrap();
        for (_, b) in &blocks {
            assert_eq!(b.len(), grubenv::SIZE);
            let text = String::from_utf8_lossy(b);
            let vars: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            assert!(vars.first().unwrap().starts_with("SEQ="));
            assert!(vars.last().unwrap().starts_with("END="));
        }
    }

    #[test]
    fn grub_cfg_reads_both_copies_and_every_variable() {
        let cfg = crate::boot::GRUB_CFG;
        for c in COPIES {
            let name = c.rsplit('/').next().unwrap();
            assert!(cfg.contains(name), "{name} not read by grub.cfg");
        }
        let load = cfg
            .lines()
            .find(|l| l.trim_start().starts_with("load_env"))
            .unwrap();
        for var in ["SEQ", "END", "ORDER", "A_OK", "A_TRIES", "B_OK", "B_TRIES"] {
            assert!(load.contains(var), "{var} not loaded: {load}");
        }
    }
}
