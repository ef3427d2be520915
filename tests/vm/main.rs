#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! VM tests: the real image booted under QEMU TCG with OVMF. Run with `cargo xtask vm-test`
//! (it builds the image when there is none); the `vm` feature keeps them out of
//! `cargo test --workspace` until CI can afford them.

mod harness;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::Vm;

/// TCG boots in about 15 s here; the margin covers a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// The `key=value` fields of the boot report line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

#[test]
fn boots_to_multi_user_with_a_read_only_root_and_data_kept_across_a_reboot() {
    let mut vm = Vm::boot("boot");
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
    vm.sh("echo kept > /data/probe && sync");
    // The reboot drops the SSH connection, so its status says nothing.
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_nth_line("APPLIANCE-BOOT-OK", 2, BOOT_TIMEOUT);
    let rebooted = vm.uptime();
    assert_eq!(vm.sh("cat /data/probe").trim(), "kept");

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
