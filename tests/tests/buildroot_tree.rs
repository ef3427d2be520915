//! The buildroot/ tree describes the same firmware as the QEMU image: every binary crate
//! has a package, the genimage layout is image/src/disk.rs's, the overlay and its units are
//! image/overlay's, GRUB gets image/src/grub.cfg and the same boot state, and the kernel
//! fragment covers image/kernel-requirements.txt, which covers what the VM tests load.
//! Plain file checks: Buildroot itself is checked by the commands in buildroot/README.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use image::disk::{self, Sizes};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = workspace().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

const BOARD: &str = "buildroot/board/appliance/x86_64";

/// What to do when the image crate's overlay lists change.
const FIX: &str = "buildroot/board/appliance/x86_64/units.txt must say what image/src/overlay.rs \
    says (FILES modes other than 644, ENABLED, DISABLED, LINKS, in order)";

/// `KEY=value` lines of the defconfig, quotes kept.
fn defconfig() -> BTreeMap<String, String> {
    read("buildroot/configs/appliance_x86_64_defconfig")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A defconfig path value with `$(BR2_EXTERNAL_APPLIANCE_PATH)` resolved to the tree.
fn external_path(value: &str) -> PathBuf {
    let rest = value
        .trim_matches('"')
        .strip_prefix("$(BR2_EXTERNAL_APPLIANCE_PATH)/")
        .unwrap_or_else(|| panic!("{value} is not under the external tree"));
    let path = workspace().join("buildroot").join(rest);
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The workspace members, from the root Cargo.toml.
fn members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("a members line in Cargo.toml");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// `NAME_VAR = value` assignments of a package .mk file.
fn mk_vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn every_binary_crate_has_a_package_that_config_in_sources_and_the_defconfig_enables() {
    let top = read("buildroot/Config.in");
    let defconfig = defconfig();
    let mut by_subdir = BTreeMap::new();
    for entry in fs::read_dir(workspace().join("buildroot/package")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mk = fs::read_to_string(dir.join(format!("{name}.mk"))).unwrap();
        let vars = mk_vars(&mk);
        let prefix = name.to_uppercase().replace('-', "_");
        let subdir = vars[&format!("{prefix}_SUBDIR")].clone();
        assert_eq!(vars[&format!("{prefix}_SITE")], "$(APPLIANCE_WORKSPACE)");
        assert_eq!(vars[&format!("{prefix}_SITE_METHOD")], "local", "{name}");
        let host = mk.contains("$(eval $(host-cargo-package))");
        assert!(
            host || mk.contains("$(eval $(cargo-package))"),
            "{name}.mk uses neither cargo-package nor host-cargo-package"
        );
        let (kconfig, symbol) = if host {
            ("Config.in.host", format!("BR2_PACKAGE_HOST_{prefix}"))
        } else {
            ("Config.in", format!("BR2_PACKAGE_{prefix}"))
        };
        let source = format!("source \"$BR2_EXTERNAL_APPLIANCE_PATH/package/{name}/{kconfig}\"");
        assert!(top.contains(&source), "buildroot/Config.in lacks {source}");
        let declared = fs::read_to_string(dir.join(kconfig)).unwrap();
        assert!(declared.contains(&format!("config {symbol}\n")), "{name}");
        assert_eq!(
            defconfig.get(&symbol).map(String::as_str),
            Some("y"),
            "the defconfig does not enable {symbol}"
        );
        by_subdir.insert(subdir, name);
    }
    // xtask is the developers' tool and tests holds tests; every other crate that builds a
    // binary ships it (image's appliance-image runs on the build machine).
    for member in members() {
        let dir = workspace().join(&member);
        let has_bin = dir.join("src/main.rs").exists() || dir.join("src/bin").is_dir();
        if !has_bin || member == "xtask" || member == "tests" {
            continue;
        }
        assert!(
            by_subdir.contains_key(&member),
            "crate {member} builds a binary but no buildroot/package/*/*.mk has SUBDIR = {member}"
        );
    }
}

/// The `key = value` pairs of each `KIND NAME { ... }` block, with those of the blocks
/// inside it (`hdimage`, `vfat`) but not of the partitions inside an image nor of the files inside a filesystem.
fn genimage_blocks(text: &str, kind: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    // The headers of the open blocks; the first one of KIND collects.
    let mut open: Vec<String> = Vec::new();
    let mut current: Option<(String, BTreeMap<String, String>, usize)> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_suffix(" {") {
            if current.is_none()
                && let Some(name) = header.strip_prefix(&format!("{kind} "))
            {
                current = Some((name.to_owned(), BTreeMap::new(), open.len()));
            }
            open.push(header.to_owned());
        } else if line == "}" {
            open.pop();
            if current.as_ref().is_some_and(|(_, _, d)| *d == open.len()) {
                let (name, fields, _) = current.take().unwrap();
                out.push((name, fields));
            }
        } else if let Some((name, fields, depth)) = current.as_mut()
            && let Some((k, v)) = line.split_once(" = ")
        {
            let nested_partition = open
                .iter()
                .skip(*depth + 1)
                .any(|h| h.starts_with("partition ") || h.starts_with("file "));
            if !nested_partition {
                let previous = fields.insert(k.to_owned(), v.trim_matches('"').to_owned());
                assert!(previous.is_none(), "{kind} {name}: {k} set twice");
            }
        }
    }
    out
}

#[test]
fn the_genimage_layout_is_the_image_crates() {
    let text = read(&format!("{BOARD}/genimage.cfg"));
    let sizes = Sizes::default();
    let parts = disk::layout(sizes);
    let got = genimage_blocks(&text, "partition");
    assert_eq!(got.len(), parts.len(), "{got:?}");
    for (p, (name, f)) in parts.iter().zip(&got) {
        assert_eq!(name, p.label);
        assert_eq!(f["partition-type-uuid"], p.type_guid, "{name}");
        assert_eq!(f["partition-uuid"], p.unique_guid, "{name}");
        assert_eq!(f["offset"], format!("{}M", p.start_mib), "{name}");
        assert_eq!(f["size"], format!("{}M", p.size_mib), "{name}");
    }
    let images: BTreeMap<_, _> = genimage_blocks(&text, "image").into_iter().collect();
    let disk_image = &images["appliance.img"];
    assert_eq!(
        disk_image["size"],
        format!("{}M", disk::disk_size_mib(&parts))
    );
    assert_eq!(disk_image["disk-uuid"], disk::DISK_GUID);
    assert_eq!(disk_image["partition-table-type"], "gpt");
    // The filesystems fill their partitions, as image/src/disk.rs makes them.
    assert_eq!(images["esp.vfat"]["size"], format!("{}M", sizes.esp_mib));
    assert_eq!(images["data.ext4"]["size"], format!("{}M", sizes.data_mib));
    let by_name: BTreeMap<_, _> = got.iter().cloned().collect();
    assert_eq!(by_name["rootA"]["image"], "rootfs.squashfs");
    assert!(
        !by_name["rootB"].contains_key("image"),
        "slot B starts empty"
    );
}

#[test]
fn the_overlay_and_its_units_are_the_images() {
    let defconfig = defconfig();
    // image/overlay first; the board's own overlay adds only what Buildroot's packages
    // need on top (a drop-in for its sshd.service) and replaces none of its files.
    let overlays: Vec<PathBuf> = defconfig["BR2_ROOTFS_OVERLAY"]
        .trim_matches('"')
        .split_whitespace()
        .map(external_path)
        .collect();
    let shared = workspace().join("image/overlay").canonicalize().unwrap();
    assert_eq!(
        overlays.first(),
        Some(&shared),
        "BR2_ROOTFS_OVERLAY must start with image/overlay"
    );
    for other in overlays.iter().skip(1) {
        let mut files = Vec::new();
        files_under(other, &mut files);
        for file in files {
            let rel = file.strip_prefix(other).unwrap();
            assert!(
                !shared.join(rel).exists(),
                "{} replaces image/overlay's {}",
                file.display(),
                rel.display()
            );
        }
    }
    let mut modes = Vec::new();
    let mut enabled = Vec::new();
    let mut disabled = Vec::new();
    let mut links = Vec::new();
    for line in read(&format!("{BOARD}/units.txt")).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["mode", mode, path] => {
                modes.push((u32::from_str_radix(mode, 8).unwrap(), (*path).to_owned()));
            }
            ["enable", wants, unit] => enabled.push(((*wants).to_owned(), (*unit).to_owned())),
            ["disable", link] => disabled.push((*link).to_owned()),
            ["link", path, target] => links.push(((*path).to_owned(), (*target).to_owned())),
            other => panic!("units.txt: unknown line {other:?}"),
        }
    }
    // The checkout keeps no modes (git knows 644 and 755 only, and the overlay's scripts are
    // 644 there), so the tree sets every mode the image crate sets that is not 644.
    let want_modes: Vec<(u32, String)> = image::overlay::FILES
        .iter()
        .filter(|f| f.mode != 0o644)
        .map(|f| (f.mode, f.path.to_owned()))
        .collect();
    assert_eq!(modes, want_modes, "{FIX}: mode lines");
    let want_enabled: Vec<(String, String)> = image::overlay::ENABLED
        .iter()
        .map(|(w, u)| ((*w).to_owned(), (*u).to_owned()))
        .collect();
    assert_eq!(enabled, want_enabled, "{FIX}: enable lines");
    let want_disabled: Vec<String> = image::overlay::DISABLED
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    assert_eq!(disabled, want_disabled, "{FIX}: disable lines");
    let want_links: Vec<(String, String)> = image::overlay::LINKS
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(links, want_links, "{FIX}: link lines");
    for (_, unit) in &enabled {
        let ours = unit.strip_prefix("/usr/lib/systemd/system/");
        if let Some(name) = ours.filter(|n| n.starts_with("appliance-")) {
            let in_overlay = workspace()
                .join("image/overlay/usr/lib/systemd/system")
                .join(name);
            assert!(
                in_overlay.exists(),
                "{name} is enabled but not in image/overlay"
            );
        }
    }
}

