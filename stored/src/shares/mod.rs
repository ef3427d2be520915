//! NFS exports and SMB shares of datasets, from the `shares` section and the NAS users of
//! `storage.users`.
//!
//! The shape is the daemons' usual one: [`observe`] reads the OS (mounts, the generated
//! files, Samba's users), [`plan`] is pure and validates everything before anything is
//! touched, [`apply`] makes the changes in order and undoes the done ones when a step fails.
//! A second apply of the same config plans nothing: files are compared, passwords by their
//! NT hash.

mod fake;
pub mod os;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use appliance::model::{NasUser, Share};
use appliance::types::Name;

pub use fake::FakeShareOs;
pub use os::{
    EXPORTS_FILE, MountState, NFS_STATE_DIR, NtHash, OsError, Password, PasswordFailure,
    RealShareOs, SMB_INCLUDE_FILE, ShareOs, UnixIds,
};

/// What the OS holds now, as far as shares go.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The mount of every shared dataset; `None` when the dataset does not exist.
    pub mounts: BTreeMap<String, Option<MountState>>,
    pub exports: Option<String>,
    pub smb_include: Option<String>,
    /// Samba's users and their NT hashes.
    pub smb_users: BTreeMap<String, String>,
    /// Every name stored has given a Unix account (its uid map, so also users since
    /// removed): Samba users among them are stored's to remove, the others are left alone.
    pub nas_users: BTreeSet<String>,
    /// Users of the config that have a Unix account (or will have, see
    /// [`plan_after_accounts`]).
    pub unix_users: BTreeSet<String>,
    /// The uid and gid of the users of the config that have a Unix account now.
    pub unix_ids: BTreeMap<String, UnixIds>,
    /// The owner of the root directory of every mounted share with an `owner`, by path.
    pub owners: BTreeMap<String, UnixIds>,
    /// The password of every user with an `smb_password_file`, or why it cannot be read.
    pub passwords: BTreeMap<String, Result<Password, String>>,
}

/// Reads what [`plan`] compares the config with.
pub fn observe(
    os: &impl ShareOs,
    shares: &BTreeMap<Name, Share>,
    users: &BTreeMap<Name, NasUser>,
) -> Result<Observed, OsError> {
    let mut observed = Observed {
        exports: os.read_file(EXPORTS_FILE)?,
        smb_include: os.read_file(SMB_INCLUDE_FILE)?,
        smb_users: os.smb_users()?,
        ..Observed::default()
    };
    for share in shares.values() {
        let ds = share.dataset.as_str();
        if !observed.mounts.contains_key(ds) {
            observed.mounts.insert(ds.to_owned(), os.dataset_mount(ds)?);
        }
        if share.owner.is_some()
            && let Some(Some(m)) = observed.mounts.get(ds)
            && m.mounted
            && m.mountpoint.starts_with('/')
            && !observed.owners.contains_key(&m.mountpoint)
        {
            let owner = os.owner(&m.mountpoint)?;
            observed.owners.insert(m.mountpoint.clone(), owner);
        }
    }
    for (name, user) in users {
        if let Some(ids) = os.unix_user(name.as_str())? {
            observed.unix_users.insert(name.as_str().to_owned());
            observed.unix_ids.insert(name.as_str().to_owned(), ids);
        }
        if let Some(file) = &user.smb_password_file {
            let pw = os.read_secret(file.as_str()).map_err(|e| e.to_string());
            observed.passwords.insert(name.as_str().to_owned(), pw);
        }
    }
    Ok(observed)
}

