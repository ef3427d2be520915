//! The config store: numbered, immutable generations of appliance.toml in a data
//! directory (default [`DEFAULT_DIR`]), plus an `active` pointer naming the generation
//! in use.
//!
//! # On-disk format
//!
//! Generation N lives in `<dir>/gen-<N as 8 digits>.toml`:
//!
//! ```text
//! # appliance.toml generation written by the config store; editing this file breaks its checksum
//! # generation: 42
//! # created: 2025-01-02T03:04:05Z
//! # comment: applctl config save
//! # sha256: <64 lowercase hex digits>
//! <the config text, byte for byte>
//! ```
//!
//! The header is TOML comments only, so the whole file is still a valid appliance.toml.
//! The checksum is SHA-256 over `"appliance-config-generation v1\n"`, then
//! `"<number>\n<created>\n<comment>\n"`, then the body. The comment never holds a
//! newline, so that framing is unambiguous.
//!
//! `<dir>/active` is:
//!
//! ```text
//! # active config generation, written by the config store
//! generation = 42
//! sha256 = "<sha256 of "appliance-config-active v1\n42\n">"
//! ```
//!
//! Every file is written to a `.tmp-*` file in the same directory, fsynced, renamed over
//! its final name and the directory fsynced, so a crash leaves either the old or the new
//! file (plus possibly a stray temp file, which is ignored and later removed).
//!
//! # Who may read it
//!
//! The daemons run as their own users and read the active generation themselves. When
//! the group [`READER_GROUP`] exists (looked up in /etc/group), files are mode 0640 and
//! the directory 0750, both with that group, and the daemons' users are its members;
//! otherwise (a development machine) everything is root-only: 0600 and 0700. Opening
//! the store brings files written under the other rule (by older firmware, on a /data
//! that outlives the root) to the current one. Only the owner (root) writes.
//!
//! The store assumes one writing process at a time (the config daemon or applctl);
//! writers inside one process are serialised by the store itself.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

/// Where the appliance keeps its config generations.
pub const DEFAULT_DIR: &str = "/data/config";
/// How many generations survive retention by default.
pub const DEFAULT_KEEP: usize = 50;

const POINTER_NAME: &str = "active";
const GEN_PREFIX: &str = "gen-";
const GEN_SUFFIX: &str = ".toml";
const TEMP_PREFIX: &str = ".tmp-";
/// Temp files younger than this may belong to a writer in another process that is
/// about to rename them; deleting those would make its commit fail.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

const HEADER_MAGIC: &str = "# appliance.toml generation written by the config store; editing this file breaks its checksum";
const GEN_DOMAIN: &str = "appliance-config-generation v1\n";
const POINTER_MAGIC: &str = "# active config generation, written by the config store";
const POINTER_DOMAIN: &str = "appliance-config-active v1\n";

/// The group whose members (the daemons' users) may read the generations.
pub const READER_GROUP: &str = "appliance";

/// Modes and group of the store's files: readable by [`READER_GROUP`] when it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    group: Option<u32>,
}

impl Access {
    fn for_group(name: &str) -> Self {
        let group = match nix::unistd::Group::from_name(name) {
            Ok(g) => g.map(|g| g.gid.as_raw()),
            Err(e) => {
                tracing::warn!(
                    "cannot look up group {name:?}: {e}; the config store stays readable by root only"
                );
                None
            }
        };
        Self { group }
    }

    fn file_mode(self) -> u32 {
        if self.group.is_some() { 0o640 } else { 0o600 }
    }

    fn dir_mode(self) -> u32 {
        if self.group.is_some() { 0o750 } else { 0o700 }
    }

    /// Whether `meta` has one of the modes the store gives (under either rule). Anything
    /// else was set by someone on purpose, or `--data-dir` names a directory that is not
    /// a store (`/tmp`, `/data`): opening leaves those alone.
    fn is_store_mode(meta: &fs::Metadata, dir: bool) -> bool {
        let mode = meta.permissions().mode() & 0o7777;
        if dir {
            matches!(mode, 0o700 | 0o750)
        } else {
            matches!(mode, 0o600 | 0o640)
        }
    }

    /// Whether `meta` (of a file, or the directory with `dir`) already has this access.
    fn matches(self, meta: &fs::Metadata, dir: bool) -> bool {
        let mode = if dir {
            self.dir_mode()
        } else {
            self.file_mode()
        };
        meta.permissions().mode() & 0o777 == mode && self.group.is_none_or(|g| meta.gid() == g)
    }

    /// Gives `path` this access: group first, so that the wider mode never applies to a
    /// file still in the owner's group.
    fn apply(self, path: &Path, dir: bool) -> io::Result<()> {
        if let Some(g) = self.group {
            std::os::unix::fs::chown(path, None, Some(g))?;
        }
        let mode = if dir {
            self.dir_mode()
        } else {
            self.file_mode()
        };
        fs::set_permissions(path, Permissions::from_mode(mode))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exists but is not a directory; the config store needs a directory there", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "generation {0} does not exist in the config store (it may have been removed by retention)"
    )]
    NotFound(u64),
    #[error("generation {number} is corrupt and will not be used: {reason}")]
    Corrupt { number: u64, reason: String },
    #[error("the config store holds no intact generation; save a config first")]
    Empty,
    #[error(
        "generation numbers are exhausted (a file claims number {0}); move the old generations away"
    )]
    NumbersExhausted(u64),
}

/// Metadata of one intact generation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GenerationInfo {
    pub number: u64,
    /// Creation time, RFC 3339 in UTC (`2025-01-02T03:04:05Z`).
    pub created: String,
    pub comment: String,
    /// The header checksum, lowercase hex.
    pub sha256: String,
    /// Whether the `active` pointer names this generation.
    pub active: bool,
}

/// One intact generation with its config text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Generation {
    pub info: GenerationInfo,
    pub text: String,
}

/// A problem the store worked around (a skipped corrupt file, a broken pointer).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub file: PathBuf,
    pub message: String,
}

