//! OTA updates on the real image, in one VM: the first boot commits slot A (T1); bad
//! bundles are refused and change nothing (T5); a signed bundle served over HTTP installs
//! into B, boots on trial and is committed by the health check (T2); a release whose boot
//! is unhealthy spends its tries and the box comes back on the old slot, which reports the
//! rollback and has the config generation of before the update active again (T3, issue
//! item 6); a damaged copy of the boot state is ignored and repaired (T7).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use image::bundle::{self, Release, SecretKey};

use crate::harness::{self, Vm};
use crate::{BOOT_TIMEOUT, POWER_OFF_TIMEOUT};

/// A trial boot that fails its health check reboots after the boot settles; three of them
/// and the fallback boot take a while under TCG.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(900);

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn dev_key() -> SecretKey {
    let path = harness::image_path()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("update-key/dev.key");
    SecretKey::load(&path).unwrap_or_else(|e| {
        panic!("{e}: `cargo xtask image` makes the development update key and trusts it")
    })
}

/// The image's root, unpacked once into `dir/tree` for [`variant`].
pub(crate) fn unpack_root(dir: &Path) -> PathBuf {
    let base = harness::image_path().with_file_name(image::ROOT_IMAGE);
    let tree = dir.join("tree");
    let _ = fs::remove_dir_all(&tree);
    run(Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&tree)
        .arg(&base));
    tree
}

/// `tree` packed as a root with a different release file and, if `broken`, a unit that
/// fails on every boot (an update that "succeeds" but never comes up healthy). Variants are
/// made in order of growing change, so one unpacked tree serves them all.
pub(crate) fn variant(
    dir: &Path,
    tree: &Path,
    version: &str,
    security: u64,
    broken: bool,
) -> PathBuf {
    let release = image::install::Release {
        version: version.parse().unwrap(),
        security_version: security,
        compatible: bundle::cli::COMPATIBLE.into(),
    };
    fs::write(tree.join("usr/lib/appliance/release"), release.render()).unwrap();
    if broken {
        fs::write(
            tree.join("usr/lib/systemd/system/appliance-test-broken.service"),
            "[Unit]\nDescription=Fails on purpose (OTA rollback test)\n\
             [Service]\nType=oneshot\nExecStart=/bin/false\n\
             [Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        symlink(
            "/usr/lib/systemd/system/appliance-test-broken.service",
            tree.join("etc/systemd/system/multi-user.target.wants/appliance-test-broken.service"),
        )
        .unwrap();
    }
    let out = dir.join(format!("rootfs-{version}.squashfs"));
    // Level 6, as the image's own root: mksquashfs's default 9 gives the same size (within
    // 1%) and took 1m53s of two cores per variant here, 4 to 8 minutes of a loaded CI run.
    run(Command::new("mksquashfs").arg(tree).arg(&out).args([
        "-comp",
        "gzip",
        "-Xcompression-level",
        "6",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
    out
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt-get install squashfs-tools)"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

pub(crate) fn release(version: &str, security: u64) -> Release {
    Release {
        compatible: bundle::cli::COMPATIBLE.into(),
        version: version.parse().unwrap(),
        security_version: security,
        min_version: None,
        created: now() - 60,
        expires: now() + 86_400,
        allow_downgrade: false,
    }
}

pub(crate) fn make_bundle(
    dir: &Path,
    name: &str,
    root: &Path,
    release: &Release,
    key: &SecretKey,
) -> PathBuf {
    let out = dir.join(name);
    bundle::create(root, release, &[key], &out).unwrap();
    out
}

/// Serves the files of `dir` over HTTP/1.1 on the host's loopback (the guest reaches it as
/// 10.0.2.2), with `Range: bytes=N-` support; returns the port.
pub(crate) fn serve(dir: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => req.push(byte[0]),
                        _ => return,
                    }
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let Ok(body) = fs::read(dir.join(path.trim_start_matches('/'))) else {
                    let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    return;
                };
                let from = req
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(str::to_owned)
                    })
                    .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok());
                let (status, part) = match from {
                    Some(f) if f <= body.len() => ("206 Partial Content", &body[f..]),
                    _ => ("200 OK", &body[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    part.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(part);
            });
        }
    });
    port
}