#[test]
fn grub_gets_the_images_config_modules_and_boot_state() {
    let defconfig = defconfig();
    assert_eq!(
        external_path(&defconfig["BR2_TARGET_GRUB2_BUILTIN_CONFIG_EFI"]),
        workspace()
            .join("image/src/grub.cfg")
            .canonicalize()
            .unwrap()
    );
    // GRUB_MODULES is private to image/src/boot.rs: read its list from the source.
    let boot = read("image/src/boot.rs");
    let start = boot.find("const GRUB_MODULES").unwrap();
    let list = &boot[start..];
    let list = &list[list.find("= &[").unwrap() + 4..list.find("];").unwrap()];
    let modules: Vec<&str> = list
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    let ours: Vec<&str> = defconfig["BR2_TARGET_GRUB2_BUILTIN_MODULES_EFI"]
        .trim_matches('"')
        .split_whitespace()
        .collect();
    assert_eq!(ours, modules);
    for (on_esp, block) in image::bootstate::initial_blocks().unwrap() {
        let name = on_esp.rsplit('/').next().unwrap();
        let committed = fs::read(workspace().join(BOARD).join(name)).unwrap();
        assert!(
            committed == block,
            "{BOARD}/{name} differs from bootstate::initial_blocks()"
        );
        let genimage = read(&format!("{BOARD}/genimage.cfg"));
        assert!(genimage.contains(&format!("file {on_esp} {{")), "{on_esp}");
    }
}