/// Handle on a config store directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
    access: Access,
    /// Number allocation, retention and pointer updates read then write; two threads
    /// interleaving them could reuse a number or delete a just-activated generation.
    write_lock: Mutex<()>,
}

enum Pointer {
    Missing,
    Corrupt(String),
    Points(u64),
}

impl Store {
    /// Opens (creating if missing) the store in `dir`, keeping [`DEFAULT_KEEP`]
    /// generations, readable by [`READER_GROUP`] when that group exists; brings the
    /// modes of existing files to that rule and removes stale temp files left by crashed
    /// writers.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with_access(dir.into(), Access::for_group(READER_GROUP))
    }

    fn open_with_access(dir: PathBuf, access: Access) -> Result<Self, StoreError> {
        ensure_dir(&dir, access)?;
        let store = Store {
            dir,
            keep: DEFAULT_KEEP,
            access,
            write_lock: Mutex::new(()),
        };
        store.fix_access();
        store.remove_stale_temps();
        Ok(store)
    }

    /// Sets how many generations retention keeps. At least one is always kept, because
    /// deleting the newest would let its number be reused.
    pub fn with_keep(mut self, keep: usize) -> Self {
        self.keep = keep.max(1);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `text` as a new generation (not activated) and applies retention.
    /// Returns the new generation's number.
    pub fn commit(&self, text: &str, comment: &str) -> Result<u64, StoreError> {
        let _guard = self.lock();
        let numbers = self.generation_numbers()?;
        let number = match numbers.last() {
            None => 1,
            Some(&max) => max
                .checked_add(1)
                .ok_or(StoreError::NumbersExhausted(max))?,
        };
        let created = rfc3339(SystemTime::now());
        let comment = one_line(comment);
        let contents = render_generation(number, &created, &comment, text);
        write_atomic(
            &self.dir,
            &gen_file_name(number),
            contents.as_bytes(),
            true,
            self.access,
        )?;
        tracing::info!(generation = number, comment = %comment, "committed config generation");
        self.apply_retention();
        Ok(number)
    }

    /// Points `active` at generation `number`, which must exist and be intact.
    pub fn activate(&self, number: u64) -> Result<(), StoreError> {
        let _guard = self.lock();
        self.load(number, None)?;
        write_atomic(
            &self.dir,
            POINTER_NAME,
            render_pointer(number).as_bytes(),
            false,
            self.access,
        )?;
        tracing::info!(generation = number, "activated config generation");
        Ok(())
    }

    /// The generation the pointer names; `None` if there is no pointer or it is corrupt
    /// (the latter is logged). Does not check that the generation is intact.
    pub fn active(&self) -> Result<Option<u64>, StoreError> {
        match self.read_pointer()? {
            Pointer::Points(n) => Ok(Some(n)),
            Pointer::Missing => Ok(None),
            Pointer::Corrupt(reason) => {
                tracing::warn!(file = %self.pointer_path().display(), "active pointer is corrupt: {reason}");
                Ok(None)
            }
        }
    }

    /// Reads and verifies generation `number`.
    pub fn get(&self, number: u64) -> Result<Generation, StoreError> {
        let active = self.active()?;
        self.load(number, active)
    }

    /// The active generation. If the pointer is missing or corrupt, or names a missing or
    /// corrupt generation, the newest intact generation is returned instead, with a
    /// warning. `None` when no intact generation exists.
    pub fn current(&self) -> Result<(Option<Generation>, Vec<Warning>), StoreError> {
        let mut warnings = Vec::new();
        let target = self.pointer_target(&mut warnings)?;
        if let Some(n) = target {
            match self.load(n, target) {
                Ok(generation) => return Ok((Some(generation), warnings)),
                Err(e) => warn(
                    &mut warnings,
                    self.gen_path(n),
                    format!("the active generation cannot be used: {e}"),
                ),
            }
        }
        for n in self.generation_numbers()?.into_iter().rev() {
            if Some(n) == target {
                continue;
            }
            match self.load(n, target) {
                Ok(generation) => {
                    let why = if target.is_some() {
                        "the active one is unusable"
                    } else {
                        "no usable active pointer exists"
                    };
                    warn(
                        &mut warnings,
                        self.gen_path(n),
                        format!(
                            "using generation {n}, the newest intact one, because {why}; \
                             activate a generation to make this explicit"
                        ),
                    );
                    return Ok((Some(generation), warnings));
                }
                // Removed between listing and reading; nothing to report.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => warn(&mut warnings, self.gen_path(n), e.to_string()),
            }
        }
        Ok((None, warnings))
    }

    /// All intact generations, newest first. Corrupt ones appear only as warnings.
    pub fn history(&self) -> Result<(Vec<GenerationInfo>, Vec<Warning>), StoreError> {
        let mut warnings = Vec::new();
        let target = self.pointer_target(&mut warnings)?;
        let numbers = self.generation_numbers()?;
        let mut infos = Vec::with_capacity(numbers.len());
        for &n in numbers.iter().rev() {
            match self.load(n, target) {
                Ok(generation) => infos.push(generation.info),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => warn(&mut warnings, self.gen_path(n), e.to_string()),
            }
        }
        if let Some(n) = target.filter(|n| numbers.binary_search(n).is_err()) {
            warn(
                &mut warnings,
                self.pointer_path(),
                format!("the active pointer names generation {n}, which does not exist"),
            );
        }
        Ok((infos, warnings))
    }

    /// Makes an earlier (or any) generation active again after verifying it is intact.
    pub fn rollback(&self, number: u64) -> Result<(), StoreError> {
        self.activate(number)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic in another holder leaves nothing to repair.
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn gen_path(&self, number: u64) -> PathBuf {
        self.dir.join(gen_file_name(number))
    }

    fn pointer_path(&self) -> PathBuf {
        self.dir.join(POINTER_NAME)
    }

    /// Numbers of all files named like a generation, intact or not, ascending. Corrupt
    /// files count so that their numbers are never handed out again.
    fn generation_numbers(&self) -> Result<Vec<u64>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&self.dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_gen_name) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// [`Store::get`] with `parse` run on the generation's text while its checksum is
    /// compared on another thread: for a config of megabytes each takes milliseconds, and
    /// the box has two cores. `parse`'s result comes back only with an intact generation;
    /// for any other the error is [`Store::get`]'s.
    pub fn get_with<T>(
        &self,
        number: u64,
        parse: impl FnOnce(&str) -> T,
    ) -> Result<(Generation, T), StoreError> {
        let active = self.active()?;
        let contents = self.read_generation(number)?;
        let corrupt = |reason: String| StoreError::Corrupt { number, reason };
        let parsed = parse_generation_header(&contents).map_err(corrupt)?;
        let (intact, parsed_text) = std::thread::scope(|scope| {
            let check = scope.spawn(|| parsed.intact());
            let out = parse(parsed.body);
            (check.join().unwrap_or(false), out)
        });
        if !intact {
            return Err(corrupt(CHECKSUM_MISMATCH.to_owned()));
        }
        Ok((self.generation(number, active, parsed)?, parsed_text))
    }

    fn load(&self, number: u64, active: Option<u64>) -> Result<Generation, StoreError> {
        let contents = self.read_generation(number)?;
        let corrupt = |reason: String| StoreError::Corrupt { number, reason };
        let parsed = parse_generation(&contents).map_err(corrupt)?;
        self.generation(number, active, parsed)
    }

    /// Generation `number`'s file as text.
    fn read_generation(&self, number: u64) -> Result<String, StoreError> {
        let path = self.gen_path(number);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(number));
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        String::from_utf8(bytes).map_err(|_| StoreError::Corrupt {
            number,
            reason: "not valid UTF-8 (torn or garbage file)".to_owned(),
        })
    }

    /// The generation of a parsed file that is intact, if it is the one named `number`.
    fn generation(
        &self,
        number: u64,
        active: Option<u64>,
        parsed: ParsedGeneration<'_>,
    ) -> Result<Generation, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt { number, reason };
        if parsed.number != number {
            // A checksummed file copied or renamed to another number; trusting it would
            // make history lie about what was saved when.
            return Err(corrupt(format!(
                "its header says generation {}, but its file name says {number}",
                parsed.number
            )));
        }
        Ok(Generation {
            info: GenerationInfo {
                number,
                created: parsed.created.to_owned(),
                comment: parsed.comment.to_owned(),
                sha256: parsed.sha256.to_owned(),
                active: active == Some(number),
            },
            text: parsed.body.to_owned(),
        })
    }

    fn read_pointer(&self) -> Result<Pointer, StoreError> {
        let path = self.pointer_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Pointer::Missing),
            Err(e) => return Err(io_error(&path, e)),
        };
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| "not valid UTF-8".to_owned())
            .and_then(parse_pointer);
        Ok(match parsed {
            Ok(n) => Pointer::Points(n),
            Err(reason) => Pointer::Corrupt(reason),
        })
    }

    /// The pointer's target, recording a warning when the pointer is corrupt.
    fn pointer_target(&self, warnings: &mut Vec<Warning>) -> Result<Option<u64>, StoreError> {
        Ok(match self.read_pointer()? {
            Pointer::Points(n) => Some(n),
            Pointer::Missing => None,
            Pointer::Corrupt(reason) => {
                warn(
                    warnings,
                    self.pointer_path(),
                    format!("the active pointer is corrupt and is ignored: {reason}"),
                );
                None
            }
        })
    }

    /// Deletes all but the newest `keep` generation files, sparing the active one.
    /// Failures are only logged: the commit that triggered retention has already
    /// succeeded, and reporting it as failed would make the caller retry and store the
    /// same config twice.
    fn apply_retention(&self) {
        let numbers = match self.generation_numbers() {
            Ok(numbers) => numbers,
            Err(e) => {
                tracing::warn!("retention skipped: {e}");
                return;
            }
        };
        let excess = numbers.len().saturating_sub(self.keep);
        if excess == 0 {
            return;
        }
        let mut protected = BTreeSet::new();
        match self.read_pointer() {
            Ok(Pointer::Points(n)) => {
                protected.insert(n);
            }
            Ok(Pointer::Missing | Pointer::Corrupt(_)) => {}
            Err(e) => {
                // Without knowing the active generation we might delete it.
                tracing::warn!("retention skipped: {e}");
                return;
            }
        }
        let mut removed = false;
        for &n in numbers.iter().take(excess) {
            if protected.contains(&n) {
                continue;
            }
            let path = self.gen_path(n);
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed = true;
                    tracing::debug!(generation = n, "retention removed config generation");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("retention could not remove {}: {e}", path.display()),
            }
        }
        let synced = if removed { sync_dir(&self.dir) } else { Ok(()) };
        if let Err(e) = synced {
            tracing::warn!("retention: {e}");
        }
    }

    /// Best effort, like temp file removal: a daemon that opens the store as a reader
    /// cannot change modes, and must still read what it can. One warning at most.
    fn fix_access(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == POINTER_NAME || parse_gen_name(name).is_some() {
                files.push(entry.path());
            }
        }
        for path in files {
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file()
                || !Access::is_store_mode(&meta, false)
                || self.access.matches(&meta, false)
            {
                continue;
            }
            if let Err(e) = self.access.apply(&path, false) {
                tracing::warn!(
                    "cannot give {} mode {:o}{}: {e}; the daemons may be unable to read it",
                    path.display(),
                    self.access.file_mode(),
                    self.access
                        .group
                        .map(|_| format!(" and group {READER_GROUP}"))
                        .unwrap_or_default(),
                );
                return;
            }
        }
    }

    /// Best effort: a store that cannot be cleaned (read-only access) still reads fine,
    /// and temp files are never mistaken for generations.
    fn remove_stale_temps(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
                continue;
            }
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            let stale = match modified.elapsed() {
                Ok(age) => age >= STALE_TEMP_AGE,
                // Modified "in the future": the clock was stepped back, so the age is
                // meaningless; a live writer would have finished long ago in practice.
                Err(_) => true,
            };
            if !stale {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!("removed stale temp file {}", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove stale temp file {}: {e}", path.display()),
            }
        }
    }
}

