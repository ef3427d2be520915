#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! VM tests: the real image booted under QEMU TCG with OVMF. Run with `cargo xtask vm-test`
//! (it builds the image when there is none); the `vm` feature keeps them out of
//! `cargo test --workspace` until CI can afford them.

mod bench_net;
mod bench_storage;
mod boot_profile;
mod capabilities;
mod harness;
mod ota;
mod ota_power;
mod replication;
mod shares;
mod storage;
mod storage_daemon;
mod units;
mod vlan;
mod wireguard;
mod zpool;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek as _, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::Vm;
use image::bootstate::{self, BootEnv, BootState, Slot};
use image::disk;

/// TCG boots in about 15 s here; the margin covers a loaded CI machine.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
pub(crate) const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// The `key=value` fields of the boot report line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

#[test]
fn boots_to_multi_user_with_a_read_only_root_and_data_kept_across_a_reboot() {
    let mut vm = Vm::boot_with("boot", harness::Options::default().lan_client());
    let line = vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    let booted = vm.uptime();
    eprintln!("boot report after {:.1}s: {line}", booted.as_secs_f64());
    let f = fields(&line);
    assert_eq!(f.get("slot"), Some(&"A"), "{line}");
    assert_eq!(f.get("root"), Some(&"ro"), "root must be read-only: {line}");
    assert_eq!(f.get("rootfs"), Some(&"squashfs"), "{line}");
    assert_eq!(
        f.get("data"),
        Some(&"ext4"),
        "/data must be mounted: {line}"
    );
    assert_eq!(f.get("failed"), Some(&"none"), "failed units: {line}");
    vm.wait_for_line("login:", Duration::from_secs(30));
    our_units_are_running(&vm);
    units::the_daemons_run_hardened_and_netd_owns_the_network(&mut vm, "lan1");
    dnsd_serves_under_its_sandbox(&vm, "lan1");
    let machine_id = vm.sh("cat /etc/machine-id");
    assert_eq!(
        vm.sh("cat /data/machine-id/machine-id"),
        machine_id,
        "the machine-id is not the one kept on /data"
    );
    let mnt = vm.sh("findmnt -no FSTYPE /mnt");
    assert_eq!(mnt.trim(), "tmpfs", "/mnt must be a writable tmpfs");

    // The same facts seen from a shell, and /data keeping a file across a reboot.
    let mount = |target: &str| -> Vec<String> {
        let out = vm.sh(&format!("findmnt -no FSTYPE,OPTIONS {target}"));
        out.split_whitespace().map(str::to_owned).collect()
    };
    let root = mount("/");
    assert!(
        root[0] == "squashfs" && root[1].starts_with("ro,"),
        "/: {root:?}"
    );
    let data = mount("/data");
    assert!(
        data[0] == "ext4" && data[1].starts_with("rw,"),
        "/data: {data:?}"
    );
    let touch = vm.ssh("touch /probe");
    assert!(!touch.status.success(), "the root is writable");
    assert!(
        String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"),
        "{touch:?}"
    );
    // The zfs module is built by the image (zfs-dkms is not in the root) and must load
    // from the read-only root with the modules of the kernel it was built against.
    let zfs = vm.ssh("modprobe zfs && cat /sys/module/zfs/version && zfs version");
    let zfs_out = String::from_utf8_lossy(&zfs.stdout);
    assert!(
        zfs.status.success() && zfs_out.contains("zfs-kmod-"),
        "modprobe zfs failed ({}): stdout {zfs_out} stderr {}",
        zfs.status,
        String::from_utf8_lossy(&zfs.stderr)
    );
    eprintln!(
        "zfs loaded: {}",
        zfs_out.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    vm.sh("echo kept > /data/probe && sync");
    // The reboot drops the SSH connection, so its status says nothing.
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_nth_line("APPLIANCE-BOOT-OK", 2, BOOT_TIMEOUT);
    assert_eq!(
        vm.resets(),
        1,
        "the guest did not reset on `systemctl reboot`"
    );
    let rebooted = vm.uptime();
    assert_eq!(vm.sh("cat /data/probe").trim(), "kept");
    assert_eq!(
        vm.sh("cat /etc/machine-id"),
        machine_id,
        "the machine-id changed across a reboot"
    );

    let status = vm.power_off(POWER_OFF_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
    assert!(
        vm.console().contains("reboot: Power down"),
        "the guest did not shut down cleanly"
    );
    eprintln!(
        "booted in {:.1}s, rebooted by {:.1}s, powered off at {:.1}s",
        booted.as_secs_f64(),
        rebooted.as_secs_f64(),
        vm.uptime().as_secs_f64()
    );
}

/// The units image/overlay installs (drop-in directories aside).
fn overlay_units() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/overlay/usr/lib/systemd/system");
    let mut units: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).unwrap())
        })
        .collect();
    units.sort();
    units
}

