//! OTA failures that need the hardware watchdog and QEMU killed, on one disk booted by
//! successive QEMU processes: a release whose boot hangs is reset by the watchdog on every
//! try and the box comes back on the old slot (T4); then the power is cut (QEMU gets
//! SIGKILL) at seeded random points of an install and of its activation, and after each cut
//! a healthy slot boots and the interrupted install resumes; the last install then runs to
//! the end and its slot is committed (T6).

use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::{self, Options, Vm};
use crate::ota::{self, dev_key, make_bundle, release, serve, unpack_root, variant};
use crate::{BOOT_TIMEOUT, POWER_OFF_TIMEOUT};

/// Power cuts of T6 (the issue asks for at least ten).
const CUTS: u64 = 10;

/// Three trial boots that each hang until the watchdog (30 s runtime timeout; the
/// i6300esb resets after its second stage, so about a minute) and the fallback boot.
const HANG_TIMEOUT: Duration = Duration::from_secs(900);

/// A release that hangs hard before its health check: real-time busy loops on both CPUs,
/// with the kernel's real-time throttling off, so PID 1 never runs again and stops petting
/// the watchdog (a runaway real-time process; PID 1 itself cannot be stopped by a signal).
const HANG_UNIT: &str = "[Unit]\nDescription=Hangs the system on purpose (OTA watchdog test)\n\
    DefaultDependencies=no\nAfter=sysinit.target\n\
    [Service]\nType=oneshot\n\
    ExecStart=/bin/sh -c 'echo APPLIANCE-TEST-HANG > /dev/console; \
    sysctl -q -w kernel.sched_rt_runtime_us=-1; \
    for c in 0 1; do taskset -c $c chrt -f 99 sh -c \"while :; do :; done\" & done; wait'\n\
    [Install]\nWantedBy=multi-user.target\n";

/// SplitMix64: the cut points come from a seed printed by the test, so a failing run can
/// be replayed with `OTA_POWER_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    /// While the payload streams into the slot (or is read back).
    Install,
    /// Right after the install returned: the trial is set, the reboot not yet asked for.
    Activated,
    /// During the trial boot of the new slot, before its health check commits it.
    TrialBoot,
}