/// Why a config cannot be applied. Each names the share or user to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "share {share}: dataset {dataset} does not exist; declare it under [storage.datasets] and apply storage first"
    )]
    DatasetMissing { share: String, dataset: String },
    #[error(
        "share {share}: dataset {dataset} is not mounted (mountpoint {mountpoint}); import its pool or `zfs mount {dataset}` first"
    )]
    NotMounted {
        share: String,
        dataset: String,
        mountpoint: String,
    },
    #[error(
        "share {share}: dataset {dataset} has mountpoint={mountpoint}, so it has no path to share; give it a mountpoint"
    )]
    NoMountpoint {
        share: String,
        dataset: String,
        mountpoint: String,
    },
    #[error(
        "shares {first} and {second} both export dataset {dataset} over NFS; merge their clients into one share"
    )]
    DuplicateExport {
        first: String,
        second: String,
        dataset: String,
    },
    #[error("share {share}: user {user} is not declared in [storage.users]")]
    UnknownUser { share: String, user: String },
    #[error(
        "share {share}: owner {user} has no Unix account on this box (getent passwd {user} finds nothing)"
    )]
    OwnerWithoutAccount { share: String, user: String },
    #[error("share {share}: user {user} has no smb_password_file, so it cannot log in over SMB")]
    NoSmbPassword { share: String, user: String },
    #[error("share {share}: smb has no users and guest is off, so nobody could use it")]
    NobodyCanUse { share: String },
    #[error(
        "user {user} has no Unix account on this box (getent passwd {user} finds nothing); Samba maps every SMB user to one"
    )]
    NoUnixAccount { user: String },
    #[error("user {user}: {why}")]
    Secret { user: String, why: String },
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add the user to Samba's database or change its password (the password is in
    /// [`Plan::passwords`], never in the action).
    SetSmbPassword {
        user: String,
        new: bool,
    },
    /// Take a NAS user out of Samba's database: the config no longer gives it an SMB
    /// password (or no longer names it).
    RemoveSmbUser {
        user: String,
    },
    WriteFile {
        path: String,
        contents: String,
    },
    ReloadSmb,
    ReloadNfs,
    /// Give a share's root directory to its `owner`. `to` is `None` while the owner's
    /// account is still to be made (a plan shown before the accounts step); the apply
    /// then looks it up.
    Chown {
        share: String,
        path: String,
        user: String,
        to: Option<UnixIds>,
        from: UnixIds,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetSmbPassword { user, new: true } => write!(f, "add SMB user {user}"),
            Self::SetSmbPassword { user, new: false } => {
                write!(f, "change the SMB password of {user}")
            }
            Self::RemoveSmbUser { user } => write!(
                f,
                "remove SMB user {user} (the config gives it no SMB password)"
            ),
            Self::WriteFile { path, .. } => write!(f, "write {path}"),
            Self::ReloadSmb => f.write_str("reload smbd (smbcontrol smbd reload-config)"),
            Self::ReloadNfs => f.write_str("reload NFS exports (exportfs -ra)"),
            Self::Chown {
                share,
                path,
                user,
                to,
                from,
            } => {
                write!(f, "chown the root of share {share} ({path}) to {user}")?;
                match to {
                    Some(to) => write!(f, " ({from} -> {to})"),
                    None => write!(f, " (from {from}; its account is made first)"),
                }
            }
        }
    }
}

/// The changes, in the order [`apply`] makes them.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Passwords of the users in `SetSmbPassword` actions.
    pub passwords: BTreeMap<String, Password>,
    /// The NT hashes Samba holds now for the users whose password is changed or who are
    /// removed, for the undo.
    pub old_hashes: BTreeMap<String, NtHash>,
    /// The files' contents before, for the undo.
    pub previous: BTreeMap<String, Option<String>>,
    /// Samba users the config does not name: left alone.
    pub unmanaged_smb_users: Vec<String>,
}

