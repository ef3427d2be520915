//! The change that waits for a confirm, kept on disk so the timer survives a restart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const FILE: &str = "pending.json";

/// A generation applied and active, reverted to `previous` at `deadline` unless confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub generation: u64,
    pub previous: u64,
    /// Wall-clock time, seconds since the epoch: a monotonic clock does not survive a
    /// restart, and a reboot should not extend the window.
    pub deadline_unix: u64,
    /// The daemons that applied `generation`, in apply order; a revert re-applies
    /// `previous` on these.
    pub daemons: Vec<String>,
}

impl Pending {
    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.deadline_unix)
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.deadline()
    }

    /// Seconds left at `now` (0 once expired).
    pub fn seconds_left(&self, now: SystemTime) -> u64 {
        self.deadline()
            .duration_since(now)
            .map_or(0, |d| d.as_secs())
    }
}

/// Where applianced keeps its state (default `/data/applianced`).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// Why the pending change could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("applianced state {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("applianced state {} is corrupt ({reason}); inspect it, then remove it to go on", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl StateDir {
    /// Makes the directory (mode 0700) if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        // Only applianced (root) reads or writes the pending change.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StateError::Io {
                path: dir.clone(),
                source,
            })?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    pub fn load(&self) -> Result<Option<Pending>, StateError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            })
    }

    /// Temp file, fsync, rename, fsync of the directory: a crash leaves the old or the
    /// new state, never half of one.
    pub fn save(&self, pending: &Pending) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{FILE}.tmp-{}", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let body = serde_json::to_vec_pretty(pending).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&body).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        self.sync_dir()
    }

    pub fn clear(&self) -> Result<(), StateError> {
        let path = self.path();
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path().join("applianced")).unwrap();
        assert_eq!(s.load().unwrap(), None);
        let p = Pending {
            generation: 3,
            previous: 2,
            deadline_unix: 1_000,
            daemons: vec!["netd".into()],
        };
        s.save(&p).unwrap();
        assert_eq!(s.load().unwrap(), Some(p.clone()));
        assert!(p.expired(UNIX_EPOCH + Duration::from_secs(1_000)));
        assert_eq!(p.seconds_left(UNIX_EPOCH + Duration::from_secs(990)), 10);
        s.clear().unwrap();
        assert_eq!(s.load().unwrap(), None);
        fs::write(s.path(), b"{").unwrap();
        assert!(matches!(s.load(), Err(StateError::Corrupt { .. })));
    }
}
