//! Boots the appliance image in QEMU (TCG, OVMF) for a test: a fresh qcow2 overlay and UEFI
//! variable store per test, the serial console in target/vm-logs/<test>/serial.log, power
//! off through QMP, and QEMU killed when the handle drops.
//!
//! Nothing here skips: a missing image, QEMU or OVMF fails the test with what to run.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The disk image under test: `APPLIANCE_IMAGE`, else the one `cargo xtask image` builds.
pub fn image_path() -> PathBuf {
    std::env::var_os("APPLIANCE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/image/appliance.img"))
}

#[derive(Debug)]
pub struct Vm {
    child: Child,
    pub dir: PathBuf,
    pub serial: PathBuf,
    qmp: PathBuf,
    started: Instant,
}

impl Vm {
    /// Starts QEMU on a fresh overlay of the image; `name` names the log directory.
    pub fn boot(name: &str) -> Vm {
        let image = image_path();
        assert!(
            image.is_file(),
            "no appliance image at {}: build it with `cargo xtask image` \
             (`cargo xtask vm-test` builds it when missing)",
            image.display()
        );
        for (file, package) in [(OVMF_CODE, "ovmf"), (OVMF_VARS, "ovmf")] {
            assert!(
                Path::new(file).is_file(),
                "{file} is missing: apt-get install {package}"
            );
        }
        let dir = workspace().join("target/vm-logs").join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        let overlay = dir.join("disk.qcow2");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image)
            .arg(&overlay)
            .status()
            .unwrap_or_else(|e| panic!("cannot run qemu-img ({e}): apt-get install qemu-utils"));
        assert!(status.success(), "qemu-img create failed: {status}");
        let vars = dir.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).unwrap();
        let serial = dir.join("serial.log");
        let qmp = dir.join("qmp.sock");
        let child = Command::new("qemu-system-x86_64")
            // One host thread for both vCPUs: with multi-threaded TCG a boot here once hung
            // for good with both vCPUs in the kernel's int3 text-patching handler (an RCU
            // stall at "crng init done"); round-robin TCG has no such race.
            .args(["-machine", "q35", "-accel", "tcg,thread=single"])
            .args(["-m", "2048", "-smp", "2"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("if=virtio,format=qcow2,file={}", overlay.display()))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(["-netdev", "user,id=wan"])
            .args(["-device", "virtio-net-pci,netdev=wan,mac=52:54:00:a9:00:01"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(dir.join("qemu.out")).unwrap()))
            .stderr(Stdio::from(fs::File::create(dir.join("qemu.err")).unwrap()))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start qemu-system-x86_64 ({e}): apt-get install qemu-system-x86")
            });
        Vm {
            child,
            dir,
            serial,
            qmp,
            started: Instant::now(),
        }
    }

    /// Time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn console_tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for a console line containing `needle`; returns the line from `needle` on.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console().lines().find_map(|l| {
                l.find(needle)
                    .map(|i| l[i..].trim_end_matches('\r').to_owned())
            }) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({status}) before `{needle}` appeared; qemu.err: {}\n\
                     console tail:\n{}",
                    fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default(),
                    self.console_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{needle}` did not appear on the console within {timeout:?}; log: {}\n\
                 console tail:\n{}",
                self.serial.display(),
                self.console_tail()
            );
            sleep(Duration::from_millis(250));
        }
    }

    /// Presses the ACPI power button through QMP and waits for QEMU to exit.
    pub fn power_off(&mut self, timeout: Duration) -> ExitStatus {
        let stream = UnixStream::connect(&self.qmp)
            .unwrap_or_else(|e| panic!("cannot connect to QMP at {}: {e}", self.qmp.display()));
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("QMP"), "unexpected QMP greeting: {line}");
        for command in ["qmp_capabilities", "system_powerdown"] {
            writeln!(writer, "{{\"execute\":\"{command}\"}}").unwrap();
            loop {
                line.clear();
                assert!(reader.read_line(&mut line).unwrap() > 0, "QMP closed");
                if line.contains("\"return\"") {
                    break;
                }
                assert!(!line.contains("\"error\""), "QMP {command}: {line}");
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not power off within {timeout:?}; console tail:\n{}",
                self.console_tail()
            );
            sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
