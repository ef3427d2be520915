//! The OS side of shares: ZFS mount state, the generated files, the reload commands and the
//! Samba password database. [`RealShareOs`] drives the real tools; [`super::FakeShareOs`]
//! is the in-memory double for unit tests.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use appliance::command::{self, CommandError, CommandFailure};

/// Where the generated files live. The root is read-only, so they are written under /run;
/// the image links `/etc/exports.d/appliance.exports` and `/etc/samba/appliance-shares.conf`
/// to them.
pub const EXPORTS_FILE: &str = "/run/appliance/shares/appliance.exports";
pub const SMB_INCLUDE_FILE: &str = "/run/appliance/shares/smb-shares.conf";
/// exportfs's and rpc.mountd's state (etab, rmtab), set in the image's
/// /etc/nfs.conf.d/appliance.conf: /var/lib/nfs is on the read-only root.
pub const NFS_STATE_DIR: &str = "/run/appliance/nfs";
/// nfsdcld's database of NFSv4 clients (`[nfsdcld] storagedir` in the same file): on /data,
/// so that clients may reclaim their state in the grace period after a reboot. nfsdcld makes
/// only the last component, and fails on the read-only root's default
/// (/var/lib/nfs/nfsdcld, absent from the image).
pub const NFSDCLD_DIR: &str = "/data/stored/nfsdcld";
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

/// An NT hash as `pdbedit -w` prints it: 32 hex digits. Checked, since the undo passes it
/// to pdbedit as an argument.
#[derive(Clone, PartialEq, Eq)]
pub struct NtHash(String);

impl NtHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for NtHash {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, String> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(format!("not an NT hash: {} characters", s.len()))
        }
    }
}

impl fmt::Debug for NtHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NtHash(..)")
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// A uid and a gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixIds {
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Display for UnixIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
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
    #[error("{0}")]
    Password(PasswordFailure),
}

/// A failed `pdbedit` run that was given a password: the command, its status and its
/// output, with every copy of the password in the output replaced by `*****` (pdbedit
/// does not echo it, but a failure message is the wrong place to find out it does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFailure {
    pub user: String,
    pub failure: CommandFailure,
}

impl fmt::Display for PasswordFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot set the SMB password of {}: {}",
            self.user, self.failure
        )
    }
}

/// Runs `argv` with `password` twice on stdin (as `pdbedit -t` and `smbpasswd -s` read it),
/// and keeps the password out of any error.
fn run_with_password(argv: &[&str], user: &str, password: &Password) -> Result<(), OsError> {
    let input = format!("{0}\n{0}\n", password.expose());
    let scrub = |s: String| {
        if password.expose().is_empty() {
            s
        } else {
            s.replace(password.expose(), "*****")
        }
    };
    match run(argv, Some(input.as_bytes())) {
        Ok(_) => Ok(()),
        Err(CommandError::Failed(f)) => Err(OsError::Password(PasswordFailure {
            user: user.to_owned(),
            failure: CommandFailure {
                command: f.command,
                status: f.status,
                stdout: scrub(f.stdout),
                stderr: scrub(f.stderr),
            },
        })),
        Err(e) => Err(e.into()),
    }
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
    /// The uid and primary gid of `user`'s Unix account, `None` when it has none (Samba
    /// maps every SMB user to one).
    fn unix_user(&self, user: &str) -> Result<Option<UnixIds>, OsError>;
    /// The owner of a directory.
    fn owner(&self, path: &str) -> Result<UnixIds, OsError>;
    /// Changes the owner of a directory (the directory itself, not what is in it).
    fn chown(&mut self, path: &str, ids: UnixIds) -> Result<(), OsError>;
    /// Users in Samba's password database and their NT hashes.
    fn smb_users(&self) -> Result<BTreeMap<String, String>, OsError>;
    /// Adds `user` to Samba's database or changes its password.
    fn set_smb_password(&mut self, user: &str, password: &Password) -> Result<(), OsError>;
    /// Removes `user` from Samba's database.
    fn remove_smb_user(&mut self, user: &str) -> Result<(), OsError>;
    /// Puts back a password Samba held, by its NT hash (the undo of a change or a removal):
    /// `add` when the user is no longer in the database.
    fn restore_smb_user(&mut self, user: &str, nt_hash: &NtHash, add: bool) -> Result<(), OsError>;
    /// The password in a secret file (mode 0600, one line).
    fn read_secret(&self, path: &str) -> Result<Password, OsError>;
}

