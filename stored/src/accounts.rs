//! Unix accounts of the NAS users (`storage.users`) on the read-only root.
//!
//! Samba maps every SMB user to a Unix account, and the files in a share belong to uids.
//! The root's /etc/passwd cannot be written at runtime, so each user is a systemd JSON user
//! record (and a group record of the same name and id) in `/run/userdb`, which nss-systemd
//! reads on every `getpwnam` (`systemd` on the passwd and group lines of nsswitch.conf; the
//! image has Debian 12's libnss-systemd 252, which reads such drop-ins since 249). Chosen
//! over a passwd file on /data with libnss-extrausers because it needs no extra NSS module
//! and no second passwd format: the records are systemd's own, `userdbctl` shows them, and
//! a record exists only while stored has written it for the running config.
//!
//! The records are derived state in /run (rewritten on every apply, so after a boot too);
//! the one thing that must survive is which uid each name has, kept in
//! `/data/stored/accounts.json`. A name keeps its uid across restarts, updates and
//! removals, and a removed user's uid is never handed to another name, who would otherwise
//! own the removed user's files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::ops::RangeInclusive;
use std::os::unix::fs::{OpenOptionsExt as _, symlink};
use std::path::{Path, PathBuf};

use appliance::model::NasUser;
use appliance::types::Name;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where nss-systemd finds drop-in user and group records that live until the next boot.
pub const USERDB_DIR: &str = "/run/userdb";
/// The uid of every NAS user name stored has seen.
pub const MAP_FILE: &str = "/data/stored/accounts.json";
/// Uids given to users without an explicit `uid` (the model's "from 2000 up"); above the
/// first regular uid (1000) so that a box's own users, if any, stay apart.
pub const UID_RANGE: RangeInclusive<u32> = 2000..=2999;
/// The `service` field of our records: records without it are never touched.
pub const SERVICE: &str = "io.appliance.stored";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is not stored's uid map ({source}); repair it or move it away (a new one gives NAS users new uids, and their files keep the old owners)",
        path.display()
    )]
    Map {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "no free uid left in {}-{} for NAS user {user}; give it an explicit uid in storage.users.{user}",
        UID_RANGE.start(), UID_RANGE.end()
    )]
    Exhausted { user: String },
    #[error("NAS users {first} and {second} both have uid {uid}; give each its own uid")]
    Conflict {
        first: String,
        second: String,
        uid: u32,
    },
    #[error(
        "NAS user {user}: uid {uid} is outside 1000-60000 (system accounts and nobody live there); choose another"
    )]
    Reserved { user: String, uid: u32 },
}

/// A change to the accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountAction {
    Create { user: String, uid: u32 },
    Remove { user: String, uid: u32 },
}

impl fmt::Display for AccountAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create { user, uid } => write!(f, "create Unix account {user} (uid {uid})"),
            Self::Remove { user, uid } => write!(
                f,
                "remove Unix account {user} (uid {uid} stays reserved for its files)"
            ),
        }
    }
}

/// `/data/stored/accounts.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidMap {
    /// Every name ever given a uid, configured or not.
    pub users: BTreeMap<String, u32>,
    /// Uids a name gave up for an explicit other one: its old files still carry them, so
    /// they are never handed out again either.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub retired: BTreeSet<u32>,
}

/// Name to uid.
pub type Uids = BTreeMap<String, u32>;

/// The uid of every configured user, and the map with new names added (pure).
///
/// An explicit `uid` wins and is recorded; a name seen before keeps its uid; a new name gets
/// the lowest uid of [`UID_RANGE`] that no name (removed ones included) and no explicit uid
/// has.
pub fn assign(
    users: &BTreeMap<Name, NasUser>,
    map: &BTreeMap<String, u32>,
) -> Result<(Uids, Uids), AccountError> {
    let whole = UidMap {
        users: map.clone(),
        retired: BTreeSet::new(),
    };
    assign_map(users, &whole).map(|(wanted, m)| (wanted, m.users))
}

