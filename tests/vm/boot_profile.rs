//! Where a boot's time goes. Every VM test pays for its boots (about two minutes each under
//! TCG, some forty of them in the suite), so this is the first place to look when the VM
//! step grows: systemd's own account of a first boot (keys, config import, /data made) and
//! of a second one, with the wall time from QEMU's start to the health check.

use crate::harness::Vm;
use crate::{BOOT_TIMEOUT, POWER_OFF_TIMEOUT};

const REPORT: &str = "systemd-analyze time; systemd-analyze critical-chain --no-pager; \
    systemd-analyze blame --no-pager | head -n 40";

#[test]
#[ignore = "a diagnostic: `cargo xtask vm-test --only boot_profile --ignored`"]
fn where_a_boots_time_goes() {
    let mut vm = Vm::boot("boot-profile");
    vm.wait_for_line("APPLIANCE-HEALTH ok", BOOT_TIMEOUT);
    let first = vm.uptime();
    let report = vm.sh(REPORT);
    eprintln!(
        "first boot: healthy {:.0}s after QEMU started\n{report}",
        first.as_secs_f64()
    );
    let asked = vm.uptime();
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_nth_line("APPLIANCE-HEALTH ok", 2, BOOT_TIMEOUT);
    let second = vm.uptime() - asked;
    let report = vm.sh(REPORT);
    eprintln!(
        "second boot: healthy {:.0}s after the reboot was asked for\n{report}",
        second.as_secs_f64()
    );
    assert!(vm.power_off(POWER_OFF_TIMEOUT).success());
}
