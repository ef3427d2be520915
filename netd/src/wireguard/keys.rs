//! Private and preshared keys: read from files under /data that only root may read, or
//! generated on first use. A key never reaches a log line or an error message.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use wireguard_control::Key;

use super::state::Secret;

/// A key file netd cannot use.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{key_path}: cannot read the key file {}: {source}", file.display())]
    Read {
        key_path: String,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{key_path}: the key file {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`",
        file.display(),
        file.display()
    )]
    Exposed {
        key_path: String,
        file: PathBuf,
        mode: u32,
    },
    #[error(
        "{key_path}: the key file {} does not hold a WireGuard key (44 characters of base64, as `wg genkey` prints)",
        file.display()
    )]
    Malformed { key_path: String, file: PathBuf },
    #[error("{key_path}: cannot write the new key file {}: {source}", file.display())]
    Write {
        key_path: String,
        file: PathBuf,
        source: std::io::Error,
    },
}

/// Reads a key file: base64 of 32 bytes, mode 0600 or stricter. `key_path` is the config
/// key that named the file, for the error.
pub fn read_key(file: &Path, key_path: &str) -> Result<Secret, KeyError> {
    let read_err = |source| KeyError::Read {
        key_path: key_path.to_owned(),
        file: file.to_owned(),
        source,
    };
    let meta = fs::metadata(file).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            key_path: key_path.to_owned(),
            file: file.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(file).map_err(read_err)?;
    let key = Key::from_base64(text.trim()).map_err(|_| KeyError::Malformed {
        key_path: key_path.to_owned(),
        file: file.to_owned(),
    })?;
    Ok(Secret(key.0))
}

/// The tunnel's private key: from `configured` when the config names a file (which must
/// exist), else from `<state_dir>/<ifname>.key`, generated there on first use.
pub fn private_key(
    ifname: &str,
    configured: Option<&Path>,
    state_dir: &Path,
) -> Result<Secret, KeyError> {
    private_key_with(ifname, configured, state_dir, true)
}

/// [`private_key`]; with `write` false a missing generated key is made in memory only, so
/// that a check or a plan writes nothing (the apply generates the one that stays).
pub fn private_key_with(
    ifname: &str,
    configured: Option<&Path>,
    state_dir: &Path,
    write: bool,
) -> Result<Secret, KeyError> {
    let key_path = format!("wireguard.{ifname}.private_key_file");
    if let Some(file) = configured {
        return read_key(file, &key_path);
    }
    let file = state_dir.join(format!("{ifname}.key"));
    if file.exists() {
        return read_key(&file, &key_path);
    }
    let key = Key::generate_private();
    if !write {
        return Ok(Secret(key.0));
    }
    write_key(&file, &key.to_base64()).map_err(|source| KeyError::Write {
        key_path: key_path.clone(),
        file: file.clone(),
        source,
    })?;
    tracing::info!(interface = ifname, file = %file.display(), public_key = %key.get_public().to_base64(), "generated a private key");
    Ok(Secret(key.0))
}

/// Writes `text` to `file` with mode 0600, atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. A crash leaves the old file or the
/// new one, never half a key.
pub fn write_key(file: &Path, text: &str) -> std::io::Result<()> {
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("the key file has no directory"))?;
    fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("the key file has no name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // Left over by a crash between create and rename.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, file)?;
    fs::File::open(dir)?.sync_all()
}

/// The public key of a private key.
pub fn public_of(secret: &Secret) -> super::PublicKey {
    super::PublicKey(Key(secret.0).get_public().0)
}