/// [`assign`] on the whole map: a name whose explicit `uid` replaces the one it had leaves
/// that one retired, and retired uids are never given to a new name.
pub fn assign_map(
    users: &BTreeMap<Name, NasUser>,
    whole: &UidMap,
) -> Result<(Uids, UidMap), AccountError> {
    let mut map = whole.users.clone();
    let mut retired = whole.retired.clone();
    let mut wanted = BTreeMap::new();
    for (name, user) in users {
        if let Some(uid) = user.uid {
            if !(1000..=60000).contains(&uid) {
                return Err(AccountError::Reserved {
                    user: name.to_string(),
                    uid,
                });
            }
            if let Some(old) = map.insert(name.to_string(), uid)
                && old != uid
            {
                retired.insert(old);
            }
            wanted.insert(name.to_string(), uid);
        }
    }
    for name in users.keys() {
        let name = name.to_string();
        if wanted.contains_key(&name) {
            continue;
        }
        let uid = match map.get(&name) {
            Some(&uid) => uid,
            None => {
                let taken: BTreeSet<u32> = map
                    .values()
                    .chain(wanted.values())
                    .chain(&retired)
                    .copied()
                    .collect();
                let uid = UID_RANGE
                    .clone()
                    .find(|u| !taken.contains(u))
                    .ok_or_else(|| AccountError::Exhausted { user: name.clone() })?;
                map.insert(name.clone(), uid);
                uid
            }
        };
        wanted.insert(name, uid);
    }
    let mut by_uid: BTreeMap<u32, &String> = BTreeMap::new();
    for (name, uid) in &wanted {
        if let Some(first) = by_uid.insert(*uid, name) {
            return Err(AccountError::Conflict {
                first: first.clone(),
                second: name.clone(),
                uid: *uid,
            });
        }
    }
    Ok((
        wanted,
        UidMap {
            users: map,
            retired,
        },
    ))
}

fn user_record(name: &str, uid: u32) -> Value {
    json!({
        "userName": name,
        "uid": uid,
        "gid": uid,
        "realName": format!("NAS user {name}"),
        "homeDirectory": "/nonexistent",
        "shell": "/usr/sbin/nologin",
        "disposition": "regular",
        "service": SERVICE,
    })
}

fn group_record(name: &str, gid: u32) -> Value {
    json!({
        "groupName": name,
        "gid": gid,
        "disposition": "regular",
        "service": SERVICE,
    })
}

/// The accounts in a userdb directory and the uid map in a file.
#[derive(Debug, Clone)]
pub struct Accounts {
    userdb: PathBuf,
    map_file: PathBuf,
}

impl Accounts {
    /// The box's: [`USERDB_DIR`] and [`MAP_FILE`].
    pub fn system() -> Self {
        Self::at(USERDB_DIR, MAP_FILE)
    }

    pub fn at(userdb: impl Into<PathBuf>, map_file: impl Into<PathBuf>) -> Self {
        Self {
            userdb: userdb.into(),
            map_file: map_file.into(),
        }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> AccountError + '_ {
        move |source| AccountError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn read_map(&self) -> Result<UidMap, AccountError> {
        match fs::read_to_string(&self.map_file) {
            Ok(text) => serde_json::from_str::<UidMap>(&text).map_err(|source| AccountError::Map {
                path: self.map_file.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UidMap::default()),
            Err(e) => Err(Self::io(&self.map_file)(e)),
        }
    }

    /// Our records now in the directory: name and uid.
    fn observe(&self) -> Result<BTreeMap<String, u32>, AccountError> {
        let mut ours = BTreeMap::new();
        let entries = match fs::read_dir(&self.userdb) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ours),
            Err(e) => return Err(Self::io(&self.userdb)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Self::io(&self.userdb))?;
            let path = entry.path();
            // The <uid>.user links point at the <name>.user files: read the files only.
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if !is_file || path.extension().is_none_or(|e| e != "user") {
                continue;
            }
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if v.get("service").and_then(Value::as_str) != Some(SERVICE) {
                continue;
            }
            let name = v.get("userName").and_then(Value::as_str);
            let uid = v
                .get("uid")
                .and_then(Value::as_u64)
                .and_then(|u| u32::try_from(u).ok());
            if let (Some(name), Some(uid)) = (name, uid) {
                ours.insert(name.to_owned(), uid);
            }
        }
        Ok(ours)
    }