/// The real OS: zfs, exportfs, smbcontrol, getent and pdbedit.
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
        for dir in [NFS_STATE_DIR, NFSDCLD_DIR] {
            let dir = Path::new(dir);
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
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

    fn unix_user(&self, user: &str) -> Result<Option<UnixIds>, OsError> {
        let argv = ["getent", "passwd", user];
        let out = match run(&argv, None) {
            Ok(out) => out,
            // getent(1): exit 2 means "not found".
            Err(CommandError::Failed(f)) if f.status == Some(2) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        parse_passwd_line(&out)
            .map(Some)
            .ok_or_else(|| OsError::Parse {
                command: argv.join(" "),
                line: out,
            })
    }

    fn owner(&self, path: &str) -> Result<UnixIds, OsError> {
        use std::os::unix::fs::MetadataExt as _;
        let p = Path::new(path);
        let m = fs::metadata(p).map_err(io_err(p))?;
        Ok(UnixIds {
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    fn chown(&mut self, path: &str, ids: UnixIds) -> Result<(), OsError> {
        let p = Path::new(path);
        std::os::unix::fs::chown(p, Some(ids.uid), Some(ids.gid)).map_err(io_err(p))
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
        // `-a` adds the user, or sets the password of one that exists (Samba's
        // local_password_change drops the "add" for an existing account).
        run_with_password(&["pdbedit", "-a", "-t", "-u", user], user, password)
    }

    fn remove_smb_user(&mut self, user: &str) -> Result<(), OsError> {
        run(&["pdbedit", "-x", "-u", user], None)?;
        Ok(())
    }

    fn restore_smb_user(&mut self, user: &str, nt_hash: &NtHash, add: bool) -> Result<(), OsError> {
        if add {
            // pdbedit adds a user only with a password: a random one, replaced at once.
            let mut bytes = [0u8; 24];
            let urandom = Path::new("/dev/urandom");
            io::Read::read_exact(
                &mut File::open(urandom).map_err(io_err(urandom))?,
                &mut bytes,
            )
            .map_err(io_err(urandom))?;
            let throwaway = Password::new(hex::encode(bytes));
            run_with_password(&["pdbedit", "-a", "-t", "-u", user], user, &throwaway)?;
        }
        // pdbedit takes a hash only in argv, and the hash logs in over SMB as well as the
        // password: it is kept out of logs and errors, and it is readable in /proc only
        // while this undo runs, by local processes the box has none of but root's and
        // system services' (NAS users' accounts have no shell).
        let hash = nt_hash.as_str();
        command::run_redacted(
            &["pdbedit", "-r", "-u", user, "--set-nt-hash", hash],
            None,
            &[("LC_ALL", "C")],
            &[hash],
        )?;
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

/// uid and gid of a passwd(5) line: `name:x:uid:gid:gecos:home:shell`.
fn parse_passwd_line(line: &str) -> Option<UnixIds> {
    let mut f = line.trim_end().split(':');
    let (_name, _pw) = (f.next()?, f.next()?);
    Some(UnixIds {
        uid: f.next()?.parse().ok()?,
        gid: f.next()?.parse().ok()?,
    })
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

    /// A stand-in for pdbedit that echoes what it read on stdin to both outputs and fails:
    /// the error names the command, the status and the user, and never the password.
    #[test]
    fn a_failed_password_command_never_shows_the_password() {
        let pw = Password::new("s3cret pw".into());
        let e = run_with_password(
            &[
                "sh",
                "-c",
                "cat; cat >&2 </dev/null; echo 'no such user alice' >&2; exit 3",
                "pdbedit",
            ],
            "alice",
            &pw,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cannot set the SMB password of alice"),
            "{text}"
        );
        assert!(text.contains("exited with status 3"), "{text}");
        assert!(text.contains("no such user alice"), "{text}");
        let OsError::Password(f) = &e else {
            panic!("{e:?}")
        };
        assert!(f.failure.stdout.contains("*****"), "{:?}", f.failure.stdout);
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
        assert!(run_with_password(&["sh", "-c", "cat >/dev/null"], "alice", &pw).is_ok());
    }

    #[test]
    fn passwd_lines_give_uid_and_gid() {
        assert_eq!(
            parse_passwd_line("alice:x:2000:2001:NAS user alice:/nonexistent:/usr/sbin/nologin\n"),
            Some(UnixIds {
                uid: 2000,
                gid: 2001
            })
        );
        assert_eq!(parse_passwd_line("alice:x:two:2001::/:/bin/sh"), None);
    }

    #[test]
    fn owner_and_chown_on_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let mut os = RealShareOs;
        let me = os.owner(path).unwrap();
        // Giving it to its own owner works without privileges.
        os.chown(path, me).unwrap();
        assert_eq!(os.owner(path).unwrap(), me);
        assert!(os.owner("/nonexistent/share").is_err());
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