/// Validates the shares against what is observed and lists the changes. Every problem is
/// reported at once, and a plan with a problem has no actions.
pub fn plan(
    shares: &BTreeMap<Name, Share>,
    users: &BTreeMap<Name, NasUser>,
    observed: &Observed,
) -> Result<Plan, Vec<PlanError>> {
    let mut errors = Vec::new();
    let mut owners: Vec<(&str, &str)> = Vec::new();
    let mut paths = BTreeMap::new();
    let mut exported: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, share) in shares {
        let (share_name, ds) = (name.as_str(), share.dataset.as_str());
        match observed.mounts.get(ds).cloned().flatten() {
            None => errors.push(PlanError::DatasetMissing {
                share: share_name.to_owned(),
                dataset: ds.to_owned(),
            }),
            Some(m) if !m.mountpoint.starts_with('/') => errors.push(PlanError::NoMountpoint {
                share: share_name.to_owned(),
                dataset: ds.to_owned(),
                mountpoint: m.mountpoint,
            }),
            Some(m) if !m.mounted => errors.push(PlanError::NotMounted {
                share: share_name.to_owned(),
                dataset: ds.to_owned(),
                mountpoint: m.mountpoint,
            }),
            Some(m) => {
                paths.insert(share_name.to_owned(), m.mountpoint);
            }
        }
        if share.nfs.is_some()
            && let Some(first) = exported.insert(ds, share_name)
        {
            errors.push(PlanError::DuplicateExport {
                first: first.to_owned(),
                second: share_name.to_owned(),
                dataset: ds.to_owned(),
            });
        }
        if let Some(owner) = &share.owner {
            owners.push((share_name, owner.as_str()));
        }
        if let Some(smb) = &share.smb {
            if smb.users.is_empty() && smb.read_only_users.is_empty() && !smb.guest {
                errors.push(PlanError::NobodyCanUse {
                    share: share_name.to_owned(),
                });
            }
            for user in smb.users.iter().chain(&smb.read_only_users) {
                match users.get(user) {
                    None => errors.push(PlanError::UnknownUser {
                        share: share_name.to_owned(),
                        user: user.as_str().to_owned(),
                    }),
                    Some(u) if u.smb_password_file.is_none() => {
                        errors.push(PlanError::NoSmbPassword {
                            share: share_name.to_owned(),
                            user: user.as_str().to_owned(),
                        });
                    }
                    Some(_) => {}
                }
            }
        }
    }

    let mut plan = Plan::default();
    let mut chowns = Vec::new();
    for (share, user) in owners {
        if !users.keys().any(|n| n.as_str() == user) {
            errors.push(PlanError::UnknownUser {
                share: share.to_owned(),
                user: user.to_owned(),
            });
            continue;
        }
        if !observed.unix_users.contains(user) {
            errors.push(PlanError::OwnerWithoutAccount {
                share: share.to_owned(),
                user: user.to_owned(),
            });
            continue;
        }
        let Some(path) = paths.get(share) else {
            continue;
        };
        let from = observed
            .owners
            .get(path)
            .copied()
            .unwrap_or(UnixIds { uid: 0, gid: 0 });
        let to = observed.unix_ids.get(user).copied();
        if to != Some(from) {
            chowns.push(Action::Chown {
                share: share.to_owned(),
                path: path.clone(),
                user: user.to_owned(),
                to,
                from,
            });
        }
    }
    // New users first (the shares may name them); password changes and removals last, once
    // the shares that stop naming a user are in force. Their undo puts the old NT hash
    // back, which needs the user's Unix account: a removed user's goes before the shares
    // step and comes back only after the shares' undo, so nothing that can fail but
    // other changes and removals comes after them.
    let mut changes = Vec::new();
    for (name, user) in users {
        let name = name.as_str();
        if user.smb_password_file.is_none() {
            continue;
        }
        if !observed.unix_users.contains(name) {
            errors.push(PlanError::NoUnixAccount {
                user: name.to_owned(),
            });
        }
        match observed.passwords.get(name) {
            Some(Ok(pw)) => {
                let current = observed.smb_users.get(name);
                if current != Some(&pw.nt_hash()) {
                    let action = Action::SetSmbPassword {
                        user: name.to_owned(),
                        new: current.is_none(),
                    };
                    match current {
                        None => plan.actions.push(action),
                        Some(old) => {
                            if let Ok(old) = NtHash::try_from(old.as_str()) {
                                plan.old_hashes.insert(name.to_owned(), old);
                            }
                            changes.push(action);
                        }
                    }
                    plan.passwords.insert(name.to_owned(), pw.clone());
                }
            }
            Some(Err(why)) => errors.push(PlanError::Secret {
                user: name.to_owned(),
                why: why.clone(),
            }),
            None => errors.push(PlanError::Secret {
                user: name.to_owned(),
                why: "its password file was not read".into(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for (user, hash) in &observed.smb_users {
        let configured = users.iter().find(|(n, _)| n.as_str() == user.as_str());
        match configured {
            Some((_, u)) if u.smb_password_file.is_some() => {}
            _ if observed.nas_users.contains(user) => {
                if let Ok(old) = NtHash::try_from(hash.as_str()) {
                    plan.old_hashes.insert(user.clone(), old);
                }
                changes.push(Action::RemoveSmbUser { user: user.clone() });
            }
            Some(_) => {}
            None => plan.unmanaged_smb_users.push(user.clone()),
        }
    }
    plan.actions.extend(chowns);

    let smb = render::smb_include(shares, &paths);
    if observed.smb_include.as_deref() != Some(smb.as_str()) {
        plan.previous
            .insert(SMB_INCLUDE_FILE.to_owned(), observed.smb_include.clone());
        plan.actions.push(Action::WriteFile {
            path: SMB_INCLUDE_FILE.to_owned(),
            contents: smb,
        });
        plan.actions.push(Action::ReloadSmb);
    }
    let exports = render::exports(shares, &paths);
    if observed.exports.as_deref() != Some(exports.as_str()) {
        plan.previous
            .insert(EXPORTS_FILE.to_owned(), observed.exports.clone());
        plan.actions.push(Action::WriteFile {
            path: EXPORTS_FILE.to_owned(),
            contents: exports,
        });
        plan.actions.push(Action::ReloadNfs);
    }
    plan.actions.extend(changes);
    Ok(plan)
}

/// A step that failed, what was done before it, and what the undo could not restore.
#[derive(Debug, thiserror::Error)]
#[error("{failed} failed after {done} of {total} steps: {source}{}", undo_note(.not_undone))]
pub struct ApplyError {
    pub failed: String,
    pub done: usize,
    pub total: usize,
    #[source]
    pub source: Box<OsError>,
    /// Steps the undo could not take back.
    pub not_undone: Vec<String>,
}

fn undo_note(not_undone: &[String]) -> String {
    if not_undone.is_empty() {
        "; the steps done were undone".to_owned()
    } else {
        format!("; not undone: {}", not_undone.join("; "))
    }
}

/// Makes the plan's changes in order. When one fails, the files written are put back (and
/// the services reloaded), users added are removed, changed and removed users get their
/// old NT hash back, and share roots get their old owners.
pub fn apply(os: &mut impl ShareOs, plan: &Plan) -> Result<Vec<Action>, ApplyError> {
    let mut done: Vec<&Action> = Vec::new();
    for action in &plan.actions {
        let result = match action {
            Action::SetSmbPassword { user, .. } => match plan.passwords.get(user) {
                Some(pw) => os.set_smb_password(user, pw),
                None => Ok(()),
            },
            Action::RemoveSmbUser { user } => os.remove_smb_user(user),
            Action::WriteFile { path, contents } => os.write_file(path, contents),
            Action::ReloadSmb => os.reload_smb(),
            Action::ReloadNfs => os.reload_nfs(),
            Action::Chown { path, user, to, .. } => match to {
                Some(ids) => os.chown(path, *ids),
                None => match os.unix_user(user) {
                    Ok(Some(ids)) => os.chown(path, ids),
                    Ok(None) => Err(OsError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(format!(
                            "user {user} has no Unix account to give it to"
                        )),
                    }),
                    Err(e) => Err(e),
                },
            },
        };
        match result {
            Ok(()) => {
                tracing::info!(%action, "share step done");
                done.push(action);
            }
            Err(source) => {
                tracing::warn!(%action, error = %source, "share step failed; undoing");
                let not_undone = undo(os, plan, &done, action);
                return Err(ApplyError {
                    failed: action.to_string(),
                    done: done.len(),
                    total: plan.actions.len(),
                    source: Box::new(source),
                    not_undone,
                });
            }
        }
    }
    Ok(plan.actions.clone())
}

fn undo(os: &mut impl ShareOs, plan: &Plan, done: &[&Action], failed: &Action) -> Vec<String> {
    let mut not_undone = Vec::new();
    let mut reload_smb = false;
    let mut reload_nfs = false;
    // A failed write or reload may have left the new file in place: put it back too.
    for action in done.iter().copied().chain(std::iter::once(failed)).rev() {
        match action {
            Action::SetSmbPassword { user, new: true } => {
                if let Err(e) = os.remove_smb_user(user) {
                    not_undone.push(format!("SMB user {user} stays ({e})"));
                }
            }
            Action::SetSmbPassword { user, new: false } | Action::RemoveSmbUser { user } => {
                if !done.contains(&action) {
                    continue;
                }
                let removed = matches!(action, Action::RemoveSmbUser { .. });
                let stays = if removed {
                    format!("SMB user {user} stays removed")
                } else {
                    format!("the SMB password of {user} stays changed")
                };
                match plan.old_hashes.get(user) {
                    Some(old) => {
                        if let Err(e) = os.restore_smb_user(user, old, removed) {
                            not_undone.push(format!("{stays} ({e})"));
                        }
                    }
                    None => not_undone.push(format!("{stays} (Samba held no NT hash for it)")),
                }
            }
            Action::WriteFile { path, .. } => {
                let before = plan
                    .previous
                    .get(path)
                    .cloned()
                    .flatten()
                    .unwrap_or_default();
                match os.write_file(path, &before) {
                    Ok(()) => {
                        reload_smb |= path == SMB_INCLUDE_FILE;
                        reload_nfs |= path == EXPORTS_FILE;
                    }
                    Err(e) => not_undone.push(format!("{path} keeps the new shares ({e})")),
                }
            }
            Action::Chown {
                share, path, from, ..
            } => {
                if done.contains(&action)
                    && let Err(e) = os.chown(path, *from)
                {
                    not_undone.push(format!(
                        "the root of share {share} ({path}) keeps its new owner ({e})"
                    ));
                }
            }
            Action::ReloadSmb | Action::ReloadNfs => {}
        }
    }
    if reload_smb && let Err(e) = os.reload_smb() {
        not_undone.push(format!("smbd was not reloaded with the old shares ({e})"));
    }
    if reload_nfs && let Err(e) = os.reload_nfs() {
        not_undone.push(format!("the old NFS exports were not reloaded ({e})"));
    }
    not_undone
}

/// Why a `stored share` run failed.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Os(#[from] OsError),
    #[error("the shares cannot be applied, nothing was changed:\n{}", list(.0))]
    Refused(Vec<PlanError>),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

fn list(errors: &[PlanError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Observes and plans. `nas_users` are the names stored has given Unix accounts
/// ([`crate::accounts::Accounts::names_with`]).
pub fn plan_on(
    os: &impl ShareOs,
    shares: &BTreeMap<Name, Share>,
    users: &BTreeMap<Name, NasUser>,
    nas_users: &BTreeSet<String>,
) -> Result<Plan, ShareError> {
    plan_after_accounts(os, shares, users, &BTreeSet::new(), nas_users)
}

/// [`plan_on`] as it will be once the Unix accounts of `accounts` exist (a plan shown
/// before the accounts step that creates them).
pub fn plan_after_accounts(
    os: &impl ShareOs,
    shares: &BTreeMap<Name, Share>,
    users: &BTreeMap<Name, NasUser>,
    accounts: &BTreeSet<String>,
    nas_users: &BTreeSet<String>,
) -> Result<Plan, ShareError> {
    let mut observed = observe(os, shares, users)?;
    observed.unix_users.extend(accounts.iter().cloned());
    observed.nas_users.clone_from(nas_users);
    plan(shares, users, &observed).map_err(ShareError::Refused)
}

/// Observes, plans and applies; returns the steps done.
pub fn converge(
    os: &mut impl ShareOs,
    shares: &BTreeMap<Name, Share>,
    users: &BTreeMap<Name, NasUser>,
    nas_users: &BTreeSet<String>,
) -> Result<Vec<Action>, ShareError> {
    let plan = plan_on(os, shares, users, nas_users)?;
    Ok(apply(os, &plan)?)
}

#[cfg(test)]
mod tests;
