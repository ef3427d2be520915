//! The on-device updater: installs a bundle into the inactive slot, hands it to the
//! bootloader on trial, commits it once the system is healthy, and notices a rollback.
//!
//! Order matters for power cuts. The target slot is disabled in the boot state before the
//! first byte is written, so a half-written slot is never booted; progress is saved every
//! few chunks so a cut download resumes; the slot is read back and verified before the
//! boot state offers it on trial; the state file follows the boot state, never leads it.

pub mod source;
pub mod state;

use std::fs;
use std::io::{self, Read, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::bootstate::{self, BootEnv, BootState, Slot};
use crate::bundle::{
    self, BundleError, Keyring, Manifest, PayloadReader, Policy, PublicKey, Version,
};
pub use source::Source;
use state::{Install, Phase, StateFile, UpdateState};

/// Progress is made durable every this many chunks (16 MiB).
const SYNC_EVERY: usize = 16;
/// Attempts to reopen a source that failed mid-stream before the install gives up.
const RETRIES: u32 = 5;

/// Where the updater finds things on the device.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The mounted ESP (boot state).
    pub esp: PathBuf,
    /// Slot devices are `<slot_dir>/rootA` and `<slot_dir>/rootB`.
    pub slot_dir: PathBuf,
    /// The state file's directory on /data.
    pub state_dir: PathBuf,
    /// `VERSION=`, `SECURITY_VERSION=` and `COMPATIBLE=` of the running release.
    pub release: PathBuf,
    /// The keyring built into the running release.
    pub keyring: PathBuf,
    /// Holds `appliance.slot=A|B`, set by GRUB.
    pub cmdline: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            esp: "/boot/efi".into(),
            slot_dir: "/dev/disk/by-partlabel".into(),
            state_dir: "/data/update".into(),
            release: "/usr/lib/appliance/release".into(),
            keyring: "/usr/share/appliance/update-keys".into(),
            cmdline: "/proc/cmdline".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    BootState(#[from] bootstate::StateError),
    #[error(transparent)]
    StateFile(#[from] state::StateFileError),
    #[error(transparent)]
    Keys(#[from] bundle::keys::KeyError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Release { path: String, reason: String },
    #[error("{0} has no appliance.slot=A|B: not booted by the appliance's GRUB")]
    UnknownSlot(String),
    #[error("the bundle's payload ({payload} bytes) does not fit slot {slot} ({capacity} bytes)")]
    TooBig {
        slot: Slot,
        payload: u64,
        capacity: u64,
    },
    #[error(
        "reading slot {slot} back: chunk {chunk} differs from what was written (a failing disk?)"
    )]
    ReadBack { slot: Slot, chunk: usize },
    #[error(
        "the source failed {RETRIES} times at chunk {chunk}: {last}; run the install again to resume"
    )]
    SourceFailed { chunk: usize, last: String },
    #[error("slot {0} holds no committed system to roll back to")]
    NothingToRollBackTo(Slot),
    #[error(
        "slot {slot} runs security version {version}, below this device's floor {floor}: install a bundle signed with allow_downgrade instead"
    )]
    RollbackBelowFloor {
        slot: Slot,
        version: u64,
        floor: u64,
    },
}

impl UpdateError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> UpdateError {
        let what = what.into();
        move |source| UpdateError::Io { what, source }
    }
}

/// The running release, from its release file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: Version,
    pub security_version: u64,
    pub compatible: String,
}

impl Default for Release {
    /// This build's version, security version 1.
    fn default() -> Self {
        Release {
            version: env!("CARGO_PKG_VERSION").parse().unwrap_or(Version {
                major: 0,
                minor: 0,
                patch: 0,
            }),
            security_version: 1,
            compatible: bundle::cli::COMPATIBLE.to_owned(),
        }
    }
}