/// Every unit of the overlay is in the guest, loaded, enabled when it has an [Install]
/// section, and running (or finished well, for oneshots and skipped conditions);
/// appliance-healthy.target is reached. Prints the boot time and dnsd's exposure.
fn our_units_are_running(vm: &Vm) {
    // Returns once the boot job queue is empty, whatever the outcome, which is checked below.
    let state = vm.ssh("systemctl is-system-running --wait");
    eprintln!(
        "system state after {:.1}s: {}",
        vm.uptime().as_secs_f64(),
        String::from_utf8_lossy(&state.stdout).trim()
    );
    eprintln!("{}", vm.sh("systemd-analyze time").trim());
    let units = overlay_units();
    assert!(units.iter().any(|(n, _)| n == "dnsd.service"));
    let mut wrong = Vec::new();
    for (unit, text) in &units {
        let show = vm.sh(&format!(
            "systemctl show -p LoadState,ActiveState,UnitFileState,Result,FragmentPath {unit}"
        ));
        let p = fields_by_line(&show);
        let get = |k: &str| p.get(k).map_or("", String::as_str).to_owned();
        // /lib is /usr/lib (merged /usr), and systemd names whichever it found first.
        let fragment = format!("/lib/systemd/system/{unit}");
        let installable = text.contains("[Install]");
        let running = get("ActiveState") == "active"
            || (get("ActiveState") == "inactive" && get("Result") == "success");
        if get("LoadState") != "loaded"
            || !get("FragmentPath").ends_with(&fragment)
            || (installable && get("UnitFileState") != "enabled")
            || !running
        {
            wrong.push(format!("{unit}: {}", show.replace('\n', " ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "units not installed, enabled and running:\n{}\n{}",
        wrong.join("\n"),
        vm.ssh("systemctl --failed --no-pager; journalctl -b -u dnsd --no-pager | tail -30")
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect::<String>()
    );
    vm.sh("systemctl is-active appliance-healthy.target");
    eprintln!("all {} units of the overlay running", units.len());
    let security = vm.sh("systemd-analyze security --no-pager dnsd.service");
    let overall = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no exposure line");
    eprintln!("dnsd.service: {}", overall.trim());
}

/// `Key=value` lines as a map.
fn fields_by_line(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// dnsd runs as its own user with only its capabilities, answers a client on the LAN (a
/// namespace holding the client NIC of the LAN hub, leased an address by netd), and writes
/// its query log under /data.
/// `lan_ns`: the network namespace of a LAN client that already holds a lease.
fn dnsd_serves_under_its_sandbox(vm: &Vm, lan_ns: &str) {
    let pid = vm.sh("systemctl show -p MainPID --value dnsd");
    let status = vm.sh(&format!("cat /proc/{}/status", pid.trim()));
    let line = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("Uid:").contains("901"),
        "dnsd is not user dnsd: {}",
        line("Uid:")
    );
    // CAP_NET_BIND_SERVICE (10), nothing else.
    assert!(
        line("CapEff:").ends_with("0000000000000400"),
        "{}",
        line("CapEff:")
    );
    // A query for appliance.lan (A), id 0x1234, sent with bash's /dev/udp: the image has
    // no dig.
    let query =
        r"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x09appliance\x03lan\x00\x00\x01\x00\x01";
    let answer = vm.in_netns(
        lan_ns,
        &format!(
            "exec 3<>/dev/udp/192.168.1.1/53; printf '{query}' >&3; \
             timeout 5 dd bs=512 count=1 <&3 2>/dev/null | od -An -tx1 -v | tr -d ' \\n'"
        ),
    );
    let answer = answer.trim();
    assert!(
        answer.starts_with("1234") && answer.contains("c0a80101"),
        "dnsd did not answer appliance.lan with 192.168.1.1: {answer:?}"
    );
    eprintln!("dnsd answered appliance.lan from the LAN namespace");
    let owner = vm.sh("stat -c %U /data/dns /data/dns/querylog 2>&1 || ls -la /data/dns");
    assert_eq!(
        owner.split_whitespace().collect::<Vec<_>>(),
        ["dnsd", "dnsd"],
        "{owner}"
    );
}

/// Writes `file` at `offset` bytes into `disk`.
fn write_at(disk: &Path, offset: u64, file: &Path) {
    let mut from = fs::File::open(file).unwrap();
    let mut to = fs::OpenOptions::new().write(true).open(disk).unwrap();
    to.seek(SeekFrom::Start(offset)).unwrap();
    std::io::copy(&mut from, &mut to).unwrap();
    to.sync_all().unwrap();
}

/// The ESP of `disk` as an mtools image spec (`disk@@offset`).
fn esp(disk: &Path) -> String {
    let layout = disk::layout(disk::Sizes::default());
    format!("{}@@{}M", disk.display(), layout[0].start_mib)
}

fn mtools(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): apt-get install mtools"));
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies the boot state from the disk's ESP into `dir`, applies `change` the way the
/// device does (next sequence number into the older copy), and copies it back.
fn set_boot_state(disk: &Path, dir: &Path, change: impl FnOnce(&mut BootState)) -> BootState {
    let local = fetch_boot_state(disk, dir);
    let state = BootEnv::new(&local).update(change).unwrap();
    for copy in bootstate::COPIES {
        let file = local.join(copy);
        mtools(
            "mcopy",
            &[
                "-o",
                "-i",
                &esp(disk),
                file.to_str().unwrap(),
                &format!("::/{copy}"),
            ],
        );
    }
    state
}

/// Both copies of the boot state, copied from the ESP into `dir/esp`.
fn fetch_boot_state(disk: &Path, dir: &Path) -> std::path::PathBuf {
    let local = dir.join("esp");
    fs::create_dir_all(local.join("EFI/appliance")).unwrap();
    for copy in bootstate::COPIES {
        let file = local.join(copy);
        let _ = fs::remove_file(&file);
        mtools(
            "mcopy",
            &[
                "-i",
                &esp(disk),
                &format!("::/{copy}"),
                file.to_str().unwrap(),
            ],
        );
    }
    local
}

fn boot_state(disk: &Path, dir: &Path) -> BootState {
    BootEnv::new(&fetch_boot_state(disk, dir))
        .current()
        .unwrap()
}

/// The slot GRUB picks: it prints `appliance: booting slot X` after saving the boot state
/// and before loading the kernel. QEMU is then killed (a power cut): this test is about the
/// bootloader alone, so Linux, whose health check would commit the slot, never runs.
fn grub_picks(dir: &Path, disk: &Path, tag: &str) -> String {
    let mut vm = Vm::start(dir, disk, "raw", tag);
    let line = vm.wait_for_line("appliance: booting slot", BOOT_TIMEOUT);
    drop(vm);
    line.split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_owned()
}

/// The bootloader contract the OTA code builds on: a trial slot spends a try per boot,
/// saved by GRUB on the ESP; once its tries are spent the next slot in ORDER boots; and a
/// torn copy of the boot state is ignored in favour of the other, complete one.
#[test]
fn a_trial_slot_spends_its_tries_then_grub_falls_back_to_the_committed_slot() {
    let dir = harness::log_dir("ab-fallback");
    let disk = harness::raw_copy(&dir);
    let root = harness::image_path().with_file_name(image::ROOT_IMAGE);
    let layout = disk::layout(disk::Sizes::default());
    let slot_b = layout.iter().find(|p| p.label == "rootB").unwrap();
    write_at(&disk, slot_b.start_mib * disk::MIB, &root);
    set_boot_state(&disk, &dir, |s| s.trial(Slot::B, 1));

    assert_eq!(grub_picks(&dir, &disk, "-1"), "B");
    let state = boot_state(&disk, &dir);
    assert_eq!(state.b.tries, Some(0), "{state:?}");

    // Nobody committed B: the next boot must be A's, and leave the state alone.
    assert_eq!(grub_picks(&dir, &disk, "-2"), "A");
    assert_eq!(boot_state(&disk, &dir), state);

    // A cut while writing "commit B": the new copy has the next SEQ but the old END. GRUB
    // must take the older, complete copy (A) rather than the torn one.
    let local = fetch_boot_state(&disk, &dir);
    let found = BootEnv::new(&local).read();
    let (newest, current) = found.current().unwrap();
    let mut next = current.clone();
    next.commit(Slot::B);
    next.seq += 1;
    let text = String::from_utf8(next.encode().unwrap()).unwrap();
    let torn = text.replace(
        &format!("END={}", next.seq),
        &format!("END={}", current.seq),
    );
    let older = local.join(bootstate::COPIES[1 - newest]);
    fs::write(&older, torn).unwrap();
    mtools(
        "mcopy",
        &[
            "-o",
            "-i",
            &esp(&disk),
            older.to_str().unwrap(),
            &format!("::/{}", bootstate::COPIES[1 - newest]),
        ],
    );
    assert_eq!(grub_picks(&dir, &disk, "-3"), "A", "the torn copy was used");
    // The complete B boots from the intact copy once it is written whole.
    set_boot_state(&disk, &dir, |s| s.commit(Slot::B));
    assert_eq!(grub_picks(&dir, &disk, "-4"), "B");
    // A failing run keeps the disk for a look; a passing one frees its 250 MiB.
    fs::remove_file(&disk).unwrap();
}
