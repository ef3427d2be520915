//! NFS and SMB shares made by `stored share apply` on real ZFS, kernel nfsd and Samba, in one
//! boot: an NFS client in a network namespace of the guest (a veth pair), smbclient as a
//! user of the config (its password set through pdbedit, then changed, and a change put
//! back when a later user's pdbedit fails; users leaving the config leave Samba's database
//! too), a reload while
//! clients write (NFS, SMB sessions opened one after another, and one SMB session held
//! across the reload), and a refused share. The NAS user's Unix account is stored's (a systemd
//! user record under /run/userdb, its uid kept on /data), made by the apply, taken back when
//! the apply is refused, and removed once the user leaves the config; it owns the share's
//! root (`owner`).

use std::fs;
use std::time::Duration;

use crate::BOOT_TIMEOUT;
use crate::harness::{Options, Vm};

const BASE: &str = r#"
version = 1

[storage.pools.tank]
vdevs = [{ layout = "single", disks = ["DISK"] }]

[storage.datasets."tank/media"]
[storage.datasets."tank/docs"]
[storage.datasets."tank/off"]
[storage.datasets."tank/pub"]

[storage.users.alice]
smb_password_file = "/data/secrets/alice.smb"

[shares.media]
dataset = "tank/media"
owner = "alice"
nfs = { root_squash = false, clients = [{ network = "10.99.0.0/24" }] }
smb = { users = ["alice"] }

[shares.pub]
dataset = "tank/pub"
nfs = { clients = [{ network = "10.99.0.0/24" }] }
"#;

/// A second share, added while a client writes to the first.
const DOCS: &str = r#"
[shares.docs]
dataset = "tank/docs"
read_only = true
nfs = { clients = [{ network = "10.99.0.0/24" }] }
smb = { read_only_users = ["alice"] }
"#;

/// A share on a dataset the test unmounts, and a new user whose account the refused apply
/// must take back.
const OFF: &str = r#"
[shares.off]
dataset = "tank/off"
nfs = { clients = [{ network = "10.99.0.0/24" }] }

[storage.users.bob]
"#;

/// One SMB session held across a reload: a single smbclient, fed a `put` every half second
/// on its stdin until /run/writers.stop exists; its output, the number of puts sent and its
/// exit status go to /run/smb-held.*.
const HELD_SMB: &str = r#"#!/bin/sh
rm -f /run/smb-held.out /run/smb-held.sent /run/smb-held.pid
feed() {
    i=0
    while [ ! -e /run/writers.stop ]; do
        echo "put /etc/services held.$((i % 4))"
        i=$((i + 1))
        echo "$i" > /run/smb-held.sent
        sleep 0.5
    done
    echo quit
}
feed | sh -c 'echo $$ > /run/smb-held.pid; exec smbclient //127.0.0.1/media -U "alice%alice pw 1"' \
    > /run/smb-held.out 2>&1
echo "exit $?" >> /run/smb-held.out
"#;

/// The NFS client: a network namespace joined to the guest by a veth pair. `ip netns exec`
/// gives each command its own mount namespace, so a mount lives within one command.
const CLIENT: &str = "ip netns exec client";

struct Guest<'a> {
    vm: &'a Vm,
    bin: String,
}

impl Guest<'_> {
    fn config(&self, name: &str, text: &str) -> String {
        let host = self.vm.dir.join(format!("{name}.toml"));
        fs::write(&host, text).unwrap();
        let guest = format!("/tmp/{name}.toml");
        self.vm.copy_in(&host, &guest);
        guest
    }

    /// Runs `stored ARGS`; returns (exit code, stdout, stderr).
    fn stored(&self, args: &str) -> (i32, String, String) {
        let out = self.vm.ssh(&format!("{} {args}", self.bin));
        let r = (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("$ stored {args}\n-> {}\n{}{}", r.0, r.1, r.2);
        r
    }

    fn ok(&self, args: &str) -> String {
        let (code, out, err) = self.stored(args);
        assert_eq!(code, 0, "stored {args}: {out}{err}");
        out
    }
}