fn warn(warnings: &mut Vec<Warning>, file: PathBuf, message: String) {
    tracing::warn!(file = %file.display(), "{message}");
    warnings.push(Warning { file, message });
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ensure_dir(dir: &Path, access: Access) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            // A reader (a daemon) cannot change it and must still be able to open it.
            if Access::is_store_mode(&meta, true)
                && !access.matches(&meta, true)
                && let Err(e) = access.apply(dir, true)
            {
                tracing::warn!(
                    "cannot give {} mode {:o}: {e}",
                    dir.display(),
                    access.dir_mode()
                );
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(access.dir_mode())
                .create(dir)
                .map_err(|e| io_error(dir, e))?;
            // The umask may have narrowed the mode; the store needs exactly its mode.
            access.apply(dir, true).map_err(|e| io_error(dir, e))?;
            // Without this the new directory entry, and everything later written into
            // it, could vanish on power loss.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)
        }
        Err(e) => Err(io_error(dir, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Replaces (or, with `no_clobber`, creates) `dir/name` so that readers and crashes
/// only ever see the old or the complete new contents.
fn write_atomic(
    dir: &Path,
    name: &str,
    contents: &[u8],
    no_clobber: bool,
    access: Access,
) -> Result<(), StoreError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let final_path = dir.join(name);
    // Generations are immutable; an existing file here means another process is
    // writing the store at the same time, and renaming would destroy its generation.
    if no_clobber && fs::symlink_metadata(&final_path).is_ok() {
        return Err(io_error(
            &final_path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "already exists; is another process writing the config store?",
            ),
        ));
    }
    let tmp_path = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_synced(&tmp_path, contents, access)
        .and_then(|()| fs::rename(&tmp_path, &final_path).map_err(|e| io_error(&final_path, e)));
    if result.is_err() {
        // Best effort; a leftover is ignored and removed by a later open.
        let _ = fs::remove_file(&tmp_path);
    }
    result?;
    sync_dir(dir)
}

fn write_synced(path: &Path, contents: &[u8], access: Access) -> Result<(), StoreError> {
    // Created owner-only; the group and the group bit come after, so no moment exists
    // when the file is readable by a group it should not be.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    if let Some(g) = access.group {
        std::os::unix::fs::fchown(&file, None, Some(g)).map_err(|e| io_error(path, e))?;
    }
    file.set_permissions(Permissions::from_mode(access.file_mode()))
        .map_err(|e| io_error(path, e))?;
    file.write_all(contents).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))
}