impl Release {
    pub fn parse(path: &str, text: &str) -> Result<Release, UpdateError> {
        let field = |name: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .ok_or_else(|| UpdateError::Release {
                    path: path.to_owned(),
                    reason: format!("no {name}="),
                })
        };
        let bad = |name: &str, e: String| UpdateError::Release {
            path: path.to_owned(),
            reason: format!("{name}: {e}"),
        };
        Ok(Release {
            version: field("VERSION")?
                .parse()
                .map_err(|e: bundle::version::BadVersion| bad("VERSION", e.to_string()))?,
            security_version: field("SECURITY_VERSION")?
                .parse()
                .map_err(|e: std::num::ParseIntError| bad("SECURITY_VERSION", e.to_string()))?,
            compatible: field("COMPATIBLE")?,
        })
    }

    /// The file's text, for the image builder.
    pub fn render(&self) -> String {
        format!(
            "VERSION={}\nSECURITY_VERSION={}\nCOMPATIBLE={}\n",
            self.version, self.security_version, self.compatible
        )
    }
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Report {
    pub version: Version,
    pub slot: Slot,
    pub bytes: u64,
    pub resumed_at_chunk: usize,
    pub took: Duration,
}

/// What the updater knows, for `status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub running: Slot,
    pub release: Release,
    pub boot: Result<BootState, String>,
    pub next_boot: Option<(Slot, bool)>,
    pub state: UpdateState,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub paths: Paths,
    /// Keys from the config's `update.trusted_keys`, on top of the built-in keyring.
    pub extra_keys: Vec<PublicKey>,
    /// Unix seconds (a parameter so tests control expiry).
    pub now: u64,
    /// The config generation active now, recorded by an install (see [`ConfigStep`]).
    pub config_generation: Option<u64>,
}

impl Device {
    pub fn new(paths: Paths) -> Device {
        Device {
            paths,
            extra_keys: Vec::new(),
            now: bundle::cli::now(),
            config_generation: None,
        }
    }

    fn boot_env(&self) -> BootEnv {
        BootEnv::new(&self.paths.esp)
    }

    fn state_file(&self) -> StateFile {
        StateFile::new(&self.paths.state_dir)
    }

    pub fn slot_device(&self, slot: Slot) -> PathBuf {
        self.paths.slot_dir.join(slot.partlabel())
    }