#[test]
fn ota_watchdog_hang_rolls_back_and_power_cuts_leave_a_good_slot() {
    let started = Instant::now();
    let files = harness::log_dir("ota-power-files");
    let key = dev_key();
    let served = files.join("www");
    fs::create_dir_all(&served).unwrap();
    let tree = unpack_root(&files);
    let good = variant(&files, &tree, "0.3.0", 2, false);
    fs::write(
        tree.join("usr/lib/systemd/system/appliance-test-hang.service"),
        HANG_UNIT,
    )
    .unwrap();
    symlink(
        "/usr/lib/systemd/system/appliance-test-hang.service",
        tree.join("etc/systemd/system/multi-user.target.wants/appliance-test-hang.service"),
    )
    .unwrap();
    let hang = variant(&files, &tree, "0.2.0", 2, false);
    fs::remove_dir_all(&tree).unwrap();
    let chunks = fs::metadata(&good).unwrap().len().div_ceil(1 << 20);
    make_bundle(&served, "good.bundle", &good, &release("0.3.0", 2), &key);
    make_bundle(&served, "hang.bundle", &hang, &release("0.2.0", 2), &key);
    fs::remove_file(&good).unwrap();
    fs::remove_file(&hang).unwrap();
    let port = serve(served);
    let url = |name: &str| format!("http://10.0.2.2:{port}/{name}");

    let dir = harness::log_dir("ota-power");
    let disk = dir.join("disk.qcow2");
    ota::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(harness::require_image())
            .arg(&disk),
    );
    let start =
        |tag: &str| Vm::start_with(&dir, &disk, "qcow2", tag, Options::default().watchdog());

    let mut vm = start("-0");
    vm.wait_for_line("APPLIANCE-HEALTH ok slot=A", BOOT_TIMEOUT);
    // systemd pets the watchdog only if the driver came up; without it T4 would wait forever.
    vm.wait_until("test -c /dev/watchdog0", Duration::from_secs(30));

    // T4: every trial boot of the hanging release is reset by the watchdog, not by Linux.
    let out = vm.sh(&format!("applctl update install {}", url("hang.bundle")));
    assert!(out.contains("installed 0.2.0 into slot B"), "{out}");
    let _ = vm.ssh("systemctl reboot");
    let t4 = Instant::now();
    vm.wait_for_line("rolled back to slot A", HANG_TIMEOUT);
    vm.wait_for_nth_line("APPLIANCE-HEALTH ok slot=A", 2, BOOT_TIMEOUT);
    let t4 = t4.elapsed();
    assert_eq!(vm.count_lines("APPLIANCE-TEST-HANG"), 3, "one hang per try");
    assert_eq!(vm.count_lines("APPLIANCE-HEALTH failed"), 0);
    // One reset was `systemctl reboot` (the kernel prints why); the other three came from
    // the watchdog, which leaves no line.
    assert_eq!(vm.count_lines("reboot: Restarting system"), 1);
    assert_eq!(vm.resets(), 4, "the reboot and three watchdog resets");
    let s = ota::status(&vm);
    assert_eq!(s["running"], "A", "{s}");
    assert_eq!(s["next_boot"]["slot"], "A", "{s}");
    assert_eq!(s["next_boot"]["trial"], false, "{s}");
    assert_eq!(s["state"]["last"]["phase"], "rolled_back", "{s}");
    assert_eq!(s["state"]["last"]["version"], "0.2.0", "{s}");
    eprintln!(
        "T4: three hung trial boots and the fallback took {:.0}s",
        t4.as_secs_f64()
    );

    // T6: power cuts at random points; each time a healthy slot boots.
    let seed = std::env::var("OTA_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("T6: seed {seed} (OTA_POWER_SEED={seed} replays these cut points)");
    let mut rng = Rng(seed);
    let t6 = Instant::now();
    for cut in 1..=CUTS {
        let kind = match cut % 5 {
            3 => Cut::Activated,
            4 => Cut::TrialBoot,
            _ => Cut::Install,
        };
        let at = match kind {
            Cut::Install => {
                let target = rng.below(chunks);
                let delay = rng.below(2_000);
                vm.sh(&format!(
                    "systemd-run --quiet --collect --unit=cut-{cut} applctl update install {}",
                    url("good.bundle")
                ));
                let reached = wait_for_chunk(&vm, cut, target);
                sleep(Duration::from_millis(delay));
                format!("{delay} ms after chunk {reached} (aimed at {target}) of {chunks}")
            }
            Cut::Activated => {
                let out = vm.sh(&format!("applctl update install {}", url("good.bundle")));
                assert!(out.contains("installed 0.3.0"), "{out}");
                "right after the install set the trial".to_owned()
            }
            Cut::TrialBoot => {
                let out = vm.sh(&format!("applctl update install {}", url("good.bundle")));
                assert!(out.contains("installed 0.3.0"), "{out}");
                let boots = vm.count_lines("appliance: booting slot");
                let _ = vm.ssh("systemctl reboot");
                let picked = vm.wait_for_nth_line_text("appliance: booting slot", boots + 1);
                let delay = rng.below(40_000);
                sleep(Duration::from_millis(delay));
                format!("{delay} ms after GRUB picked `{picked}`")
            }
        };
        // Dropping the handle kills QEMU with SIGKILL: the guest gets no warning.
        drop(vm);
        vm = start(&format!("-{cut}"));
        let line = vm.wait_for_line("APPLIANCE-HEALTH ok slot=", BOOT_TIMEOUT * 2);
        let s = ota::status(&vm);
        let running = s["running"].as_str().unwrap_or_default().to_owned();
        assert!(line.ends_with(&format!("slot={running}")), "{line} / {s}");
        assert!(s["boot_state_error"].is_null(), "cut {cut}: {s}");
        assert_eq!(s["next_boot"]["slot"], running.as_str(), "cut {cut}: {s}");
        assert_eq!(s["next_boot"]["trial"], false, "cut {cut}: {s}");
        assert_ne!(s["version"], "0.2.0", "the hanging release runs: {s}");
        let last = &s["state"]["last"];
        assert_ne!(last["phase"], "pending", "cut {cut}: {s}");
        eprintln!(
            "cut {cut} ({kind:?}) {at}: slot {running} ({}) booted healthy; last install {} {}/{}",
            s["version"], last["phase"], last["chunks_done"], last["chunks"]
        );
    }
    let t6 = t6.elapsed();

    // After all that, an install runs to the end and its slot is committed.
    let out = vm.sh(&format!("applctl update install {}", url("good.bundle")));
    let slot = out
        .split("into slot ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    assert!(out.contains("installed 0.3.0") && !slot.is_empty(), "{out}");
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_line(
        &format!("APPLIANCE-HEALTH ok slot={slot}"),
        BOOT_TIMEOUT * 2,
    );
    let s = ota::status(&vm);
    assert_eq!(s["running"], slot.as_str(), "{s}");
    assert_eq!(s["version"], "0.3.0", "{s}");
    assert_eq!(s["state"]["last"]["phase"], "committed", "{s}");
    assert!(vm.power_off(POWER_OFF_TIMEOUT).success());
    eprintln!(
        "T4 {:.0}s, T6 {CUTS} cuts in {:.0}s, whole test {:.0}s",
        t4.as_secs_f64(),
        t6.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // A passing run frees the disk's gigabytes; a failing one keeps it for a look.
    fs::remove_file(&disk).unwrap();
}

/// Polls the updater's state until the install of unit `cut-N` has saved progress at or
/// past `target` (it saves every 16 chunks), or has ended.
fn wait_for_chunk(vm: &Vm, cut: u64, target: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let out = vm.ssh(&format!(
            "cat /data/update/state.json; echo; systemctl is-active cut-{cut}"
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        let (json, active) = text.trim_end().rsplit_once('\n').unwrap_or(("", ""));
        let state: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let done = state["last"]["chunks_done"].as_u64().unwrap_or(0);
        let writing = state["last"]["phase"] == "writing" && state["last"]["version"] == "0.3.0";
        if (writing && done >= target) || active.trim() != "active" {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "the install of cut {cut} made no progress past chunk {done}: {text}"
        );
        sleep(Duration::from_millis(300));
    }
}

impl Vm {
    /// Waits (through the reset that a reboot is) for the `n`th console line with `needle`;
    /// returns that line.
    fn wait_for_nth_line_text(&mut self, needle: &str, n: usize) -> String {
        self.wait_for_nth_line(needle, n, BOOT_TIMEOUT);
        self.console()
            .lines()
            .filter(|l| l.contains(needle))
            .nth(n - 1)
            .and_then(|l| l.find(needle).map(|i| &l[i..]))
            .unwrap_or_default()
            .trim_end_matches('\r')
            .to_owned()
    }
}