fn gen_file_name(number: u64) -> String {
    format!("{GEN_PREFIX}{number:08}{GEN_SUFFIX}")
}

/// Only the canonical spelling counts, so `gen-42.toml` and `gen-00000042.toml` can
/// never both claim generation 42.
fn parse_gen_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GEN_PREFIX)?.strip_suffix(GEN_SUFFIX)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    (gen_file_name(number) == name).then_some(number)
}

/// TOML forbids control characters in comments, and a newline would end the header
/// line early; either would break the file.
fn one_line(comment: &str) -> String {
    comment
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn generation_digest(number: u64, created: &str, comment: &str, body: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(GEN_DOMAIN.as_bytes());
    hasher.update(format!("{number}\n{created}\n{comment}\n").as_bytes());
    hasher.update(body.as_bytes());
    hex::encode(hasher.finalize())
}

fn pointer_digest(number: u64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(POINTER_DOMAIN.as_bytes());
    hasher.update(format!("{number}\n").as_bytes());
    hex::encode(hasher.finalize())
}

fn render_generation(number: u64, created: &str, comment: &str, body: &str) -> String {
    let sha256 = generation_digest(number, created, comment, body);
    format!(
        "{HEADER_MAGIC}\n# generation: {number}\n# created: {created}\n\
         # comment: {comment}\n# sha256: {sha256}\n{body}"
    )
}

fn render_pointer(number: u64) -> String {
    format!(
        "{POINTER_MAGIC}\ngeneration = {number}\nsha256 = \"{}\"\n",
        pointer_digest(number)
    )
}

struct ParsedGeneration<'a> {
    number: u64,
    created: &'a str,
    comment: &'a str,
    sha256: &'a str,
    body: &'a str,
}

fn take_line<'a>(rest: &mut &'a str, what: &str) -> Result<&'a str, String> {
    match rest.split_once('\n') {
        Some((line, tail)) => {
            *rest = tail;
            Ok(line)
        }
        None => Err(format!(
            "the header ends before its {what} line (truncated file?)"
        )),
    }
}

fn header_field<'a>(rest: &mut &'a str, key: &str) -> Result<&'a str, String> {
    let line = take_line(rest, key)?;
    line.strip_prefix("# ")
        .and_then(|l| l.strip_prefix(key))
        .and_then(|l| l.strip_prefix(": "))
        .ok_or_else(|| format!("the header's {key} line is malformed"))
}

fn parse_number(text: &str) -> Option<u64> {
    // u64::from_str accepts a leading '+', which the store never writes.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_generation(contents: &str) -> Result<ParsedGeneration<'_>, String> {
    let parsed = parse_generation_header(contents)?;
    if !parsed.intact() {
        return Err(CHECKSUM_MISMATCH.to_owned());
    }
    Ok(parsed)
}

const CHECKSUM_MISMATCH: &str = "checksum mismatch (the file was truncated or modified)";

impl ParsedGeneration<'_> {
    fn intact(&self) -> bool {
        generation_digest(self.number, self.created, self.comment, self.body) == self.sha256
    }
}

/// The header and body of a generation file, its checksum not yet compared.
fn parse_generation_header(contents: &str) -> Result<ParsedGeneration<'_>, String> {
    let mut rest = contents;
    if take_line(&mut rest, "first")? != HEADER_MAGIC {
        return Err("it does not start with the config store header".to_owned());
    }
    let number = header_field(&mut rest, "generation")?;
    let number = parse_number(number)
        .ok_or_else(|| format!("the header's generation number {number:?} is not a number"))?;
    let created = header_field(&mut rest, "created")?;
    let comment = header_field(&mut rest, "comment")?;
    let sha256 = header_field(&mut rest, "sha256")?;
    let body = rest;
    Ok(ParsedGeneration {
        number,
        created,
        comment,
        sha256,
        body,
    })
}