#[test]
fn stored_shares_datasets_over_nfs_and_smb_and_reloads_under_a_writing_client() {
    let options = Options::default().disk("shares-a", 512);
    let disk = options.disks[0].by_id();
    let mut vm = Vm::boot_with("shares", options);
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    vm.wait_until(&format!("test -b {disk}"), Duration::from_secs(60));
    // Pools mount under /mnt, which the read-only root does not provide yet (see the
    // storage test).
    vm.sh("modprobe zfs && mount -t tmpfs -o mode=755 tmpfs /mnt");
    vm.sh(
        "mkdir -p /data/secrets && printf 'alice pw 1\\n' > /data/secrets/alice.smb && \
         chmod 600 /data/secrets/alice.smb",
    );
    let bin = match std::env::var_os("STORED_BIN") {
        Some(host) => {
            vm.copy_in(std::path::Path::new(&host), "/tmp/stored");
            "/tmp/stored".to_owned()
        }
        None => "stored".to_owned(),
    };
    let g = Guest { vm: &vm, bin };
    let base = BASE.replace("DISK", &disk);
    let cfg = g.config("shares", &base);
    g.ok(&format!("apply --config {cfg}"));

    let plan = g.ok(&format!("share plan --config {cfg}"));
    assert!(
        plan.contains("create Unix account alice (uid 2000)"),
        "{plan}"
    );
    assert!(plan.contains("add SMB user alice"), "{plan}");
    assert!(
        plan.contains("chown the root of share media (/mnt/tank/media) to alice"),
        "{plan}"
    );
    assert!(vm.ssh("getent passwd alice").status.code() == Some(2));
    let applied = g.ok(&format!("share apply --config {cfg}"));
    assert!(applied.contains("done: reload NFS exports"), "{applied}");
    // The first uid of the range, from a record nss-systemd serves on the read-only root.
    assert_eq!(
        vm.sh("getent passwd alice").trim(),
        "alice:x:2000:2000:NAS user alice:/nonexistent:/usr/sbin/nologin"
    );
    let again = g.ok(&format!("share apply --config {cfg}"));
    assert_eq!(again.trim(), "nothing to do");
    let exports = vm.sh("cat /etc/exports.d/appliance.exports; exportfs -v");
    eprintln!("{exports}");
    assert!(exports.contains("/mnt/tank/media"), "{exports}");
    // root_squash = false on the share: the client line says so.
    assert!(
        exports.contains("10.99.0.0/24(rw,sync,no_root_squash,no_subtree_check)"),
        "{exports}"
    );
    assert_eq!(vm.sh("pdbedit -L").trim(), "alice:2000:NAS user alice");
    // The share's root is alice's (the NFS client's root writes too: no_root_squash).
    assert_eq!(
        vm.sh("stat -c %U:%G:%a /mnt/tank/media").trim(),
        "alice:alice:755"
    );

    // NFS from the client namespace: write a file, read it back, and see it on the dataset.
    vm.sh(
        "ip netns add client && ip link add nfs0 type veth peer name nfs1 && \
         ip link set nfs1 netns client && ip addr add 10.99.0.1/24 dev nfs0 && \
         ip link set nfs0 up && ip -n client addr add 10.99.0.2/24 dev nfs1 && \
         ip -n client link set nfs1 up && ip -n client link set lo up && mkdir -p /run/nfs-client",
    );
    // netd's firewall drops input from links in no zone of the config.
    vm.admit("nfs0");
    let nfs = vm.sh(&format!(
        "{CLIENT} sh -ec 'mount -t nfs4 10.99.0.1:/mnt/tank/media /run/nfs-client; \
         echo over-nfs > /run/nfs-client/nfs.txt; cat /run/nfs-client/nfs.txt; \
         umount /run/nfs-client'"
    ));
    assert_eq!(nfs.trim(), "over-nfs");
    assert_eq!(vm.sh("cat /mnt/tank/media/nfs.txt").trim(), "over-nfs");

    // The default root_squash: the client's root writes as nobody where everyone may write
    // (a share root of mode 1777), and nowhere else. The client here is the guest's own
    // kernel, whose fs.protected_regular (2, systemd's default is 1) refuses an O_CREAT
    // open of a file in a sticky world-writable directory owned by neither the caller nor
    // the directory's owner: the server creates the file as nobody, then the client's open
    // of it fails with EACCES. That is the client's policy, so it is off for this write.
    vm.sh("chmod 1777 /mnt/tank/pub && mkdir -m 755 /mnt/tank/pub/rootonly");
    let squashed = vm.ssh(&format!(
        "protected=$(sysctl -n fs.protected_regular); sysctl -q fs.protected_regular=0; \
         {CLIENT} sh -c 'mount -t nfs4 10.99.0.1:/mnt/tank/pub /run/nfs-client || exit 9; \
         echo squashed > /run/nfs-client/root.txt; echo create=$?; \
         stat -c %u:%g /run/nfs-client/root.txt; \
         if mkdir /run/nfs-client/d 2>/dev/null; then echo mkdir=0; fi; \
         if touch /run/nfs-client/rootonly/x 2>/dev/null; then echo WROTE-AS-ROOT; fi; \
         umount /run/nfs-client'; sysctl -q fs.protected_regular=$protected"
    ));
    let squashed_out = format!(
        "{}{}",
        String::from_utf8_lossy(&squashed.stdout),
        String::from_utf8_lossy(&squashed.stderr)
    );
    eprintln!("root_squash over NFS:\n{squashed_out}");
    assert!(
        squashed_out.contains("create=0\n65534:65534\nmkdir=0"),
        "{squashed_out}"
    );
    assert!(!squashed_out.contains("WROTE-AS-ROOT"), "{squashed_out}");
    assert_eq!(
        vm.sh("stat -c %u:%g /mnt/tank/pub/root.txt").trim(),
        "65534:65534"
    );

    // SMB as alice: read what NFS wrote, write a file.
    let smb = vm.sh(
        "cd /tmp && echo over-smb > smb.txt && \
         smbclient //127.0.0.1/media -U 'alice%alice pw 1' -c 'put smb.txt; get nfs.txt nfs-got.txt' \
         && cat /tmp/nfs-got.txt",
    );
    assert!(smb.contains("over-nfs"), "{smb}");
    assert_eq!(vm.sh("cat /mnt/tank/media/smb.txt").trim(), "over-smb");
    // Samba wrote it as alice's account.
    assert_eq!(
        vm.sh("stat -c %U:%u /mnt/tank/media/smb.txt").trim(),
        "alice:2000"
    );
    let wrong = vm.ssh("smbclient //127.0.0.1/media -U 'alice%wrong' -c ls");
    assert!(!wrong.status.success(), "a wrong password got in");

    // A new password in the file: pdbedit -a changes the existing user's, the old one is
    // refused, and nothing else moves.
    vm.sh("printf 'alice pw 2\\n' > /data/secrets/alice.smb");
    let changed = g.ok(&format!("share apply --config {cfg}"));
    assert_eq!(
        changed.trim(),
        "done: change the SMB password of alice",
        "{changed}"
    );
    let old = vm.ssh("smbclient //127.0.0.1/media -U 'alice%alice pw 1' -c ls");
    assert!(!old.status.success(), "the old password still got in");
    vm.sh("printf 'alice pw 1\\n' > /data/secrets/alice.smb");
    g.ok(&format!("share apply --config {cfg}"));

    // bob joins with an SMB password; then both passwords change and bob's pdbedit fails
    // (a wrapper ahead of the real one in PATH): alice's change, done first, is taken back
    // with her old NT hash, so her old password works again and the new one does not.
    vm.sh("printf 'bob pw 1\\n' > /data/secrets/bob.smb && chmod 600 /data/secrets/bob.smb");
    let with_bob = g.config(
        "shares-bob",
        &format!("{base}\n[storage.users.bob]\nsmb_password_file = \"/data/secrets/bob.smb\"\n"),
    );
    let added = g.ok(&format!("share apply --config {with_bob}"));
    assert!(added.contains("done: add SMB user bob"), "{added}");
    let wrapper = vm.dir.join("pdbedit-failing-for-bob");
    fs::write(
        &wrapper,
        "#!/bin/sh\n[ \"$*\" = '-a -t -u bob' ] && { echo injected failure >&2; exit 1; }\n\
         exec /usr/bin/pdbedit \"$@\"\n",
    )
    .unwrap();
    vm.sh("mkdir -p /tmp/failing");
    vm.copy_in(&wrapper, "/tmp/failing/pdbedit");
    vm.sh(
        "chmod 755 /tmp/failing/pdbedit && printf 'alice pw 3\\n' > /data/secrets/alice.smb && \
         printf 'bob pw 2\\n' > /data/secrets/bob.smb",
    );
    let failed = vm.ssh(&format!(
        "PATH=/tmp/failing:$PATH {} share apply --config {with_bob}",
        g.bin
    ));
    let failed_err = String::from_utf8_lossy(&failed.stderr);
    eprintln!("share apply with bob's pdbedit failing:\n{failed_err}");
    assert_eq!(failed.status.code(), Some(1), "{failed_err}");
    assert!(
        failed_err.contains("cannot set the SMB password of bob")
            && failed_err.contains("the steps done were undone"),
        "{failed_err}"
    );
    let restored = vm.ssh("smbclient //127.0.0.1/media -U 'alice%alice pw 1' -c ls");
    assert!(
        restored.status.success(),
        "alice's old password was not put back: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let new = vm.ssh("smbclient //127.0.0.1/media -U 'alice%alice pw 3' -c ls");
    assert!(!new.status.success(), "the undone password still got in");

    // bob leaves the config: his Unix account goes, and so does his entry in Samba's
    // database, which a later account of the same name would otherwise log in with.
    vm.sh("printf 'alice pw 1\\n' > /data/secrets/alice.smb");
    let left = g.ok(&format!("share apply --config {cfg}"));
    assert!(left.contains("done: remove Unix account bob"), "{left}");
    assert!(
        left.contains("done: remove SMB user bob (the config gives it no SMB password)"),
        "{left}"
    );
    assert_eq!(vm.sh("pdbedit -L").trim(), "alice:2000:NAS user alice");

    // A reload (another share added) while the NFS client and an SMB session write in a loop:
    // no write may fail. Both stop once /run/writers.stop exists (a local file: the NFS
    // client would see one on the share only after its attribute cache expires).
    vm.sh(&format!(
        "rm -f /run/nfs-writer.* /run/writers.stop; \
         nohup {CLIENT} sh -c 'mount -t nfs4 10.99.0.1:/mnt/tank/media /run/nfs-client || exit 9; \
           i=0; while [ ! -e /run/writers.stop ]; do \
             dd if=/dev/zero of=/run/nfs-client/loop.$((i%4)) bs=64k count=4 conv=fsync 2>/dev/null \
               || {{ echo fail $i; exit 1; }}; i=$((i+1)); done; \
           echo ok $i; umount /run/nfs-client' < /dev/null > /run/nfs-writer.out 2>&1 &"
    ));
    vm.sh(
        "nohup sh -c 'i=0; while [ ! -e /run/writers.stop ]; do \
           smbclient //127.0.0.1/media -U \"alice%alice pw 1\" -c \"put /etc/services smb-loop.txt\" \
             >/dev/null 2>&1 || { echo fail $i; exit 1; }; i=$((i+1)); done; echo ok $i' \
           < /dev/null > /run/smb-writer.out 2>&1 &",
    );
    // And one SMB session held across the reload: a single smbclient, fed a `put` every
    // half second on its stdin, over one TCP connection from start to end.
    let script = vm.dir.join("smb-held.sh");
    fs::write(&script, HELD_SMB).unwrap();
    vm.copy_in(&script, "/run/smb-held.sh");
    vm.sh("nohup sh /run/smb-held.sh < /dev/null > /dev/null 2>&1 &");
    let puts = |vm: &Vm| -> usize {
        vm.sh("grep -c '^putting file' /run/smb-held.out || true")
            .trim()
            .parse()
            .unwrap()
    };
    let held_port = |vm: &Vm| -> String {
        vm.sh("ss -Htnp state established '( dport = :445 )' | \
             grep \"pid=$(cat /run/smb-held.pid),\" | awk '{print $3}'")
    };
    vm.wait_until(
        "[ \"$(grep -c '^putting file' /run/smb-held.out)\" -ge 2 ]",
        Duration::from_secs(60),
    );
    let port_before = held_port(&vm);
    assert!(
        !port_before.trim().is_empty(),
        "no connection of the held smbclient: {}",
        vm.sh("cat /run/smb-held.out; ss -tnp")
    );
    vm.wait_until("test -e /mnt/tank/media/loop.1", Duration::from_secs(60));
    let cfg2 = g.config("shares-docs", &format!("{base}{DOCS}"));
    let reload = g.ok(&format!("share apply --config {cfg2}"));
    assert!(reload.contains("reload smbd"), "{reload}");
    assert!(reload.contains("reload NFS exports"), "{reload}");
    let at_reload = puts(&vm);
    // Let the writers run on past the reload before stopping them.
    vm.wait_until(
        &format!(
            "[ \"$(grep -c '^putting file' /run/smb-held.out)\" -ge {} ]",
            at_reload + 4
        ),
        Duration::from_secs(60),
    );
    assert_eq!(
        held_port(&vm),
        port_before,
        "the held SMB session is not on the connection it started on"
    );
    vm.sh("sleep 2; touch /run/writers.stop");
    let held = vm.wait_until("grep '^exit' /run/smb-held.out", Duration::from_secs(60));
    let out = vm.sh("cat /run/smb-held.out");
    let sent: usize = vm.sh("cat /run/smb-held.sent").trim().parse().unwrap();
    eprintln!(
        "held SMB session: {sent} puts, {} before the reload returned, {}",
        at_reload,
        held.trim()
    );
    assert_eq!(held.trim(), "exit 0", "{out}");
    assert!(!out.contains("NT_STATUS"), "{out}");
    assert_eq!(puts(&vm), sent, "a put of the held session failed:\n{out}");
    let nfs_writer = vm.wait_until(
        "grep -E '^(ok|fail)' /run/nfs-writer.out",
        Duration::from_secs(120),
    );
    let smb_writer = vm.wait_until(
        "grep -E '^(ok|fail)' /run/smb-writer.out",
        Duration::from_secs(120),
    );
    eprintln!("NFS writer: {nfs_writer}SMB writer: {smb_writer}");
    assert!(nfs_writer.starts_with("ok"), "NFS writer: {nfs_writer}");
    assert!(smb_writer.starts_with("ok"), "SMB writer: {smb_writer}");

    // The new read-only share: readable over both, writable over neither.
    vm.sh("echo doc > /mnt/tank/docs/readme.txt");
    let docs = vm.sh(&format!(
        "{CLIENT} sh -ec 'mount -t nfs4 10.99.0.1:/mnt/tank/docs /run/nfs-client; \
         cat /run/nfs-client/readme.txt; \
         if touch /run/nfs-client/nope 2>/dev/null; then echo WROTE; fi; umount /run/nfs-client'"
    ));
    assert_eq!(docs.trim(), "doc");
    let smb_docs =
        vm.ssh("cd /tmp && smbclient //127.0.0.1/docs -U 'alice%alice pw 1' -c 'put smb.txt'");
    let smb_docs_out = format!(
        "{}{}",
        String::from_utf8_lossy(&smb_docs.stdout),
        String::from_utf8_lossy(&smb_docs.stderr)
    );
    assert!(
        smb_docs_out.contains("NT_STATUS_ACCESS_DENIED"),
        "{smb_docs_out}"
    );

    // A share on an unmounted dataset is refused, naming it, and nothing changes.
    vm.sh("zfs unmount tank/off");
    let before = vm.sh("cat /run/appliance/shares/*; exportfs -v; ls -l /run/userdb");
    let cfg3 = g.config("shares-off", &format!("{base}{DOCS}{OFF}"));
    let (code, _, err) = g.stored(&format!("share apply --config {cfg3}"));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("share off: dataset tank/off is not mounted"),
        "{err}"
    );
    // bob's account was made before the shares were checked, and taken back.
    assert_eq!(
        vm.sh("cat /run/appliance/shares/*; exportfs -v; ls -l /run/userdb"),
        before
    );
    assert_eq!(vm.ssh("getent passwd bob").status.code(), Some(2));

    // alice leaves the config: her account goes, her files keep uid 2000, which stays
    // hers in the map (a later user gets another).
    let without = base
        .split("[storage.users.alice]")
        .next()
        .unwrap()
        .to_owned();
    let cfg4 = g.config("shares-none", &without);
    let removed = g.ok(&format!("share apply --config {cfg4}"));
    assert!(
        removed.contains("done: remove Unix account alice (uid 2000"),
        "{removed}"
    );
    assert!(removed.contains("done: remove SMB user alice"), "{removed}");
    assert_eq!(vm.sh("pdbedit -L").trim(), "");
    assert_eq!(vm.ssh("getent passwd alice").status.code(), Some(2));
    assert_eq!(vm.sh("stat -c %u /mnt/tank/media/smb.txt").trim(), "2000");
    assert!(
        vm.sh("cat /data/stored/accounts.json")
            .contains("\"alice\": 2000")
    );

    let status = vm.power_off(crate::POWER_OFF_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
}