    pub fn running_slot(&self) -> Result<Slot, UpdateError> {
        let path = self.paths.cmdline.display().to_string();
        let text = fs::read_to_string(&self.paths.cmdline).map_err(UpdateError::io(&path))?;
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("appliance.slot="))
            .and_then(|s| s.parse().ok())
            .ok_or(UpdateError::UnknownSlot(path))
    }

    pub fn release(&self) -> Result<Release, UpdateError> {
        let path = self.paths.release.display().to_string();
        let text = fs::read_to_string(&self.paths.release).map_err(UpdateError::io(&path))?;
        Release::parse(&path, &text)
    }

    fn policy(&self, release: &Release, state: &UpdateState) -> Result<Policy, UpdateError> {
        let keyring = Keyring::load(&self.paths.keyring)?.with(self.extra_keys.iter().copied());
        Ok(Policy {
            keyring,
            compatible: release.compatible.clone(),
            installed: release.version,
            security_floor: state.security_floor.max(release.security_version),
            now: self.now,
        })
    }

    pub fn status(&self) -> Result<Status, UpdateError> {
        let boot = self.boot_env().current().map_err(|e| e.to_string());
        Ok(Status {
            running: self.running_slot()?,
            release: self.release()?,
            next_boot: boot.as_ref().ok().and_then(BootState::next_boot),
            boot,
            state: self.state_file().load()?,
        })
    }

    /// Checks and writes `source` into the inactive slot and offers it to the bootloader
    /// on trial. Nothing is written before the bundle's signature, compatibility, expiry
    /// and versions pass; each chunk is checked before it is written.
    pub fn install(
        &self,
        source: &mut dyn Source,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Report, UpdateError> {
        let started = Instant::now();
        let running = self.running_slot()?;
        let target = running.other();
        let release = self.release()?;
        let state_file = self.state_file();
        let mut state = state_file.load()?;
        let policy = self.policy(&release, &state)?;

        let mut stream = source
            .open_at(0)
            .map_err(UpdateError::io(format!("opening {}", source.describe())))?;
        let (header, payload_offset) = bundle::read_header_with_len(&mut stream)?;
        let manifest = header.verify(&policy)?;

        let device_path = self.slot_device(target);
        let mut device = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device_path)
            .map_err(UpdateError::io(format!(
                "opening slot {target} ({})",
                device_path.display()
            )))?;
        let capacity = device
            .seek(SeekFrom::End(0))
            .map_err(UpdateError::io("sizing the slot"))?;
        if manifest.payload.size > capacity {
            return Err(UpdateError::TooBig {
                slot: target,
                payload: manifest.payload.size,
                capacity,
            });
        }

        let resume_from = match &state.last {
            Some(last)
                if last.phase == Phase::Writing
                    && last.payload_sha256 == manifest.payload.sha256
                    && Slot::from(last.slot) == target =>
            {
                last.chunks_done
            }
            _ => 0,
        };
        // A resumed install disabled the slot in its first run.
        let mut disabled = resume_from > 0;
        let mut install = Install {
            version: manifest.version,
            security_version: manifest.security_version,
            payload_sha256: manifest.payload.sha256.clone(),
            slot: target.into(),
            from_slot: running.into(),
            from_version: release.version,
            from_security_version: release.security_version,
            phase: Phase::Writing,
            chunks_done: resume_from,
            chunks: manifest.payload.chunks.len(),
            source: source.describe(),
            updated: self.now,
            config_generation: self.config_generation,
            config_migrated: None,
            config_restored: false,
        };
        state.last = Some(install.clone());
        state_file.save(&state)?;
        tracing::info!(
            version = %manifest.version,
            slot = %target,
            resume_from,
            "installing from {}",
            source.describe()
        );

        let mut reader = if resume_from == 0 {
            PayloadReader::new(stream, &manifest)
        } else {
            drop(stream);
            PayloadReader::resume(
                self.reopen(source, payload_offset, &manifest, resume_from)?,
                &manifest,
                resume_from,
            )
        };
        let mut failures = 0;
        loop {
            let chunk = match reader.next_chunk() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                // A cut connection or a short read: reconnect at the chunk that failed.
                Err(e @ (BundleError::Io(_) | BundleError::Truncated { .. })) => {
                    let at = install.chunks_done;
                    if failures == RETRIES {
                        // Keep what was written: the next run resumes here.
                        device
                            .sync_data()
                            .map_err(UpdateError::io(format!("syncing slot {target}")))?;
                        state.last = Some(install);
                        state_file.save(&state)?;
                        return Err(UpdateError::SourceFailed {
                            chunk: at,
                            last: e.to_string(),
                        });
                    }
                    failures += 1;
                    tracing::warn!(
                        chunk = at,
                        attempt = failures,
                        "source failed, resuming: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(200 * u64::from(failures)));
                    reader = PayloadReader::resume(
                        self.reopen(source, payload_offset, &manifest, at)?,
                        &manifest,
                        at,
                    );
                    continue;
                }
                // The bundle itself is bad: give the install up.
                Err(e) => {
                    install.phase = Phase::Abandoned;
                    state.last = Some(install);
                    state_file.save(&state)?;
                    return Err(e.into());
                }
            };
            let (index, bytes) = chunk;
            if !disabled {
                // From the first write until the trial is set the target slot must not
                // boot; a bundle refused before any write leaves the boot state alone.
                let boot = self.boot_env().current()?;
                if boot.slot(target).ok || boot.first == target {
                    self.boot_env().update(|s| s.disable(target))?;
                }
                disabled = true;
            }
            device
                .seek(SeekFrom::Start(index as u64 * manifest.payload.chunk_size))
                .and_then(|_| device.write_all(bytes))
                .map_err(UpdateError::io(format!("writing slot {target}")))?;
            install.chunks_done = index + 1;
            progress(install.chunks_done, install.chunks);
            if install.chunks_done.is_multiple_of(SYNC_EVERY) {
                device
                    .sync_data()
                    .map_err(UpdateError::io(format!("syncing slot {target}")))?;
                state.last = Some(install.clone());
                state_file.save(&state)?;
            }
        }
        device
            .sync_all()
            .map_err(UpdateError::io(format!("syncing slot {target}")))?;
        read_back(&mut device, &manifest, target)?;

        self.boot_env()
            .update(|s| s.trial(target, bootstate::TRIAL_TRIES))?;
        install.phase = Phase::Pending;
        install.updated = self.now;
        state.last = Some(install);
        state_file.save(&state)?;
        Ok(Report {
            version: manifest.version,
            slot: target,
            bytes: manifest.payload.size,
            resumed_at_chunk: resume_from,
            took: started.elapsed(),
        })
    }

    fn reopen(
        &self,
        source: &mut dyn Source,
        payload_offset: u64,
        manifest: &Manifest,
        chunk: usize,
    ) -> Result<Box<dyn Read + Send>, UpdateError> {
        let at = payload_offset + chunk as u64 * manifest.payload.chunk_size;
        source.open_at(at).map_err(UpdateError::io(format!(
            "reopening {} at byte {at}",
            source.describe()
        )))
    }

    /// Early at boot: repairs a damaged boot state, and if an install was pending on the
    /// other slot, records that it rolled back and takes that slot out of the rotation.
    /// Returns the rollback message, if any.
    pub fn check_boot(&self) -> Result<Option<String>, UpdateError> {
        let running = self.running_slot()?;
        if let Some(repaired) = self.boot_env().repair(running)? {
            tracing::warn!(
                seq = repaired.seq,
                "the boot state had a damaged copy; repaired"
            );
        }
        let state_file = self.state_file();
        let mut state = state_file.load()?;
        let Some(last) = state.last.as_mut() else {
            return Ok(None);
        };
        let slot = Slot::from(last.slot);
        if !matches!(last.phase, Phase::Pending | Phase::Writing) || slot == running {
            return Ok(None);
        }
        let was_pending = last.phase == Phase::Pending;
        let boot = self.boot_env().current()?;
        // A pending slot that still has tries left will be tried on the next boot.
        if was_pending && matches!(boot.slot(slot).tries, Some(n) if n > 0) && boot.slot(slot).ok {
            return Ok(None);
        }
        if !was_pending {
            // A cut install: nothing to report, the slot stays disabled until it is resumed.
            return Ok(None);
        }
        last.phase = Phase::RolledBack;
        last.updated = self.now;
        let message = format!(
            "update to {} in slot {slot} did not come up healthy; rolled back to slot {running}",
            last.version
        );
        self.boot_env().update(|s| {
            s.disable(slot);
            s.commit(running);
        })?;
        state_file.save(&state)?;
        tracing::error!("{message}");
        Ok(Some(message))
    }

    /// The system is healthy: commit the running slot (it stops spending tries) and raise
    /// the anti-rollback floor to its security version.
    pub fn mark_good(&self) -> Result<bool, UpdateError> {
        let running = self.running_slot()?;
        let release = self.release()?;
        let boot = self.boot_env().current()?;
        let state_file = self.state_file();
        let mut state = state_file.load()?;
        let mut changed = false;
        if boot.first != running || boot.slot(running).tries.is_some() || !boot.slot(running).ok {
            self.boot_env().update(|s| s.commit(running))?;
            changed = true;
        }
        if let Some(last) = state.last.as_mut()
            && Slot::from(last.slot) == running
            && matches!(last.phase, Phase::Pending | Phase::Writing)
        {
            last.phase = Phase::Committed;
            last.updated = self.now;
            changed = true;
        }
        if release.security_version > state.security_floor {
            state.security_floor = release.security_version;
            changed = true;
        }
        if changed {
            state_file.save(&state)?;
        }
        Ok(changed)
    }

    /// The boot is unhealthy: whether the caller should reboot, which it should only when
    /// the running slot is on trial (a reboot spends a try and, in the end, returns to the
    /// old slot); a committed slot that fails its health check stays up to be looked at.
    pub fn health_failed(&self) -> Result<bool, UpdateError> {
        let running = self.running_slot()?;
        let boot = self.boot_env().current()?;
        Ok(boot.slot(running).tries.is_some())
    }

    /// Boots the other slot next, on trial, when it holds a committed system whose
    /// security version is not below the floor. The caller reboots.
    pub fn rollback(&self) -> Result<Slot, UpdateError> {
        let running = self.running_slot()?;
        let other = running.other();
        let boot = self.boot_env().current()?;
        let state_file = self.state_file();
        let mut state = state_file.load()?;
        if !boot.slot(other).ok {
            return Err(UpdateError::NothingToRollBackTo(other));
        }
        if let Some(last) = state.last.as_mut()
            && Slot::from(last.from_slot) == other
        {
            if last.from_security_version < state.security_floor {
                return Err(UpdateError::RollbackBelowFloor {
                    slot: other,
                    version: last.from_security_version,
                    floor: state.security_floor,
                });
            }
            last.phase = Phase::Abandoned;
            last.updated = self.now;
        }
        self.boot_env()
            .update(|s| s.trial(other, bootstate::TRIAL_TRIES))?;
        state_file.save(&state)?;
        Ok(other)
    }
}

