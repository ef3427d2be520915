//! The bootloader: a standalone GRUB EFI binary with the A/B selection built in, and the
//! initial boot state it reads from the ESP.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::cmd::run;
use crate::grubenv;

/// The config compiled into the EFI binary; it never changes at runtime, only the grubenv
/// next to it does.
pub const GRUB_CFG: &str = include_str!("grub.cfg");

/// Where the boot state lives on the ESP, and what the config passes to `load_env`.
pub const GRUBENV_ON_ESP: &str = "EFI/appliance/grubenv";

/// Modules put into the binary's memdisk (with their dependencies); the rest of GRUB is left
/// out to keep the ESP small and the attack surface narrow.
const GRUB_MODULES: &[&str] = &[
    "part_gpt", "fat", "squash4", "gzio", "normal", "linux", "loadenv", "regexp", "test", "echo",
    "serial", "terminal", "sleep", "reboot", "halt", "efi_gop", "ls", "cat",
];

/// The state of a freshly flashed disk: slot A committed, slot B empty.
pub fn initial_state() -> BTreeMap<String, String> {
    [
        ("ORDER", "A B"),
        ("A_OK", "1"),
        ("A_TRIES", ""),
        ("B_OK", "0"),
        ("B_TRIES", ""),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// Writes `BOOTX64.EFI` and `grubenv` into `dir`.
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
    let env = grubenv::encode(&initial_state())?;
    let env_path = dir.join("grubenv");
    fs::write(&env_path, env).with_context(|| format!("writing {}", env_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_loads_every_variable_of_the_initial_state() {
        let load = GRUB_CFG
            .lines()
            .find(|l| l.starts_with("load_env"))
            .unwrap();
        for name in initial_state().keys() {
            assert!(load.contains(name.as_str()), "{name} not loaded: {load}");
            assert!(
                GRUB_CFG.contains(&format!("set {name}=")),
                "{name} has no default"
            );
        }
        assert!(GRUB_CFG.contains(GRUBENV_ON_ESP));
    }
}