fn parse_pointer(contents: &str) -> Result<u64, String> {
    let mut rest = contents;
    let mut line = |what: &str| {
        take_line(&mut rest, what).map_err(|_| "the file is incomplete (torn write?)".to_owned())
    };
    if line("first")? != POINTER_MAGIC {
        return Err("it does not start with the pointer header".to_owned());
    }
    let number = line("generation")?
        .strip_prefix("generation = ")
        .and_then(parse_number)
        .ok_or("the generation line is malformed")?;
    let sha256 = line("sha256")?
        .strip_prefix("sha256 = \"")
        .and_then(|l| l.strip_suffix('"'))
        .ok_or("the sha256 line is malformed")?;
    if !rest.is_empty() {
        return Err("unexpected data after the checksum".to_owned());
    }
    if pointer_digest(number) != sha256 {
        return Err("checksum mismatch".to_owned());
    }
    Ok(number)
}

/// Formats as RFC 3339 UTC with second precision. A clock before 1970 (an appliance
/// without RTC before NTP) is clamped to the epoch rather than failing the commit.
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, restricted to non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const CONFIG: &str =
        "# home router\n[system]\nhostname = \"router\"\n\n[lan]\naddress = \"192.168.1.1/24\"\n";

    fn store() -> Result<(tempfile::TempDir, Store), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let store = Store::open(tmp.path().join("config"))?;
        Ok((tmp, store))
    }

    fn numbers(store: &Store) -> Result<Vec<u64>, StoreError> {
        Ok(store.history()?.0.iter().map(|i| i.number).collect())
    }

    fn on_disk(store: &Store) -> Result<Vec<u64>, StoreError> {
        store.generation_numbers()
    }

    #[test]
    fn commit_get_round_trip() -> TestResult {
        let (_tmp, store) = store()?;
        let texts = [
            CONFIG,
            "",
            "no trailing newline = 1",
            "a = \"ünï\"\r\nb = 2\r\n",
        ];
        for text in texts {
            let n = store.commit(text, "applctl config save\nsecond line\r")?;
            let generation = store.get(n)?;
            assert_eq!(generation.text, text);
            assert_eq!(generation.info.number, n);
            assert_eq!(generation.info.comment, "applctl config save second line ");
            assert_eq!(generation.info.sha256.len(), 64);
            assert_eq!(generation.info.created.len(), 20);
            assert!(!generation.info.active);
        }
        Ok(())
    }

    #[test]
    fn generation_file_is_valid_toml_with_the_same_content() -> TestResult {
        let (_tmp, store) = store()?;
        let n = store.commit(CONFIG, "first")?;
        let file = fs::read_to_string(store.gen_path(n))?;
        assert!(file.starts_with("# appliance.toml generation"));
        assert!(file.ends_with(CONFIG));
        let whole: toml::Table = toml::from_str(&file)?;
        let body: toml::Table = toml::from_str(CONFIG)?;
        assert_eq!(whole, body);
        Ok(())
    }

    #[test]
    fn numbering_starts_at_one_and_grows() -> TestResult {
        let (_tmp, store) = store()?;
        assert_eq!(store.commit("a = 1", "one")?, 1);
        assert_eq!(store.commit("a = 2", "two")?, 2);
        assert_eq!(store.commit("a = 3", "three")?, 3);
        assert!(store.dir().join("gen-00000002.toml").is_file());
        assert_eq!(numbers(&store)?, vec![3, 2, 1]);
        Ok(())
    }

    #[test]
    fn activate_and_current() -> TestResult {
        let (_tmp, store) = store()?;
        let (current, warnings) = store.current()?;
        assert!(current.is_none());
        assert!(warnings.is_empty());
        assert_eq!(store.active()?, None);

        let one = store.commit("a = 1", "one")?;
        let two = store.commit("a = 2", "two")?;
        store.activate(one)?;
        assert_eq!(store.active()?, Some(one));
        let (current, warnings) = store.current()?;
        let current = current.ok_or("no current generation")?;
        assert_eq!(current.info.number, one);
        assert!(current.info.active);
        assert_eq!(current.text, "a = 1");
        assert!(warnings.is_empty(), "{warnings:?}");

        let (history, _) = store.history()?;
        let active: Vec<_> = history
            .iter()
            .filter(|i| i.active)
            .map(|i| i.number)
            .collect();
        assert_eq!(active, vec![one]);
        assert!(store.get(one)?.info.active);
        assert!(!store.get(two)?.info.active);

        assert!(matches!(store.activate(99), Err(StoreError::NotFound(99))));
        assert_eq!(store.active()?, Some(one));
        Ok(())
    }

    #[test]
    fn current_without_pointer_uses_newest_with_warning() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit("a = 1", "one")?;
        store.commit("a = 2", "two")?;
        let (current, warnings) = store.current()?;
        assert_eq!(current.ok_or("none")?.info.number, 2);
        assert_eq!(warnings.len(), 1);
        Ok(())
    }

    #[test]
    fn rollback_to_earlier_generation() -> TestResult {
        let (_tmp, store) = store()?;
        for i in 1..=3 {
            let n = store.commit(&format!("a = {i}"), "save")?;
            store.activate(n)?;
        }
        assert_eq!(store.active()?, Some(3));
        store.rollback(1)?;
        assert_eq!(store.active()?, Some(1));
        let (current, warnings) = store.current()?;
        assert_eq!(current.ok_or("none")?.text, "a = 1");
        assert!(warnings.is_empty());
        // Rollback does not delete or renumber anything.
        assert_eq!(numbers(&store)?, vec![3, 2, 1]);
        assert!(matches!(store.rollback(7), Err(StoreError::NotFound(7))));
        Ok(())
    }

    fn assert_corrupt(store: &Store, n: u64) -> TestResult {
        match store.get(n) {
            Err(e @ StoreError::Corrupt { number, .. }) if number == n => {
                assert!(e.to_string().contains("corrupt"), "{e}");
            }
            other => panic!("expected generation {n} to be corrupt, got {other:?}"),
        }
        let (history, warnings) = store.history()?;
        assert!(history.iter().all(|i| i.number != n));
        assert!(
            warnings.iter().any(|w| w.file == store.gen_path(n)),
            "{warnings:?}"
        );
        Ok(())
    }

    #[test]
    fn truncated_generation_is_skipped_and_reported() -> TestResult {
        let (_tmp, store) = store()?;
        let long = CONFIG.repeat(20);
        let body_cut = store.commit(&long, "long")?;
        let header_cut = store.commit(&long, "long")?;
        let intact = store.commit(CONFIG, "ok")?;

        let bytes = fs::read(store.gen_path(body_cut))?;
        fs::write(store.gen_path(body_cut), &bytes[..bytes.len() / 2])?;
        let bytes = fs::read(store.gen_path(header_cut))?;
        fs::write(store.gen_path(header_cut), &bytes[..40])?;

        assert_corrupt(&store, body_cut)?;
        assert_corrupt(&store, header_cut)?;
        assert_eq!(numbers(&store)?, vec![intact]);
        Ok(())
    }

    #[test]
    fn empty_generation_file_is_corrupt() -> TestResult {
        let (_tmp, store) = store()?;
        let n = store.commit(CONFIG, "x")?;
        fs::write(store.gen_path(n), "")?;
        assert_corrupt(&store, n)
    }

    #[test]
    fn garbage_named_like_a_generation_is_skipped() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit(CONFIG, "ok")?;
        fs::write(
            store.dir().join("gen-00000009.toml"),
            b"\xff\xfe garbage \x00",
        )?;
        fs::write(store.dir().join("gen-00000005.toml"), "hostname = \"x\"\n")?;
        assert_corrupt(&store, 9)?;
        assert_corrupt(&store, 5)?;
        assert_eq!(numbers(&store)?, vec![1]);
        let (current, _) = store.current()?;
        assert_eq!(current.ok_or("none")?.info.number, 1);
        Ok(())
    }

    #[test]
    fn flipped_body_byte_is_caught_by_checksum() -> TestResult {
        let (_tmp, store) = store()?;
        let n = store.commit(CONFIG, "x")?;
        let mut bytes = fs::read(store.gen_path(n))?;
        let at = bytes.len() - 5;
        bytes[at] ^= 0x01;
        fs::write(store.gen_path(n), &bytes)?;
        assert_corrupt(&store, n)?;
        let Err(StoreError::Corrupt { reason, .. }) = store.get(n) else {
            panic!("not corrupt");
        };
        assert!(reason.contains("checksum"), "{reason}");
        // parsed beside the check: the parse ran, its result is not handed out
        let mut parsed = None;
        let Err(StoreError::Corrupt { reason, .. }) = store.get_with(n, |t| parsed = Some(t.len()))
        else {
            panic!("not corrupt");
        };
        assert!(reason.contains("checksum"), "{reason}");
        assert!(parsed.is_some());
        Ok(())
    }

    #[test]
    fn get_with_hands_the_text_to_the_parse_and_returns_what_get_returns() -> TestResult {
        let (_tmp, store) = store()?;
        let n = store.commit(CONFIG, "x")?;
        let (g, len) = store.get_with(n, str::len)?;
        assert_eq!(g, store.get(n)?);
        assert_eq!(len, CONFIG.len());
        assert!(matches!(
            store.get_with(n + 1, str::len),
            Err(StoreError::NotFound(_))
        ));
        Ok(())
    }

    #[test]
    fn edited_header_is_caught_by_checksum() -> TestResult {
        let (_tmp, store) = store()?;
        let n = store.commit(CONFIG, "original comment")?;
        let text = fs::read_to_string(store.gen_path(n))?;
        fs::write(
            store.gen_path(n),
            text.replace("original comment", "forged comment"),
        )?;
        assert_corrupt(&store, n)
    }

    #[test]
    fn generation_copied_to_another_number_is_corrupt() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit(CONFIG, "x")?;
        fs::copy(store.gen_path(1), store.gen_path(5))?;
        assert_corrupt(&store, 5)?;
        assert!(store.get(1).is_ok());
        assert!(matches!(store.activate(5), Err(StoreError::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn corrupt_active_generation_falls_back_to_newest_intact() -> TestResult {
        let (_tmp, store) = store()?;
        for i in 1..=4 {
            store.commit(&format!("a = {i}"), "save")?;
        }
        store.activate(3)?;
        fs::write(store.gen_path(3), "truncated")?;
        fs::write(store.gen_path(4), "also broken")?;
        let (current, warnings) = store.current()?;
        let current = current.ok_or("none")?;
        assert_eq!(current.info.number, 2);
        assert_eq!(current.text, "a = 2");
        assert!(!current.info.active);
        assert!(warnings.iter().any(|w| w.file == store.gen_path(3)));
        assert!(warnings.iter().any(|w| w.file == store.gen_path(4)));
        // The pointer is left alone: fixing it is the operator's decision.
        assert_eq!(store.active()?, Some(3));
        Ok(())
    }

    #[test]
    fn pointer_to_missing_generation_falls_back() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit("a = 1", "one")?;
        store.commit("a = 2", "two")?;
        store.activate(2)?;
        fs::remove_file(store.gen_path(2))?;
        let (current, warnings) = store.current()?;
        assert_eq!(current.ok_or("none")?.info.number, 1);
        assert!(!warnings.is_empty());
        let (_, warnings) = store.history()?;
        assert!(warnings.iter().any(|w| w.file == store.pointer_path()));
        Ok(())
    }

    #[test]
    fn all_generations_corrupt_gives_none() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit("a = 1", "one")?;
        store.activate(1)?;
        fs::write(store.gen_path(1), "junk")?;
        let (current, warnings) = store.current()?;
        assert!(current.is_none());
        assert!(!warnings.is_empty());
        Ok(())
    }

    #[test]
    fn torn_active_pointer_is_detected() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit("a = 1", "one")?;
        store.commit("a = 2", "two")?;
        store.activate(1)?;
        let pointer = fs::read(store.pointer_path())?;

        fs::write(store.pointer_path(), &pointer[..pointer.len() - 10])?;
        assert_eq!(store.active()?, None);
        let (current, warnings) = store.current()?;
        assert_eq!(current.ok_or("none")?.info.number, 2);
        assert!(warnings.iter().any(|w| w.file == store.pointer_path()));

        // A well-formed pointer whose number was changed fails its checksum.
        let edited =
            String::from_utf8(pointer.clone())?.replace("generation = 1", "generation = 2");
        fs::write(store.pointer_path(), edited)?;
        assert_eq!(store.active()?, None);

        fs::write(store.pointer_path(), "")?;
        assert_eq!(store.active()?, None);

        // Activating repairs it.
        store.activate(1)?;
        assert_eq!(store.active()?, Some(1));
        assert_eq!(fs::read(store.pointer_path())?, pointer);
        Ok(())
    }

    #[test]
    fn retention_keeps_newest_n() -> TestResult {
        let (_tmp, store) = store()?;
        let store = store.with_keep(3);
        for i in 1..=10 {
            store.commit(&format!("a = {i}"), "save")?;
        }
        assert_eq!(on_disk(&store)?, vec![8, 9, 10]);
        Ok(())
    }

    #[test]
    fn retention_never_deletes_the_active_generation() -> TestResult {
        let (_tmp, store) = store()?;
        let store = store.with_keep(3);
        store.commit("a = 1", "one")?;
        store.commit("a = 2", "two")?;
        store.activate(2)?;
        for i in 3..=10 {
            store.commit(&format!("a = {i}"), "save")?;
        }
        assert_eq!(on_disk(&store)?, vec![2, 8, 9, 10]);
        let (current, warnings) = store.current()?;
        assert_eq!(current.ok_or("none")?.info.number, 2);
        assert!(warnings.is_empty());
        Ok(())
    }

    #[test]
    fn keep_zero_still_keeps_the_newest() -> TestResult {
        let (_tmp, store) = store()?;
        let store = store.with_keep(0);
        store.commit("a = 1", "one")?;
        store.commit("a = 2", "two")?;
        assert_eq!(on_disk(&store)?, vec![2]);
        assert_eq!(store.commit("a = 3", "three")?, 3);
        Ok(())
    }

    #[test]
    fn default_keep_is_fifty() -> TestResult {
        let (_tmp, store) = store()?;
        for i in 1..=52 {
            store.commit(&format!("a = {i}"), "save")?;
        }
        let kept = on_disk(&store)?;
        assert_eq!(kept.len(), DEFAULT_KEEP);
        assert_eq!(kept.first(), Some(&3));
        Ok(())
    }

    #[test]
    fn numbers_are_never_reused() -> TestResult {
        let (_tmp, store) = store()?;
        let store = store.with_keep(2);
        for _ in 0..5 {
            store.commit("a = 1", "x")?;
        }
        assert_eq!(store.commit("a = 1", "x")?, 6);

        // A corrupt newest file still reserves its number.
        fs::write(store.dir().join("gen-00000020.toml"), "garbage")?;
        assert_eq!(store.commit("a = 1", "x")?, 21);

        // Reopening the store does not reset anything.
        let store = Store::open(store.dir())?;
        assert_eq!(store.commit("a = 1", "x")?, 22);
        Ok(())
    }

    #[test]
    fn stray_temp_files_are_ignored_and_stale_ones_removed() -> TestResult {
        let (_tmp, store) = store()?;
        store.commit("a = 1", "one")?;
        let stale = store.dir().join(".tmp-1234-0-gen-00000099.toml");
        let fresh = store.dir().join(".tmp-1234-1-gen-00000098.toml");
        fs::write(&stale, "half a gen")?;
        fs::write(&fresh, "half a gen")?;
        File::options()
            .write(true)
            .open(&stale)?
            .set_modified(SystemTime::now() - Duration::from_secs(3600))?;

        let (history, warnings) = store.history()?;
        assert_eq!(history.len(), 1);
        assert!(warnings.is_empty());
        assert_eq!(store.commit("a = 2", "two")?, 2);

        let store = Store::open(store.dir())?;
        assert!(!stale.exists());
        // A fresh one may belong to a writer in another process that is about to
        // rename it.
        assert!(fresh.exists());
        assert_eq!(store.commit("a = 3", "three")?, 3);
        Ok(())
    }

    #[test]
    fn no_temp_files_left_after_writes() -> TestResult {
        let (_tmp, store) = store()?;
        let n = store.commit("a = 1", "one")?;
        store.activate(n)?;
        for entry in fs::read_dir(store.dir())? {
            let name = entry?.file_name();
            assert!(!name.to_string_lossy().starts_with(TEMP_PREFIX), "{name:?}");
        }
        Ok(())
    }

    /// Mode bits and group of `path`.
    fn mode_gid(path: &Path) -> Result<(u32, u32), io::Error> {
        let meta = fs::metadata(path)?;
        Ok((meta.permissions().mode() & 0o777, meta.gid()))
    }

    /// A group that exists on every Debian system (base-passwd) and is not root's, so
    /// that a chown to it is visible.
    fn daemon_group() -> Access {
        let access = Access::for_group("daemon");
        assert!(
            access.group.is_some_and(|g| g != 0),
            "group `daemon` is missing from /etc/group; this test needs a non-root group"
        );
        access
    }

    const ROOT_ONLY: Access = Access { group: None };

    #[test]
    fn root_only_without_the_reader_group() -> TestResult {
        assert_eq!(Access::for_group("no-such-group-f2"), ROOT_ONLY);
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data").join("config");
        let store = Store::open_with_access(dir.clone(), ROOT_ONLY)?;
        assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        let n = store.commit(CONFIG, "x")?;
        store.activate(n)?;
        assert_eq!(mode_gid(&store.gen_path(n))?.0, 0o600);
        assert_eq!(mode_gid(&store.pointer_path())?.0, 0o600);
        Ok(())
    }

    #[test]
    fn group_readable_when_the_reader_group_exists() -> TestResult {
        let access = daemon_group();
        let gid = access.group.unwrap_or_default();
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("config");
        let store = Store::open_with_access(dir.clone(), access)?;
        assert_eq!(mode_gid(&dir)?, (0o750, gid));
        let n = store.commit(CONFIG, "x")?;
        store.activate(n)?;
        assert_eq!(mode_gid(&store.gen_path(n))?, (0o640, gid));
        assert_eq!(mode_gid(&store.pointer_path())?, (0o640, gid));
        Ok(())
    }

    /// The point of the group: a daemon's user in it reads the active generation, any
    /// other user does not. Runs `cat` as `nobody` with the group as primary group (root
    /// drops supplementary groups when it changes uid).
    #[test]
    fn a_group_member_reads_the_store_and_others_do_not() -> TestResult {
        use std::os::unix::process::CommandExt as _;
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test reads the store as another user and must run as root"
        );
        let access = daemon_group();
        let gid = access.group.unwrap_or_default();
        let tmp = tempfile::tempdir()?;
        fs::set_permissions(tmp.path(), Permissions::from_mode(0o755))?;
        let store = Store::open_with_access(tmp.path().join("config"), access)?;
        let n = store.commit(CONFIG, "x")?;
        store.activate(n)?;
        let cat_as = |gid: u32, path: &Path| -> Result<bool, io::Error> {
            let out = std::process::Command::new("cat")
                .arg(path)
                .uid(65534)
                .gid(gid)
                .output()?;
            Ok(out.status.success() && out.stdout == fs::read(path)?)
        };
        assert!(
            cat_as(gid, &store.gen_path(n))?,
            "a group member cannot read"
        );
        assert!(
            cat_as(gid, &store.pointer_path())?,
            "a group member cannot read"
        );
        assert!(!cat_as(65534, &store.gen_path(n))?, "a non-member can read");
        let root_only = Store::open_with_access(tmp.path().join("config"), ROOT_ONLY)?;
        assert!(
            !cat_as(gid, &root_only.gen_path(n))?,
            "root-only file is readable"
        );
        Ok(())
    }

    #[test]
    fn opening_brings_existing_files_to_the_current_rule() -> TestResult {
        let access = daemon_group();
        let gid = access.group.unwrap_or_default();
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("config");
        // Written by firmware without the group, then opened by firmware with it.
        let old = Store::open_with_access(dir.clone(), ROOT_ONLY)?;
        let n = old.commit(CONFIG, "old firmware")?;
        old.activate(n)?;
        let m = old.commit(CONFIG, "not active")?;
        let store = Store::open_with_access(dir.clone(), access)?;
        assert_eq!(mode_gid(&dir)?, (0o750, gid));
        for path in [store.gen_path(n), store.gen_path(m), store.pointer_path()] {
            assert_eq!(mode_gid(&path)?, (0o640, gid), "{}", path.display());
        }
        // A file that is not the store's is left alone, and so is a generation whose mode
        // someone chose.
        let other = dir.join("notes.txt");
        fs::write(&other, "x")?;
        fs::set_permissions(&other, Permissions::from_mode(0o600))?;
        let o = store.commit(CONFIG, "chosen mode")?;
        fs::set_permissions(store.gen_path(o), Permissions::from_mode(0o400))?;
        // And back: without the group, nothing stays group-readable.
        let store = Store::open_with_access(dir.clone(), ROOT_ONLY)?;
        assert_eq!(mode_gid(&dir)?.0, 0o700);
        for path in [store.gen_path(n), store.gen_path(m), store.pointer_path()] {
            assert_eq!(mode_gid(&path)?.0, 0o600, "{}", path.display());
        }
        assert_eq!(mode_gid(&other)?.0, 0o600);
        assert_eq!(mode_gid(&store.gen_path(o))?.0, 0o400);
        assert_eq!(store.current()?.0.map(|g| g.info.number), Some(n));
        Ok(())
    }

    /// `--data-dir /tmp` by mistake must not make /tmp root-only.
    #[test]
    fn a_directory_with_a_mode_of_its_own_is_left_alone() -> TestResult {
        let tmp = tempfile::tempdir()?;
        for mode in [0o755, 0o1777, 0o770] {
            let dir = tmp.path().join(format!("d{mode:o}"));
            fs::create_dir(&dir)?;
            fs::set_permissions(&dir, Permissions::from_mode(mode))?;
            let store = Store::open_with_access(dir.clone(), ROOT_ONLY)?;
            store.commit(CONFIG, "x")?;
            let store = Store::open_with_access(dir.clone(), daemon_group())?;
            store.commit(CONFIG, "y")?;
            let meta = fs::metadata(&dir)?;
            assert_eq!(meta.permissions().mode() & 0o7777, mode);
            assert_eq!(meta.gid(), 0);
        }
        Ok(())
    }

    #[test]
    fn open_rejects_a_file_in_place_of_the_directory() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("config");
        fs::write(&path, "")?;
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::NotADirectory(_))
        ));
        Ok(())
    }

    #[test]
    fn generation_names_must_be_canonical() {
        assert_eq!(parse_gen_name("gen-00000042.toml"), Some(42));
        assert_eq!(parse_gen_name("gen-123456789.toml"), Some(123_456_789));
        assert_eq!(parse_gen_name("gen-42.toml"), None);
        assert_eq!(parse_gen_name("gen-000000042.toml"), None);
        assert_eq!(parse_gen_name("gen-+0000042.toml"), None);
        assert_eq!(parse_gen_name(".tmp-1-0-gen-00000042.toml"), None);
        assert_eq!(parse_gen_name("gen-00000042.toml.bak"), None);
    }

    #[test]
    fn rfc3339_formatting() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }
}
