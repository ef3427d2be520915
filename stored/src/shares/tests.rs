use super::*;
use appliance::Config;

const CONFIG: &str = r#"
version = 1

[storage.pools.tank]
vdevs = [{ layout = "single", disks = ["/dev/disk/by-id/virtio-a"] }]

[storage.users.alice]
smb_password_file = "/data/secrets/alice.smb"

[storage.users.bob]
smb_password_file = "/data/secrets/bob.smb"

[shares.media]
dataset = "tank/media"
nfs = { clients = [{ network = "192.168.1.0/24" }, { network = "10.0.0.0/8", options = ["rw", "async", "no_root_squash"] }] }
smb = { users = ["alice"], read_only_users = ["bob"] }

[shares.docs]
dataset = "tank/docs"
read_only = true
nfs = { clients = [{ network = "192.168.1.0/24", options = ["ro", "sync"] }] }
smb = { guest = true, browseable = false }
"#;

fn config(text: &str) -> Config {
    match appliance::load_str(text) {
        Ok(c) => c,
        Err(d) => panic!("{}", d.render(text, "test.toml", false)),
    }
}

fn os() -> FakeShareOs {
    FakeShareOs::default()
        .mounted("tank/media", "/mnt/tank/media")
        .mounted("tank/docs", "/mnt/tank/docs")
        .user("alice", "/data/secrets/alice.smb", "alice-pw")
        .user("bob", "/data/secrets/bob.smb", "bob pw")
}

/// As the daemon converges: the config's users are NAS users stored has given accounts.
fn converge_on(os: &mut FakeShareOs, c: &Config) -> Result<Vec<Action>, ShareError> {
    converge(os, &c.shares, &c.storage.users, &names(c, &[]))
}

/// The config's user names and `former` ones (removed from the config, still in the uid map).
fn names(c: &Config, former: &[&str]) -> BTreeSet<String> {
    c.storage
        .users
        .keys()
        .map(|n| n.as_str().to_owned())
        .chain(former.iter().map(|&n| n.to_owned()))
        .collect()
}

