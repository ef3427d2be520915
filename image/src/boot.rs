//! The bootloader: a standalone GRUB EFI binary with the A/B selection built in, and the
//! initial boot state it reads from the ESP.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::bootstate;
use crate::cmd::run;

/// The config compiled into the EFI binary; it never changes at runtime, only the grubenv
/// next to it does.
pub const GRUB_CFG: &str = include_str!("grub.cfg");

/// Modules put into the binary's memdisk (with their dependencies); the rest of GRUB is left
/// out to keep the ESP small and the attack surface narrow.
const GRUB_MODULES: &[&str] = &[
    "part_gpt", "fat", "squash4", "gzio", "normal", "linux", "loadenv", "regexp", "test", "echo",
    "serial", "terminal", "sleep", "reboot", "halt", "efi_gop", "ls", "cat",
];

/// Writes `BOOTX64.EFI` and the two boot state copies (`grubenv.0`, `grubenv.1`) into `dir`.
pub fn build(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = dir.join("grub.cfg");
    fs::write(&cfg, GRUB_CFG).with_context(|| format!("writing {}", cfg.display()))?;
    let efi = dir.join("BOOTX64.EFI");
    run(Command::new("grub-mkstandalone")
        .args(["--format=x86_64-efi", "--locales=", "--fonts=", "--themes="])
        .arg(format!("--install-modules={}", GRUB_MODULES.join(" ")))
        .arg("--output")
        .arg(&efi)
        .arg(format!("boot/grub/grub.cfg={}", cfg.display())))
    .context("building the GRUB EFI binary")?;
    for (on_esp, block) in bootstate::initial_blocks()? {
        let name = on_esp.rsplit('/').next().unwrap_or(on_esp);
        let path = dir.join(name);
        fs::write(&path, block).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