    /// Every name stored has given a uid (configured now or not), and the names of `users`,
    /// which the next [`Self::converge`] gives one: the NAS users whose Samba entries are
    /// stored's own.
    pub fn names_with(
        &self,
        users: &BTreeMap<Name, NasUser>,
    ) -> Result<BTreeSet<String>, AccountError> {
        let mut names: BTreeSet<String> = self.read_map()?.users.into_keys().collect();
        names.extend(users.keys().map(|n| n.as_str().to_owned()));
        Ok(names)
    }

    /// What [`Self::converge`] would change; writes nothing.
    pub fn plan(
        &self,
        users: &BTreeMap<Name, NasUser>,
    ) -> Result<Vec<AccountAction>, AccountError> {
        let (wanted, _) = assign_map(users, &self.read_map()?)?;
        Ok(diff(&wanted, &self.observe()?))
    }

    /// Makes the records match the configured users: new and changed ones written, ours
    /// that are no longer configured removed; the uid map saved first when it grew.
    pub fn converge(
        &self,
        users: &BTreeMap<Name, NasUser>,
    ) -> Result<Vec<AccountAction>, AccountError> {
        let old_map = self.read_map()?;
        let (wanted, map) = assign_map(users, &old_map)?;
        if map != old_map {
            self.write_map(&map)?;
        }
        let actions = diff(&wanted, &self.observe()?);
        for (n, action) in actions.iter().enumerate() {
            let done = match action {
                AccountAction::Create { user, uid } => self.write_records(user, *uid),
                AccountAction::Remove { user, uid } => self.remove_records(user, *uid),
            };
            if let Err(e) = done {
                // A create may have written half its records: take it back with the rest.
                let not_undone = self.undo(actions.get(..=n).unwrap_or_default());
                if !not_undone.is_empty() {
                    tracing::error!(?not_undone, "NAS accounts not put back");
                }
                return Err(e);
            }
            tracing::info!(%action, "NAS account");
        }
        Ok(actions)
    }

    /// Takes back what [`Self::converge`] did (its `actions`), newest first, so that a
    /// later step of the same apply that fails leaves the records as they were: a created
    /// account's records are removed, a removed one's written again (records are a pure
    /// function of name and uid). The uid map keeps the names it learnt, so that the retry
    /// gives them the same uids. Returns what could not be put back.
    pub fn undo(&self, actions: &[AccountAction]) -> Vec<String> {
        let mut not_undone = Vec::new();
        for action in actions.iter().rev() {
            let result = match action {
                AccountAction::Create { user, uid } => self.remove_records(user, *uid),
                AccountAction::Remove { user, uid } => self.write_records(user, *uid),
            };
            match result {
                Ok(()) => tracing::info!(%action, "NAS account change undone"),
                Err(e) => not_undone.push(format!("{action}: {e}")),
            }
        }
        not_undone
    }

    fn write_map(&self, map: &UidMap) -> Result<(), AccountError> {
        let text = serde_json::to_string_pretty(map).map_err(|source| AccountError::Map {
            path: self.map_file.clone(),
            source,
        })?;
        if let Some(dir) = self.map_file.parent() {
            fs::create_dir_all(dir).map_err(Self::io(dir))?;
        }
        write_atomic(&self.map_file, text.as_bytes(), 0o600)
    }

    fn write_records(&self, name: &str, uid: u32) -> Result<(), AccountError> {
        fs::create_dir_all(&self.userdb).map_err(Self::io(&self.userdb))?;
        for (kind, record) in [
            ("user", user_record(name, uid)),
            ("group", group_record(name, uid)),
        ] {
            let file = self.userdb.join(format!("{name}.{kind}"));
            write_atomic(&file, format!("{record:#}\n").as_bytes(), 0o644)?;
            // nss-systemd looks a uid up as <uid>.user (a gid as <gid>.group).
            let link = self.userdb.join(format!("{uid}.{kind}"));
            remove_if_present(&link)?;
            symlink(format!("{name}.{kind}"), &link).map_err(Self::io(&link))?;
        }
        Ok(())
    }

    fn remove_records(&self, name: &str, uid: u32) -> Result<(), AccountError> {
        for kind in ["user", "group"] {
            remove_if_present(&self.userdb.join(format!("{uid}.{kind}")))?;
            remove_if_present(&self.userdb.join(format!("{name}.{kind}")))?;
        }
        Ok(())
    }
}