/// CONFIG with only the guest share and no SMB user left: `users` are its `[storage.users]`
/// tables, written out.
fn without_smb_users(users: &str) -> Config {
    config(&format!(
        "version = 1

[storage.pools.tank]
vdevs = [{{ layout = \"single\", disks = [\"/dev/disk/by-id/virtio-a\"] }}]

{users}
[shares.docs]
dataset = \"tank/docs\"
smb = {{ guest = true }}
"
    ))
}

#[test]
fn a_failed_later_password_change_puts_the_earlier_one_back() {
    let c = config(CONFIG);
    let mut os = os();
    converge_on(&mut os, &c).unwrap();
    let before = os.smb.clone();
    for (user, pw) in [("alice", "alice pw 2"), ("bob", "bob pw 2")] {
        os.secrets.insert(
            format!("/data/secrets/{user}.smb"),
            Password::new(pw.into()),
        );
    }
    os.log.clear();
    os.fail = Some("set password bob".into());
    let err = converge_on(&mut os, &c).unwrap_err();
    let ShareError::Apply(e) = &err else {
        panic!("{err}")
    };
    assert!(e.not_undone.is_empty(), "{err}");
    assert!(
        err.to_string().ends_with("the steps done were undone"),
        "{err}"
    );
    assert_eq!(os.log, ["set password alice", "restore alice"]);
    assert_eq!(os.smb, before, "alice's old password is not back");

    converge_on(&mut os, &c).unwrap();
    assert_eq!(
        os.smb["alice"],
        Password::new("alice pw 2".into()).nt_hash()
    );
}

#[test]
fn nas_users_the_config_gives_no_smb_password_leave_samba_and_a_failure_brings_them_back() {
    let c = config(CONFIG);
    let mut os = os();
    converge_on(&mut os, &c).unwrap();
    let before = os.smb.clone();
    os.smb.insert("carol".into(), "0".repeat(32));

    // alice stays a NAS user without an SMB password, bob leaves the config, carol was
    // never stored's: alice and bob go, carol stays.
    let next = without_smb_users("[storage.users.alice]\n");
    let plan_next = |os: &FakeShareOs| {
        plan_on(
            os,
            &next.shares,
            &next.storage.users,
            &names(&next, &["bob"]),
        )
        .unwrap()
    };
    let plan = plan_next(&os);
    let tail: Vec<String> = plan
        .actions
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        tail,
        [
            "remove SMB user alice (the config gives it no SMB password)",
            "remove SMB user bob (the config gives it no SMB password)",
        ]
    );
    assert_eq!(plan.unmanaged_smb_users, ["carol"]);

    // The second removal fails: the first user comes back with its old password.
    os.fail = Some("remove bob".into());
    os.log.clear();
    let err = apply(&mut os, &plan).unwrap_err();
    assert!(err.not_undone.is_empty(), "{err}");
    assert!(os.log.contains(&"restore alice".to_owned()), "{:?}", os.log);
    assert_eq!(os.smb["alice"], before["alice"]);
    assert_eq!(os.smb["bob"], before["bob"]);

    apply(&mut os, &plan).unwrap();
    assert_eq!(os.smb.keys().collect::<Vec<_>>(), ["carol"]);
    let again = plan_next(&os);
    assert!(
        !again
            .actions
            .iter()
            .any(|a| matches!(a, Action::RemoveSmbUser { .. })),
        "{:?}",
        again.actions
    );
}

#[test]
fn first_apply_writes_both_files_and_users_and_a_second_does_nothing() {
    let c = config(CONFIG);
    let mut os = os();
    converge_on(&mut os, &c).unwrap();
    assert_eq!(
        os.log,
        [
            "set password alice",
            "set password bob",
            &format!("write {SMB_INCLUDE_FILE}"),
            "reload smbd",
            &format!("write {EXPORTS_FILE}"),
            "exportfs -ra",
        ]
    );
    assert_eq!(
        os.files[EXPORTS_FILE],
        "# Generated by stored from appliance.toml; changes here are overwritten.\n\
         # share docs (dataset tank/docs)\n\
         /mnt/tank/docs 192.168.1.0/24(ro,sync)\n\
         # share media (dataset tank/media)\n\
         /mnt/tank/media 192.168.1.0/24(rw,sync,root_squash,no_subtree_check) \
         10.0.0.0/8(rw,async,no_root_squash)\n"
    );
    let smb = &os.files[SMB_INCLUDE_FILE];
    assert!(
        smb.contains(
            "[media]\n\tpath = /mnt/tank/media\n\tbrowseable = yes\n\tread only = yes\n\
             \twrite list = alice\n\tvalid users = alice bob\n"
        ),
        "{smb}"
    );
    assert!(
        smb.contains(
            "[docs]\n\tpath = /mnt/tank/docs\n\tbrowseable = no\n\tread only = yes\n\
             \tguest ok = yes\n"
        ),
        "{smb}"
    );
    assert_eq!(os.smb["alice"], Password::new("alice-pw".into()).nt_hash());

    os.log.clear();
    let again = converge_on(&mut os, &c).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert!(os.log.is_empty(), "{:?}", os.log);
}

#[test]
fn a_changed_password_is_set_again_and_nothing_else_moves() {
    let c = config(CONFIG);
    let mut os = os();
    converge_on(&mut os, &c).unwrap();
    os.log.clear();
    os.secrets.insert(
        "/data/secrets/bob.smb".into(),
        Password::new("new bob pw".into()),
    );
    let plan = plan_on(&os, &c.shares, &c.storage.users, &BTreeSet::new()).unwrap();
    assert_eq!(
        plan.actions,
        [Action::SetSmbPassword {
            user: "bob".into(),
            new: false
        }]
    );
    apply(&mut os, &plan).unwrap();
    assert_eq!(os.log, ["set password bob"]);
}

#[test]
fn a_share_on_an_unmounted_or_missing_dataset_is_refused_and_nothing_is_applied() {
    let c = config(CONFIG);
    let mut os = os();
    os.mounts.get_mut("tank/media").unwrap().mounted = false;
    os.mounts.remove("tank/docs");
    let err = converge_on(&mut os, &c).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(
            "share media: dataset tank/media is not mounted (mountpoint /mnt/tank/media)"
        ),
        "{text}"
    );
    assert!(
        text.contains("share docs: dataset tank/docs does not exist"),
        "{text}"
    );
    assert!(os.log.is_empty(), "{:?}", os.log);
    assert!(os.files.is_empty());
}

#[test]
fn a_dataset_without_a_mountpoint_is_refused() {
    let c = config(CONFIG);
    let mut os = os();
    os.mounts.get_mut("tank/docs").unwrap().mountpoint = "legacy".into();
    let Err(ShareError::Refused(errors)) = converge_on(&mut os, &c) else {
        panic!("not refused");
    };
    assert!(
        matches!(&errors[..], [PlanError::NoMountpoint { share, .. }] if share == "docs"),
        "{errors:?}"
    );
}

#[test]
fn users_need_a_unix_account_and_a_readable_password() {
    let c = config(CONFIG);
    let mut os = os();
    os.unix_users.remove("alice");
    os.secrets.remove("/data/secrets/bob.smb");
    let Err(ShareError::Refused(errors)) = converge_on(&mut os, &c) else {
        panic!("not refused");
    };
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(matches!(&errors[0], PlanError::NoUnixAccount { user } if user == "alice"));
    assert!(matches!(&errors[1], PlanError::Secret { user, .. } if user == "bob"));
    assert!(os.log.is_empty());
}

#[test]
fn a_failed_reload_puts_the_old_files_back_and_removes_the_users_it_added() {
    let c = config(CONFIG);
    let mut os = os();
    // An earlier generation: media only, alice already in Samba.
    let mut first = c.clone();
    first.shares.retain(|n, _| n.as_str() == "media");
    converge_on(&mut os, &first).unwrap();
    let before = os.files.clone();
    let smb_before = os.smb.clone();
    os.smb.remove("bob");
    let smb_before_without_bob = os.smb.clone();
    assert_ne!(smb_before, smb_before_without_bob);
    os.log.clear();

    os.fail = Some("exportfs -ra".into());
    let err = converge_on(&mut os, &c).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("reload NFS exports"), "{text}");
    assert!(text.contains("the steps done were undone"), "{text}");
    assert_eq!(os.files, before);
    assert_eq!(os.smb, smb_before_without_bob);
    assert_eq!(
        os.log,
        [
            "set password bob",
            &format!("write {SMB_INCLUDE_FILE}"),
            "reload smbd",
            &format!("write {EXPORTS_FILE}"),
            &format!("write {EXPORTS_FILE}"),
            &format!("write {SMB_INCLUDE_FILE}"),
            "remove bob",
            "reload smbd",
            "exportfs -ra",
        ]
    );
}

