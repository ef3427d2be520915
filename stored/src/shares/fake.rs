//! In-memory [`ShareOs`] for unit tests: it records every write and command, and can be
//! told to fail one of them.

use std::collections::BTreeMap;

use super::os::{MountState, NtHash, OsError, Password, ShareOs, UnixIds};
use appliance::command::{CommandError, CommandFailure};

#[derive(Debug, Default)]
pub struct FakeShareOs {
    pub mounts: BTreeMap<String, MountState>,
    pub files: BTreeMap<String, String>,
    /// Unix accounts: name to uid and gid.
    pub unix_users: BTreeMap<String, UnixIds>,
    /// Owners of directories; one not listed belongs to root.
    pub owners: BTreeMap<String, UnixIds>,
    /// User to NT hash.
    pub smb: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Password>,
    /// Every change made, in order: `write PATH`, `exportfs -ra`, `reload smbd`,
    /// `set password USER`, `remove USER`, `restore USER`, `chown PATH UID:GID`.
    pub log: Vec<String>,
    /// A change whose log entry equals this fails (once).
    pub fail: Option<String>,
}

impl FakeShareOs {
    /// A mounted dataset at `mountpoint`.
    pub fn mounted(mut self, dataset: &str, mountpoint: &str) -> Self {
        self.mounts.insert(
            dataset.to_owned(),
            MountState {
                mountpoint: mountpoint.to_owned(),
                mounted: true,
            },
        );
        self
    }

    /// A Unix account (uid and gid 2000, 2001... in the order of the calls) with an SMB
    /// password in `path`.
    pub fn user(mut self, name: &str, path: &str, password: &str) -> Self {
        let id = 2000 + u32::try_from(self.unix_users.len()).unwrap_or(0);
        self.unix_users
            .insert(name.to_owned(), UnixIds { uid: id, gid: id });
        self.secrets
            .insert(path.to_owned(), Password::new(password.to_owned()));
        self
    }

    fn change(&mut self, entry: String) -> Result<(), OsError> {
        if self.fail.as_deref() == Some(entry.as_str()) {
            self.fail = None;
            return Err(CommandError::Failed(CommandFailure {
                command: entry,
                status: Some(1),
                stdout: String::new(),
                stderr: "injected failure".into(),
            })
            .into());
        }
        self.log.push(entry);
        Ok(())
    }
}

impl ShareOs for FakeShareOs {
    fn dataset_mount(&self, dataset: &str) -> Result<Option<MountState>, OsError> {
        Ok(self.mounts.get(dataset).cloned())
    }
    fn read_file(&self, path: &str) -> Result<Option<String>, OsError> {
        Ok(self.files.get(path).cloned())
    }
    fn write_file(&mut self, path: &str, contents: &str) -> Result<(), OsError> {
        self.change(format!("write {path}"))?;
        self.files.insert(path.to_owned(), contents.to_owned());
        Ok(())
    }
    fn reload_nfs(&mut self) -> Result<(), OsError> {
        self.change("exportfs -ra".into())
    }
    fn reload_smb(&mut self) -> Result<(), OsError> {
        self.change("reload smbd".into())
    }
    fn unix_user(&self, user: &str) -> Result<Option<UnixIds>, OsError> {
        Ok(self.unix_users.get(user).copied())
    }
    fn owner(&self, path: &str) -> Result<UnixIds, OsError> {
        Ok(self
            .owners
            .get(path)
            .copied()
            .unwrap_or(UnixIds { uid: 0, gid: 0 }))
    }
    fn chown(&mut self, path: &str, ids: UnixIds) -> Result<(), OsError> {
        self.change(format!("chown {path} {ids}"))?;
        self.owners.insert(path.to_owned(), ids);
        Ok(())
    }
    fn smb_users(&self) -> Result<BTreeMap<String, String>, OsError> {
        Ok(self.smb.clone())
    }
    fn set_smb_password(&mut self, user: &str, password: &Password) -> Result<(), OsError> {
        self.change(format!("set password {user}"))?;
        self.smb.insert(user.to_owned(), password.nt_hash());
        Ok(())
    }
    fn remove_smb_user(&mut self, user: &str) -> Result<(), OsError> {
        self.change(format!("remove {user}"))?;
        self.smb.remove(user);
        Ok(())
    }
    fn restore_smb_user(&mut self, user: &str, nt_hash: &NtHash, add: bool) -> Result<(), OsError> {
        // The real pdbedit adds only a user that is not there, and changes only one that is.
        if add == self.smb.contains_key(user) {
            return Err(OsError::Io {
                path: user.to_owned(),
                source: std::io::Error::other(format!("restore with add={add}")),
            });
        }
        self.change(format!("restore {user}"))?;
        self.smb
            .insert(user.to_owned(), nt_hash.as_str().to_owned());
        Ok(())
    }
    fn read_secret(&self, path: &str) -> Result<Password, OsError> {
        self.secrets.get(path).cloned().ok_or_else(|| OsError::Io {
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}