/// What this boot must do to the config store, from the last install (the store itself
/// lives in the appliance crate; `applctl update check-boot` does the step and reports it
/// with [`Device::config_step_done`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStep {
    Nothing,
    /// The first boot of a new release: migrate the active generation to its format.
    Migrate,
    /// Back on the old release after the new one touched the config: activate the
    /// generation that was active when the install started.
    Restore(u64),
}

impl Device {
    /// Decides the config step of this boot. Only a release that booted far enough to run
    /// its migration can have changed the config, so only then does a rollback restore it;
    /// an install refused or cut before that leaves the config alone.
    pub fn config_step(&self) -> Result<ConfigStep, UpdateError> {
        let running = self.running_slot()?;
        let state = self.state_file().load()?;
        let Some(last) = &state.last else {
            return Ok(ConfigStep::Nothing);
        };
        let new_slot = Slot::from(last.slot);
        Ok(match last.phase {
            Phase::Pending | Phase::Committed
                if running == new_slot && last.config_migrated.is_none() =>
            {
                ConfigStep::Migrate
            }
            Phase::RolledBack | Phase::Abandoned
                if running == Slot::from(last.from_slot)
                    && last.config_migrated.is_some()
                    && !last.config_restored =>
            {
                last.config_generation
                    .map_or(ConfigStep::Nothing, ConfigStep::Restore)
            }
            _ => ConfigStep::Nothing,
        })
    }