#[test]
fn samba_users_the_config_does_not_name_are_left_alone() {
    let c = config(CONFIG);
    let mut os = os();
    os.smb.insert("carol".into(), "0".repeat(32));
    let plan = plan_on(&os, &c.shares, &c.storage.users, &BTreeSet::new()).unwrap();
    assert_eq!(plan.unmanaged_smb_users, ["carol"]);
    apply(&mut os, &plan).unwrap();
    assert!(os.smb.contains_key("carol"));
}

#[test]
fn paths_with_blanks_are_quoted_in_exports() {
    let c = config(CONFIG);
    let mut os = os();
    os.mounts.get_mut("tank/docs").unwrap().mountpoint = "/mnt/my docs".into();
    converge_on(&mut os, &c).unwrap();
    assert!(
        os.files[EXPORTS_FILE].contains("\n\"/mnt/my docs\" 192.168.1.0/24(ro,sync)\n"),
        "{}",
        os.files[EXPORTS_FILE]
    );
}

#[test]
fn an_owner_gets_the_share_root_and_a_failed_step_gives_it_back() {
    let text = format!(
        "{CONFIG}\n[shares.alices]\ndataset = \"tank/alice\"\nowner = \"alice\"\nsmb = {{ users = [\"alice\"] }}\n"
    );
    let c = config(&text);
    let mut os = os().mounted("tank/alice", "/mnt/tank/alice");
    let alice = os.unix_users["alice"];
    let plan = plan_on(&os, &c.shares, &c.storage.users, &BTreeSet::new()).unwrap();
    assert!(
        plan.actions.contains(&Action::Chown {
            share: "alices".into(),
            path: "/mnt/tank/alice".into(),
            user: "alice".into(),
            to: Some(alice),
            from: UnixIds { uid: 0, gid: 0 },
        }),
        "{:?}",
        plan.actions
    );
    // exportfs fails: the root goes back to root, with the files and users.
    os.fail = Some("exportfs -ra".into());
    converge_on(&mut os, &c).unwrap_err();
    assert_eq!(
        os.owner("/mnt/tank/alice").unwrap(),
        UnixIds { uid: 0, gid: 0 }
    );
    assert!(os.smb.is_empty(), "{:?}", os.smb);
    let log = os.log.join("\n");
    assert!(
        log.contains(&format!("chown /mnt/tank/alice {alice}")),
        "{log}"
    );
    assert!(
        log.ends_with(
            "chown /mnt/tank/alice 0:0\nremove bob\nremove alice\nreload smbd\nexportfs -ra"
        ),
        "{log}"
    );

    converge_on(&mut os, &c).unwrap();
    assert_eq!(os.owner("/mnt/tank/alice").unwrap(), alice);
    os.log.clear();
    assert!(converge_on(&mut os, &c).unwrap().is_empty());
    assert!(os.log.is_empty(), "{:?}", os.log);
}

