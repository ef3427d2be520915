//! What the updater remembers on /data: the anti-rollback floor and the last install,
//! written atomically (temp file, fsync, rename, fsync of the directory).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bootstate::Slot;
use crate::bundle::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Chunks are being written to the slot; `chunks_done` says how far.
    Writing,
    /// Written, read back and verified; the bootloader will try it on the next boot.
    Pending,
    /// It booted and the health check passed; it is the committed slot.
    Committed,
    /// It did not come up healthy within its tries and the old slot booted again.
    RolledBack,
    /// Given up by hand (`rollback`) or by a later install.
    Abandoned,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    pub version: Version,
    pub security_version: u64,
    /// The payload hash: a resumed install continues only the same bundle.
    pub payload_sha256: String,
    pub slot: SlotName,
    pub from_slot: SlotName,
    /// The release the install replaced, for a later manual rollback.
    pub from_version: Version,
    pub from_security_version: u64,
    pub phase: Phase,
    pub chunks_done: usize,
    pub chunks: usize,
    pub source: String,
    /// Unix seconds of the last change.
    pub updated: u64,
    /// The config generation active when the install started: what a rollback to the old
    /// firmware activates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<u64>,
    /// The generation active after the new slot's first boot looked at the config
    /// (migrated to its format, or already current); unset while it has not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_migrated: Option<u64>,
    /// A rollback has activated `config_generation` again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub config_restored: bool,
}

/// A slot as the state file spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotName {
    A,
    B,
}

impl From<Slot> for SlotName {
    fn from(s: Slot) -> Self {
        match s {
            Slot::A => SlotName::A,
            Slot::B => SlotName::B,
        }
    }
}

impl From<SlotName> for Slot {
    fn from(s: SlotName) -> Self {
        match s {
            SlotName::A => Slot::A,
            SlotName::B => Slot::B,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    /// The anti-rollback floor: the highest security version ever committed here.
    pub security_floor: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Install>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}); move it aside to start over (the security floor in it is then lost)"
    )]
    Damaged { path: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state; a missing file is a device that never updated.
    pub fn load(&self) -> Result<UpdateState, StateFileError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateFileError::Damaged {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateState::default()),
            Err(source) => Err(StateFileError::Io {
                path: self.path.display().to_string(),
                source,
            }),
        }
    }

    pub fn save(&self, state: &UpdateState) -> Result<(), StateFileError> {
        let io = |source| StateFileError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(state).map_err(|e| io(std::io::Error::other(e)))?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}