pub(crate) fn status(vm: &Vm) -> serde_json::Value {
    serde_json::from_str(&vm.sh("applctl update status --json")).unwrap()
}

fn boot_state_files(vm: &Vm) -> String {
    vm.sh("sha256sum /boot/efi/EFI/appliance/grubenv.0 /boot/efi/EFI/appliance/grubenv.1")
}

#[test]
fn ota_install_commit_refusal_rollback_and_boot_state_repair() {
    // Not "ota": that is the VM's log directory, which `Vm::boot` starts afresh.
    let dir = harness::log_dir("ota-files");
    let key = dev_key();
    let (stranger, _) = SecretKey::generate().unwrap();
    let served = dir.join("www");
    fs::create_dir_all(&served).unwrap();

    let tree = unpack_root(&dir);
    let good = variant(&dir, &tree, "0.2.0", 2, false);
    let broken = variant(&dir, &tree, "0.3.0", 2, true);
    fs::remove_dir_all(&tree).unwrap();
    make_bundle(&served, "good.bundle", &good, &release("0.2.0", 2), &key);
    make_bundle(
        &served,
        "broken.bundle",
        &broken,
        &release("0.3.0", 2),
        &key,
    );
    // Refused bundles need no real root: a small payload shows each check.
    let small = dir.join("small.squashfs");
    fs::write(&small, vec![7u8; 3 << 20]).unwrap();
    let refused: Vec<(&str, PathBuf, &str)> = vec![
        (
            "wrong key",
            make_bundle(
                &served,
                "stranger.bundle",
                &small,
                &release("0.2.0", 2),
                &stranger,
            ),
            "no signature by a trusted key",
        ),
        (
            "downgrade",
            make_bundle(&served, "old.bundle", &small, &release("0.0.1", 2), &key),
            "older than the installed",
        ),
        (
            "expired",
            make_bundle(
                &served,
                "expired.bundle",
                &small,
                &Release {
                    created: now() - 3 * 86_400,
                    expires: now() - 86_400,
                    ..release("0.2.0", 2)
                },
                &key,
            ),
            "expired",
        ),
        (
            "wrong compatible",
            make_bundle(
                &served,
                "arm.bundle",
                &small,
                &Release {
                    compatible: "appliance-arm64".into(),
                    ..release("0.2.0", 2)
                },
                &key,
            ),
            "this device is `appliance-x86_64-efi`",
        ),
        (
            "tampered",
            tampered(&served, &small, &key),
            "does not match its signed hash",
        ),
    ];
    let port = serve(served.clone());
    let url = |name: &str| format!("http://10.0.2.2:{port}/{name}");

    // T1: a fresh disk boots A, and the health check commits it.
    let mut vm = Vm::boot("ota");
    vm.wait_for_line("APPLIANCE-HEALTH ok slot=A", BOOT_TIMEOUT);
    let s = status(&vm);
    assert_eq!(s["running"], "A", "{s}");
    assert_eq!(s["next_boot"]["slot"], "A", "{s}");
    assert_eq!(s["next_boot"]["trial"], false, "{s}");

    // T5: each bad bundle is refused with its reason, exit 2, and nothing changes.
    let before = boot_state_files(&vm);
    for (what, path, reason) in &refused {
        let name = path.file_name().unwrap().to_str().unwrap();
        let out = vm.ssh(&format!("applctl update install {}", url(name)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(stderr.contains(reason), "{what}: {stderr}");
    }
    assert_eq!(
        boot_state_files(&vm),
        before,
        "a refused bundle touched the boot state"
    );

    // T2: install over HTTP, reboot into B on trial, committed once healthy.
    let out = vm.sh(&format!("applctl update install {}", url("good.bundle")));
    assert!(out.contains("installed 0.2.0 into slot B"), "{out}");
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_line("APPLIANCE-HEALTH ok slot=B", BOOT_TIMEOUT * 2);
    let s = status(&vm);
    assert_eq!(
        (s["running"].as_str(), s["version"].as_str()),
        (Some("B"), Some("0.2.0")),
        "{s}"
    );
    assert_eq!(s["next_boot"]["trial"], false, "{s}");
    assert_eq!(s["state"]["security_floor"], 2, "{s}");
    assert_eq!(s["state"]["last"]["phase"], "committed", "{s}");

    // T3: a release that never comes up healthy: three trial boots of A, then B again.
    // The install records the active config generation; a later one stands for what the
    // new release's migration would leave active, and the rollback must undo it.
    vm.sh("applctl config show current > /tmp/c.toml && applctl config save /tmp/c.toml --comment 'before 0.3.0'");
    let before_update = active_generation(&vm);
    let out = vm.sh(&format!("applctl update install {}", url("broken.bundle")));
    assert!(out.contains("installed 0.3.0 into slot A"), "{out}");
    vm.sh("applctl config save /tmp/c.toml --comment 'made after the install'");
    assert_ne!(active_generation(&vm), before_update);
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_line("rolled back to slot B", ROLLBACK_TIMEOUT);
    let failures = vm.count_lines("APPLIANCE-HEALTH failed slot=A");
    assert_eq!(failures, 3, "expected one failed health check per try");
    vm.wait_for_nth_line("APPLIANCE-HEALTH ok slot=B", 2, BOOT_TIMEOUT);
    let s = status(&vm);
    assert_eq!(s["running"], "B", "{s}");
    assert_eq!(s["state"]["last"]["phase"], "rolled_back", "{s}");
    assert_eq!(s["next_boot"]["slot"], "B", "{s}");
    // Item 6: the generation of before the update is active again, and only once.
    assert_eq!(active_generation(&vm), before_update);
    assert_eq!(
        s["state"]["last"]["config_generation"], before_update,
        "{s}"
    );
    assert_eq!(s["state"]["last"]["config_restored"], true, "{s}");
    assert_eq!(
        vm.count_lines("active before the update, is active again"),
        1
    );

    // T7: a damaged copy of the boot state: the good copy boots, and the bad is repaired.
    let newest = vm.sh(
        "grep -a -o 'SEQ=[0-9]*' /boot/efi/EFI/appliance/grubenv.0 /boot/efi/EFI/appliance/grubenv.1",
    );
    let older = older_copy(&newest);
    vm.sh(&format!(
        "dd if=/dev/urandom of=/boot/efi/EFI/appliance/grubenv.{older} bs=1024 count=1 conv=notrunc,fsync 2>/dev/null"
    ));
    let _ = vm.ssh("systemctl reboot");
    vm.wait_for_nth_line("APPLIANCE-HEALTH ok slot=B", 3, BOOT_TIMEOUT * 2);
    for copy in ["0", "1"] {
        let text = vm.sh(&format!(
            "grep -a -o -e 'SEQ=[0-9]*' -e 'END=[0-9]*' /boot/efi/EFI/appliance/grubenv.{copy}"
        ));
        let values: Vec<&str> = text
            .lines()
            .map(|l| l.split('=').nth(1).unwrap_or(""))
            .collect();
        assert!(
            values.len() == 2 && values[0] == values[1],
            "copy {copy} was not repaired: {text}"
        );
    }
    assert!(vm.power_off(POWER_OFF_TIMEOUT).success());
    eprintln!(
        "OTA test done after {:.0}s of VM time",
        vm.uptime().as_secs_f64()
    );
}

/// A bundle whose first payload byte was flipped after signing.
fn tampered(dir: &Path, root: &Path, key: &SecretKey) -> PathBuf {
    let path = make_bundle(dir, "tampered.bundle", root, &release("0.2.0", 2), key);
    let mut bytes = fs::read(&path).unwrap();
    let len = 12 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[len] ^= 1;
    fs::write(&path, bytes).unwrap();
    path
}

/// The number the config store's `active` pointer names.
fn active_generation(vm: &Vm) -> u64 {
    let text = vm.sh("cat /data/config/active");
    text.lines()
        .find_map(|l| l.strip_prefix("generation = "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no generation in /data/config/active: {text}"))
}

/// Which copy (0 or 1) has the lower SEQ, from `grep -o SEQ=N` over both files.
fn older_copy(grep: &str) -> &'static str {
    let seq = |copy: &str| -> u64 {
        grep.lines()
            .find(|l| l.contains(&format!("grubenv.{copy}:")))
            .and_then(|l| l.rsplit('=').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    if seq("0") < seq("1") { "0" } else { "1" }
}