#[test]
fn an_owner_needs_a_unix_account() {
    let text = format!(
        "{CONFIG}\n[storage.users.carol]\n\n[shares.carols]\ndataset = \"tank/media\"\nowner = \"carol\"\nsmb = {{ guest = true }}\n"
    );
    let c = config(&text);
    let Err(ShareError::Refused(errors)) = converge_on(&mut os(), &c) else {
        panic!("not refused");
    };
    assert!(
        errors.iter().any(|e| e.to_string()
            == "share carols: owner carol has no Unix account on this box (getent passwd carol finds nothing)"),
        "{errors:?}"
    );
    // Shown before the accounts step that makes carol's account: a chown to come.
    let os = os();
    let plan = plan_after_accounts(
        &os,
        &c.shares,
        &c.storage.users,
        &BTreeSet::from(["carol".to_owned()]),
        &BTreeSet::new(),
    )
    .unwrap();
    let shown: Vec<String> = plan.actions.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(&"chown the root of share carols (/mnt/tank/media) to carol (from 0:0; its account is made first)".to_owned()),
        "{shown:?}"
    );
}

#[test]
fn root_squash_false_exports_no_root_squash_unless_a_client_chose() {
    let text = r#"
version = 1
[storage.pools.tank]
vdevs = [{ layout = "single", disks = ["/dev/disk/by-id/virtio-a"] }]
[shares.media]
dataset = "tank/media"
nfs = { root_squash = false, clients = [{ network = "192.168.1.0/24" }, { network = "10.0.0.0/8", options = ["rw", "async"] }, { network = "10.1.0.0/16", options = ["rw", "root_squash"] }] }
"#;
    let c = config(text);
    let mut os = os();
    converge_on(&mut os, &c).unwrap();
    assert!(
        os.files[EXPORTS_FILE].ends_with(
            "/mnt/tank/media 192.168.1.0/24(rw,sync,no_root_squash,no_subtree_check) \
             10.0.0.0/8(rw,async,no_root_squash) 10.1.0.0/16(rw,root_squash)\n"
        ),
        "{}",
        os.files[EXPORTS_FILE]
    );
}

#[test]
fn password_changes_come_last_so_a_failed_reload_changed_none() {
    let c = config(CONFIG);
    let mut os = os();
    converge_on(&mut os, &c).unwrap();
    os.secrets.insert(
        "/data/secrets/bob.smb".into(),
        Password::new("new bob pw".into()),
    );
    // A change that also rewrites the exports, which fail to reload.
    let mut next = c.clone();
    next.shares.retain(|n, _| n.as_str() == "media");
    os.log.clear();
    os.fail = Some("exportfs -ra".into());
    let err = converge_on(&mut os, &next).unwrap_err().to_string();
    assert!(err.contains("the steps done were undone"), "{err}");
    assert!(
        !os.log.contains(&"set password bob".to_owned()),
        "{:?}",
        os.log
    );
    assert_eq!(os.smb["bob"], Password::new("bob pw".into()).nt_hash());
    let plan = plan_on(&os, &next.shares, &next.storage.users, &BTreeSet::new()).unwrap();
    assert_eq!(
        plan.actions.last(),
        Some(&Action::SetSmbPassword {
            user: "bob".into(),
            new: false
        })
    );
}
