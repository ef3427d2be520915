//! The OS side of shares: ZFS mount state, the generated files, the reload commands and the
//! Samba password database. [`RealShareOs`] drives the real tools; [`super::FakeShareOs`]
//! is the in-memory double for unit tests.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use appliance::command::{self, CommandError};

/// Where the generated files live. The root is read-only, so they are written under /run;
/// the image links `/etc/exports.d/appliance.exports` and `/etc/samba/appliance-shares.conf`
/// to them.
pub const EXPORTS_FILE: &str = "/run/appliance/shares/appliance.exports";
pub const SMB_INCLUDE_FILE: &str = "/run/appliance/shares/smb-shares.conf";
/// exportfs's and rpc.mountd's state (etab, rmtab), set in the image's
/// /etc/nfs.conf.d/appliance.conf: /var/lib/nfs is on the read-only root.
pub const NFS_STATE_DIR: &str = "/run/appliance/nfs";
/// Samba's private directory (passdb.tdb), set in the image's smb.conf. smbd makes it when it
/// starts, but passwords are set before the first start.
pub const SAMBA_DIR: &str = "/run/samba";

/// A password read from a secret file. Never printed: `Debug` shows a placeholder and there
/// is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The NT hash Samba stores (MD4 of the UTF-16LE password), in `pdbedit -w`'s upper-case
    /// hex, so that a password in the file can be compared with the database's without
    /// keeping any copy of it.
    pub fn nt_hash(&self) -> String {
        use md4::Digest as _;
        let utf16: Vec<u8> = self.0.encode_utf16().flat_map(u16::to_le_bytes).collect();
        md4::Md4::digest(&utf16)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// A dataset's mount as ZFS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountState {
    /// The `mountpoint` property (`none` or `legacy` when ZFS does not mount it).
    pub mountpoint: String,
    pub mounted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("password file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    SecretMode { path: String, mode: u32 },
    #[error(
        "password file {path} is empty or has more than one line; write the password alone on one line"
    )]
    SecretFormat { path: String },
    #[error("cannot read the output of `{command}`: {line:?}")]
    Parse { command: String, line: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OsError + '_ {
    move |source| OsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What shares need from the OS.
pub trait ShareOs {
    /// The mount of `dataset`; `None` when the dataset does not exist.
    fn dataset_mount(&self, dataset: &str) -> Result<Option<MountState>, OsError>;
    /// Contents of a generated file; `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<String>, OsError>;
    /// Replaces a generated file so that readers see the old or the complete new contents.
    fn write_file(&mut self, path: &str, contents: &str) -> Result<(), OsError>;
    /// `exportfs -ra`: the kernel's export table from the exports files, without dropping
    /// the mounts of clients that stay allowed; starts the NFS server when it is off.
    fn reload_nfs(&mut self) -> Result<(), OsError>;
    /// `smbcontrol smbd reload-config`: running smbd processes reread the config and keep their
    /// sessions; starts smbd when it is off.
    fn reload_smb(&mut self) -> Result<(), OsError>;
    /// Whether `user` has a Unix account (Samba maps every SMB user to one).
    fn unix_user_exists(&self, user: &str) -> Result<bool, OsError>;
    /// Users in Samba's password database and their NT hashes.
    fn smb_users(&self) -> Result<BTreeMap<String, String>, OsError>;
    /// Adds `user` to Samba's database or changes its password.
    fn set_smb_password(&mut self, user: &str, password: &Password) -> Result<(), OsError>;
    /// Removes `user` from Samba's database.
    fn remove_smb_user(&mut self, user: &str) -> Result<(), OsError>;
    /// The password in a secret file (mode 0600, one line).
    fn read_secret(&self, path: &str) -> Result<Password, OsError>;
}

/// The real OS: zfs, exportfs, smbcontrol, getent, pdbedit and smbpasswd.
#[derive(Debug, Default)]
pub struct RealShareOs;

fn run(argv: &[&str], stdin: Option<&[u8]>) -> Result<String, CommandError> {
    command::run(argv, stdin, &[("LC_ALL", "C")]).map(|o| o.stdout)
}

impl ShareOs for RealShareOs {
    fn dataset_mount(&self, dataset: &str) -> Result<Option<MountState>, OsError> {
        let argv = [
            "zfs",
            "get",
            "-Hp",
            "-o",
            "property,value",
            "mounted,mountpoint",
            dataset,
        ];
        let out = match run(&argv, None) {
            Ok(out) => out,
            Err(CommandError::Failed(f)) if f.stderr.contains("dataset does not exist") => {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let mut mounted = None;
        let mut mountpoint = None;
        for line in out.lines() {
            match line.split_once('\t') {
                Some(("mounted", v)) => mounted = Some(v == "yes"),
                Some(("mountpoint", v)) => mountpoint = Some(v.to_owned()),
                _ => {
                    return Err(OsError::Parse {
                        command: argv.join(" "),
                        line: line.to_owned(),
                    });
                }
            }
        }
        match (mounted, mountpoint) {
            (Some(mounted), Some(mountpoint)) => Ok(Some(MountState {
                mountpoint,
                mounted,
            })),
            _ => Err(OsError::Parse {
                command: argv.join(" "),
                line: out,
            }),
        }
    }

    fn read_file(&self, path: &str) -> Result<Option<String>, OsError> {
        match fs::read_to_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(Path::new(path))(e)),
        }
    }

    fn write_file(&mut self, path: &str, contents: &str) -> Result<(), OsError> {
        let path = Path::new(path);
        let dir = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp: PathBuf = dir.join(format!(
            ".{}.{}.tmp",
            name.unwrap_or_default(),
            std::process::id()
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.set_permissions(Permissions::from_mode(0o644))?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io_err(path))
    }

    fn reload_nfs(&mut self) -> Result<(), OsError> {
        let state = Path::new(NFS_STATE_DIR);
        fs::create_dir_all(state).map_err(io_err(state))?;
        run(&["exportfs", "-ra"], None)?;
        // The image leaves the NFS server off until there is something to export; a start
        // of a running server does nothing, so connected clients stay.
        run(&["systemctl", "start", "nfs-server.service"], None)?;
        Ok(())
    }

    fn reload_smb(&mut self) -> Result<(), OsError> {
        match run(&["smbcontrol", "smbd", "reload-config"], None) {
            Ok(_) => Ok(()),
            // No smbd to tell (the image leaves it off until there is something to share):
            // start it, and it reads the shares as it starts.
            Err(CommandError::Failed(f)) if f.stderr.contains("Can't find pid") => {
                tracing::info!("smbd is not running; starting it");
                run(&["systemctl", "start", "smbd.service"], None)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn unix_user_exists(&self, user: &str) -> Result<bool, OsError> {
        match run(&["getent", "passwd", user], None) {
            Ok(_) => Ok(true),
            // getent(1): exit 2 means "not found".
            Err(CommandError::Failed(f)) if f.status == Some(2) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn smb_users(&self) -> Result<BTreeMap<String, String>, OsError> {
        // No database yet (nothing has run Samba since the boot): nobody in it. pdbedit
        // would fail to create it in a directory that does not exist.
        if !Path::new(SAMBA_DIR).join("passdb.tdb").exists() {
            return Ok(BTreeMap::new());
        }
        let argv = ["pdbedit", "-L", "-w"];
        let out = run(&argv, None)?;
        let mut users = BTreeMap::new();
        // smbpasswd format: name:uid:LM hash:NT hash:[flags]:LCT-...:
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let mut fields = line.split(':');
            match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(name), Some(_uid), Some(_lm), Some(nt)) => {
                    users.insert(name.to_owned(), nt.to_owned());
                }
                _ => {
                    return Err(OsError::Parse {
                        command: argv.join(" "),
                        line: line.to_owned(),
                    });
                }
            }
        }
        Ok(users)
    }

    fn set_smb_password(&mut self, user: &str, password: &Password) -> Result<(), OsError> {
        let dir = Path::new(SAMBA_DIR);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        // The password goes through stdin only: never in argv, the environment or a log.
        let input = format!("{0}\n{0}\n", password.expose());
        run(&["smbpasswd", "-s", "-a", user], Some(input.as_bytes()))?;
        Ok(())
    }

    fn remove_smb_user(&mut self, user: &str) -> Result<(), OsError> {
        run(&["pdbedit", "-x", "-u", user], None)?;
        Ok(())
    }

    fn read_secret(&self, path: &str) -> Result<Password, OsError> {
        let p = Path::new(path);
        let mode = fs::metadata(p).map_err(io_err(p))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(OsError::SecretMode {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let text = fs::read_to_string(p).map_err(io_err(p))?;
        let pw = text.strip_suffix('\n').unwrap_or(&text);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        if pw.is_empty() || pw.contains('\n') {
            return Err(OsError::SecretFormat {
                path: path.to_owned(),
            });
        }
        Ok(Password::new(pw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_hash_is_md4_of_utf16le() {
        // The well-known NT hash of "password".
        assert_eq!(
            Password::new("password".into()).nt_hash(),
            "8846F7EAEE8FB117AD06BDD830B7586C"
        );
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let p = Password::new("hunter2".into());
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn secret_files_must_be_private_and_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let path_s = path.to_str().unwrap();
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            RealShareOs.read_secret(path_s),
            Err(OsError::SecretMode { .. })
        ));
        fs::set_permissions(&path, Permissions::from_mode(0o600)).unwrap();
        assert_eq!(RealShareOs.read_secret(path_s).unwrap().expose(), "s3cret");
        fs::write(&path, "a\nb\n").unwrap();
        assert!(matches!(
            RealShareOs.read_secret(path_s),
            Err(OsError::SecretFormat { .. })
        ));
    }

    #[test]
    fn write_file_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.exports");
        let path_s = path.to_str().unwrap();
        let mut os = RealShareOs;
        assert_eq!(os.read_file(path_s).unwrap(), None);
        os.write_file(path_s, "one\n").unwrap();
        os.write_file(path_s, "two\n").unwrap();
        assert_eq!(os.read_file(path_s).unwrap().as_deref(), Some("two\n"));
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
