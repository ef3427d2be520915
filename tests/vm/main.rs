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
fn boots_to_multi_user_with_a_read_only_root_and_data_mounted() {
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

    let status = vm.power_off(POWER_OFF_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
    assert!(
        vm.console().contains("reboot: Power down"),
        "the guest did not shut down cleanly"
    );
    eprintln!(
        "booted in {:.1}s, powered off at {:.1}s",
        booted.as_secs_f64(),
        vm.uptime().as_secs_f64()
    );
}