fn diff(wanted: &BTreeMap<String, u32>, ours: &BTreeMap<String, u32>) -> Vec<AccountAction> {
    let mut actions = Vec::new();
    for (user, uid) in ours {
        if wanted.get(user) != Some(uid) {
            actions.push(AccountAction::Remove {
                user: user.clone(),
                uid: *uid,
            });
        }
    }
    for (user, uid) in wanted {
        if ours.get(user) != Some(uid) {
            actions.push(AccountAction::Create {
                user: user.clone(),
                uid: *uid,
            });
        }
    }
    actions
}

fn remove_if_present(path: &Path) -> Result<(), AccountError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Accounts::io(path)(e)),
        _ => Ok(()),
    }
}

/// Temp file, fsync, rename, fsync of the directory: a crash leaves the old file or the new.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), AccountError> {
    let io = Accounts::io(path);
    let tmp = path.with_extension("tmp~");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Accounts::io(&tmp))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(Accounts::io(&tmp))?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Accounts::io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(list: &[(&str, Option<u32>)]) -> BTreeMap<Name, NasUser> {
        list.iter()
            .map(|(n, uid)| {
                (
                    n.parse().unwrap(),
                    NasUser {
                        uid: *uid,
                        smb_password_file: None,
                    },
                )
            })
            .collect()
    }

    fn map(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
        list.iter().map(|(n, u)| ((*n).to_owned(), *u)).collect()
    }

    #[test]
    fn new_names_get_the_lowest_free_uid_and_old_ones_keep_theirs() {
        let (wanted, m) = assign(
            &users(&[("alice", None), ("bob", None), ("carol", Some(2001))]),
            &map(&[("alice", 2005), ("gone", 2000)]),
        )
        .unwrap();
        // gone's 2000 stays reserved, carol's explicit 2001 is taken: bob gets 2002.
        assert_eq!(
            wanted,
            map(&[("alice", 2005), ("bob", 2002), ("carol", 2001)])
        );
        assert_eq!(
            m,
            map(&[
                ("alice", 2005),
                ("bob", 2002),
                ("carol", 2001),
                ("gone", 2000)
            ])
        );
    }

    #[test]
    fn clashing_and_system_uids_are_refused() {
        let e = assign(&users(&[("a", Some(2000)), ("b", Some(2000))]), &map(&[])).unwrap_err();
        assert!(matches!(e, AccountError::Conflict { uid: 2000, .. }), "{e}");
        let e = assign(&users(&[("a", Some(0))]), &map(&[])).unwrap_err();
        assert!(e.to_string().contains("outside 1000-60000"), "{e}");
        let e = assign(
            &users(&[("a", None), ("b", Some(2500))]),
            &map(&[("b", 2500)]),
        );
        assert_eq!(e.unwrap().0, map(&[("a", 2000), ("b", 2500)]));
    }

    #[test]
    fn a_uid_given_up_for_an_explicit_one_is_never_handed_out_again() {
        let before = UidMap {
            users: map(&[("alice", 2000)]),
            retired: BTreeSet::new(),
        };
        let (wanted, after) =
            assign_map(&users(&[("alice", Some(2100)), ("carol", None)]), &before).unwrap();
        // alice's old files still belong to 2000: carol gets 2001, not 2000.
        assert_eq!(wanted, map(&[("alice", 2100), ("carol", 2001)]));
        assert_eq!(after.retired, BTreeSet::from([2000]));
        let text = serde_json::to_string(&after).unwrap();
        assert!(text.contains(r#""retired":[2000]"#), "{text}");
        // A map written before `retired` existed still reads.
        let old: UidMap = serde_json::from_str(r#"{"users":{"alice":2000}}"#).unwrap();
        assert_eq!(old, before);
    }

    #[test]
    fn the_range_runs_out_with_an_error_naming_the_user() {
        let full: BTreeMap<String, u32> = UID_RANGE.map(|u| (format!("u{u}"), u)).collect();
        let e = assign(&users(&[("late", None)]), &full).unwrap_err();
        assert!(e.to_string().contains("late"), "{e}");
    }

    #[test]
    fn converge_writes_records_removes_unconfigured_ones_and_keeps_uids() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Accounts::at(
            dir.path().join("userdb"),
            dir.path().join("data/accounts.json"),
        );
        // Someone else's record in the same directory is never touched.
        fs::create_dir_all(dir.path().join("userdb")).unwrap();
        fs::write(
            dir.path().join("userdb/other.user"),
            r#"{"userName":"other","uid":4000}"#,
        )
        .unwrap();

        let two = users(&[("alice", None), ("bob", None)]);
        assert_eq!(acc.plan(&two).unwrap().len(), 2);
        let done = acc.converge(&two).unwrap();
        assert_eq!(
            done,
            vec![
                AccountAction::Create {
                    user: "alice".into(),
                    uid: 2000
                },
                AccountAction::Create {
                    user: "bob".into(),
                    uid: 2001
                },
            ]
        );
        let rec: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("userdb/2001.user")).unwrap())
                .unwrap();
        assert_eq!(rec["userName"], "bob");
        assert_eq!(rec["gid"], 2001);
        let grp: Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("userdb/bob.group")).unwrap())
                .unwrap();
        assert_eq!(grp["groupName"], "bob");
        // Idempotent: nothing planned, nothing written.
        assert!(acc.converge(&two).unwrap().is_empty());

        // bob goes, carol comes: carol does not inherit bob's uid (his files).
        let next = users(&[("alice", None), ("carol", None)]);
        let done = acc.converge(&next).unwrap();
        assert_eq!(
            done,
            vec![
                AccountAction::Remove {
                    user: "bob".into(),
                    uid: 2001
                },
                AccountAction::Create {
                    user: "carol".into(),
                    uid: 2002
                },
            ]
        );
        assert!(!dir.path().join("userdb/bob.user").exists());
        assert!(!dir.path().join("userdb/2001.group").exists());
        assert!(dir.path().join("userdb/other.user").exists());

        // A reboot empties /run: the records come back with the same uids.
        fs::remove_dir_all(dir.path().join("userdb")).unwrap();
        let done = acc
            .converge(&users(&[("bob", None), ("carol", None)]))
            .unwrap();
        assert_eq!(
            done,
            vec![
                AccountAction::Create {
                    user: "bob".into(),
                    uid: 2001
                },
                AccountAction::Create {
                    user: "carol".into(),
                    uid: 2002
                },
            ]
        );
        let m = fs::read_to_string(dir.path().join("data/accounts.json")).unwrap();
        assert!(m.contains("\"alice\": 2000"), "{m}");
    }

    fn listing(dir: &Path) -> BTreeMap<String, String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let target = fs::read_link(e.path())
                    .map(|t| format!("-> {}", t.display()))
                    .unwrap_or_else(|_| fs::read_to_string(e.path()).unwrap());
                (e.file_name().to_string_lossy().into_owned(), target)
            })
            .collect()
    }

    #[test]
    fn undo_puts_the_records_back_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let userdb = dir.path().join("userdb");
        let acc = Accounts::at(&userdb, dir.path().join("accounts.json"));
        acc.converge(&users(&[
            ("alice", None),
            ("bob", Some(2500)),
            ("dave", None),
        ]))
        .unwrap();
        let before = listing(&userdb);

        // dave leaves, bob gets another uid, carol comes: then a later step fails.
        let next = users(&[("alice", None), ("bob", Some(2600)), ("carol", None)]);
        let done = acc.converge(&next).unwrap();
        assert_eq!(done.len(), 4, "{done:?}");
        assert_ne!(listing(&userdb), before);
        assert!(acc.undo(&done).is_empty());
        assert_eq!(listing(&userdb), before);
        // The retry gives carol the uid she was given the first time.
        let again = acc.converge(&next).unwrap();
        assert!(
            again.contains(&AccountAction::Create {
                user: "carol".into(),
                uid: 2002
            }),
            "{again:?}"
        );
    }

    #[test]
    fn a_damaged_map_stops_the_apply_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("accounts.json"), "{not json").unwrap();
        let acc = Accounts::at(dir.path().join("userdb"), dir.path().join("accounts.json"));
        let e = acc.converge(&users(&[("alice", None)])).unwrap_err();
        assert!(e.to_string().contains("repair it"), "{e}");
        assert!(!dir.path().join("userdb").exists());
    }
}