    /// Records that `step` was done; `active` is the generation active after it. A step
    /// done on one boot is not done again on the next.
    pub fn config_step_done(
        &self,
        step: ConfigStep,
        active: Option<u64>,
    ) -> Result<(), UpdateError> {
        let state_file = self.state_file();
        let mut state = state_file.load()?;
        let Some(last) = state.last.as_mut() else {
            return Ok(());
        };
        match step {
            ConfigStep::Nothing => return Ok(()),
            // With nothing stored the daemons run the built-in default: 0 says "looked".
            ConfigStep::Migrate => last.config_migrated = Some(active.unwrap_or(0)),
            ConfigStep::Restore(_) => last.config_restored = true,
        }
        last.updated = self.now;
        state_file.save(&state)?;
        Ok(())
    }
}

/// Reads the written payload back from the slot and checks every chunk hash.
fn read_back(device: &mut fs::File, manifest: &Manifest, slot: Slot) -> Result<(), UpdateError> {
    let p = &manifest.payload;
    // Drop the slot's pages from the cache so the read comes from the disk, not from
    // what was just written to memory.
    if let Err(e) = nix::fcntl::posix_fadvise(
        &*device,
        0,
        i64::try_from(p.size).unwrap_or(i64::MAX),
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    ) {
        tracing::warn!("cannot drop slot {slot} from the page cache ({e}); reading back from it");
    }
    device
        .seek(SeekFrom::Start(0))
        .map_err(UpdateError::io(format!("reading slot {slot} back")))?;
    let mut buf = vec![0u8; p.chunk_size as usize];
    for (i, expected) in p.chunks.iter().enumerate() {
        let len = p.chunk_size.min(p.size - i as u64 * p.chunk_size) as usize;
        let chunk = buf.get_mut(..len).unwrap_or_default();
        device
            .read_exact(chunk)
            .map_err(UpdateError::io(format!("reading slot {slot} back")))?;
        if &hex::encode(Sha256::digest(&*chunk)) != expected {
            return Err(UpdateError::ReadBack { slot, chunk: i });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