/// Names and symbols of image/kernel-requirements.txt.
fn requirements() -> BTreeMap<String, Vec<String>> {
    read("image/kernel-requirements.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_owned);
            let name = words.next().unwrap();
            let symbols: Vec<String> = words.collect();
            assert!(!symbols.is_empty(), "requirement {name} names no symbol");
            (name, symbols)
        })
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// What the VM tests ask of the guest kernel: modules they load, link kinds they create,
/// filesystems they mount and devices QEMU gives the guest.
fn used_by_vm_tests() -> BTreeSet<String> {
    let mut files = Vec::new();
    files_under(&workspace().join("tests/vm"), &mut files);
    let mut used = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '`' | ';' | '(' | ')'))
            .filter(|w| !w.is_empty())
            .collect();
        for (i, pair) in words.windows(2).enumerate() {
            let name = pair[1].trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let is_name = !name.is_empty()
                && !pair[1].starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            let before = &words[i.saturating_sub(8)..i];
            let wanted = match pair[0] {
                "modprobe" | "-device" => true,
                // `ip link add NAME type KIND`, not the word in prose.
                "type" => before.contains(&"link") && before.contains(&"add"),
                "-t" => before.last() == Some(&"mount"),
                _ => false,
            };
            if wanted && is_name {
                used.insert(name.to_owned());
            }
        }
    }
    used
}

#[test]
fn the_kernel_fragment_covers_the_requirements_and_the_vm_tests() {
    let requirements = requirements();
    let fragment: BTreeMap<String, String> = read(&format!("{BOARD}/linux.fragment"))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let defconfig = defconfig();
    let mut required = BTreeSet::new();
    for (name, symbols) in &requirements {
        for s in symbols {
            required.insert(s.clone());
            if s.starts_with("BR2_") {
                assert_eq!(
                    defconfig.get(s).map(String::as_str),
                    Some("y"),
                    "{name}: {s}"
                );
            } else {
                assert!(
                    s.starts_with("CONFIG_"),
                    "{name}: {s} is no CONFIG_ or BR2_ symbol"
                );
                let value = fragment.get(s).map(String::as_str);
                assert!(
                    matches!(value, Some("y" | "m")),
                    "{name} needs {s}, which linux.fragment sets to {value:?}"
                );
            }
        }
    }
    // The fragment asks for nothing the list does not say why it needs.
    for s in fragment.keys() {
        assert!(
            required.contains(s),
            "linux.fragment sets {s}, which kernel-requirements.txt lacks"
        );
    }
    assert_eq!(
        external_path(&defconfig["BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES"]),
        workspace()
            .join(BOARD)
            .join("linux.fragment")
            .canonicalize()
            .unwrap()
    );
    let used = used_by_vm_tests();
    for must in ["zfs", "wireguard", "vlan", "nfs4", "virtio-net-pci"] {
        assert!(
            used.contains(must),
            "the scan of tests/vm missed {must}: {used:?}"
        );
    }
    let missing: Vec<&String> = used
        .iter()
        .filter(|u| !requirements.contains_key(*u))
        .collect();
    assert!(
        missing.is_empty(),
        "the VM tests use {missing:?}, which image/kernel-requirements.txt does not list"
    );
}
