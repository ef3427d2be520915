//! The GPT disk image: ESP, root A, root B, data. Built from files, without loop devices:
//! each filesystem is made in its own file and copied to its offset.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Took, run};

pub const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// EFI System Partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Root partition (x86-64) of the Discoverable Partitions Specification, for both slots.
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Linux filesystem data.
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// One partition of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub label: &'static str,
    pub type_guid: &'static str,
    /// Fixed, so that the same inputs give the same disk (GPT would otherwise pick random
    /// ones).
    pub unique_guid: &'static str,
    pub start_mib: u64,
    pub size_mib: u64,
}

/// Sizes of the layout in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub esp_mib: u64,
    pub slot_mib: u64,
    pub data_mib: u64,
}

impl Default for Sizes {
    /// ESP: GRUB and its 1 KiB environment need little, but 256 MiB leaves room for unified
    /// kernel images later. Slots: the root squashfs is about 230 MiB today; 1 GiB leaves
    /// four times that for ZFS, Samba and growth, since a slot's size cannot change after
    /// flashing. Data: small in the image (the installer grows it to the disk).
    fn default() -> Self {
        Sizes {
            esp_mib: 256,
            slot_mib: 1024,
            data_mib: 512,
        }
    }
}

pub const DISK_GUID: &str = "6B8E5A2C-1D3F-4C5B-9A7E-A9A11A4CE000";

/// The partitions, 1 MiB aligned, in disk order.
pub fn layout(s: Sizes) -> Vec<Partition> {
    let esp_start = 1;
    let a_start = esp_start + s.esp_mib;
    let b_start = a_start + s.slot_mib;
    let data_start = b_start + s.slot_mib;
    vec![
        Partition {
            number: 1,
            label: "ESP",
            type_guid: TYPE_ESP,
            unique_guid: "6B8E5A2C-1D3F-4C5B-9A7E-A9A11A4CE001",
            start_mib: esp_start,
            size_mib: s.esp_mib,
        },
        Partition {
            number: 2,
            label: "rootA",
            type_guid: TYPE_ROOT_X86_64,
            unique_guid: "6B8E5A2C-1D3F-4C5B-9A7E-A9A11A4CE002",
            start_mib: a_start,
            size_mib: s.slot_mib,
        },
        Partition {
            number: 3,
            label: "rootB",
            type_guid: TYPE_ROOT_X86_64,
            unique_guid: "6B8E5A2C-1D3F-4C5B-9A7E-A9A11A4CE003",
            start_mib: b_start,
            size_mib: s.slot_mib,
        },
        Partition {
            number: 4,
            label: "data",
            type_guid: TYPE_LINUX_DATA,
            unique_guid: "6B8E5A2C-1D3F-4C5B-9A7E-A9A11A4CE004",
            start_mib: data_start,
            size_mib: s.data_mib,
        },
    ]
}

/// Total disk size: the partitions plus 1 MiB at the end for the backup GPT.
pub fn disk_size_mib(parts: &[Partition]) -> u64 {
    parts
        .iter()
        .map(|p| p.start_mib + p.size_mib)
        .max()
        .unwrap_or(1)
        + 1
}

fn sgdisk(disk: &Path, parts: &[Partition]) -> Command {
    let mut cmd = Command::new("sgdisk");
    cmd.arg("--clear").arg(format!("--disk-guid={DISK_GUID}"));
    for p in parts {
        let n = p.number;
        let first = p.start_mib * MIB / SECTOR;
        let last = (p.start_mib + p.size_mib) * MIB / SECTOR - 1;
        cmd.arg(format!("--new={n}:{first}:{last}"))
            .arg(format!("--typecode={n}:{}", p.type_guid))
            .arg(format!("--change-name={n}:{}", p.label))
            .arg(format!("--partition-guid={n}:{}", p.unique_guid));
    }
    cmd.arg(disk);
    cmd
}

/// Makes the FAT32 ESP image with the bootloader and the boot state copies found in
/// `boot_dir` (as [`crate::boot::build`] writes them).
pub fn make_esp(out: &Path, size_mib: u64, efi: &Path, boot_dir: &Path) -> Result<()> {
    if out.exists() {
        fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    }
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ESP", "-i", "a9a11a4c", "-C"])
        .arg(out)
        .arg((size_mib * 1024).to_string()))
    .context("making the ESP filesystem")?;
    let image = out.to_string_lossy().into_owned();
    for dir in ["::/EFI", "::/EFI/BOOT", "::/EFI/appliance"] {
        run(mtools("mmd").args(["-i", &image, dir]))
            .with_context(|| format!("creating {dir} on the ESP"))?;
    }
    run(mtools("mcopy")
        .args(["-i", &image])
        .arg(efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))
    .context("copying GRUB to the ESP")?;
    for on_esp in crate::bootstate::COPIES {
        let name = on_esp.rsplit('/').next().unwrap_or(on_esp);
        run(mtools("mcopy")
            .args(["-i", &image])
            .arg(boot_dir.join(name))
            .arg(format!("::/{on_esp}")))
        .context("copying the boot state to the ESP")?;
    }
    Ok(())
}

fn mtools(tool: &str) -> Command {
    let mut c = Command::new(tool);
    // mtools checks the geometry against a floppy's; an image file has none.
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}

/// Makes the ext4 data filesystem from the contents of `dir` (no mount needed).
pub fn make_data(out: &Path, size_mib: u64, dir: &Path, epoch: u64) -> Result<()> {
    if out.exists() {
        fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    }
    run(Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args([
            "-q",
            "-L",
            "data",
            "-U",
            "a9a11a4c-0000-4000-8000-00000000da7a",
        ])
        .args([
            "-E",
            "root_owner=0:0,hash_seed=a9a11a4c-0000-4000-8000-000000005eed",
        ])
        .arg("-d")
        .arg(dir)
        .arg(out)
        .arg(format!("{size_mib}M")))
    .context("making the data filesystem")?;
    Ok(())
}

/// The filesystem images that go into the partitions (`None` leaves a partition zeroed).
#[derive(Debug)]
pub struct Contents<'a> {
    pub esp: &'a Path,
    pub root_a: &'a Path,
    pub root_b: Option<&'a Path>,
    pub data: &'a Path,
}

/// Writes the partition table and the filesystems into a new sparse disk image.
pub fn assemble(out: &Path, sizes: Sizes, c: &Contents<'_>) -> Result<()> {
    let t = Instant::now();
    let parts = layout(sizes);
    let partial = out.with_extension("img.partial");
    {
        let f =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        f.set_len(disk_size_mib(&parts) * MIB)
            .with_context(|| format!("sizing {}", partial.display()))?;
    }
    run(&mut sgdisk(&partial, &parts)).context("writing the partition table")?;
    let by_label = |label: &str| parts.iter().find(|p| p.label == label);
    let writes = [
        ("ESP", Some(c.esp)),
        ("rootA", Some(c.root_a)),
        ("rootB", c.root_b),
        ("data", Some(c.data)),
    ];
    for (label, file) in writes {
        let (Some(part), Some(file)) = (by_label(label), file) else {
            continue;
        };
        copy_into(&partial, part, file)?;
    }
    fs::rename(&partial, out).with_context(|| format!("renaming {}", partial.display()))?;
    tracing::info!(
        "disk image {} ({} MiB) assembled in {}",
        out.display(),
        disk_size_mib(&parts),
        Took(t)
    );
    Ok(())
}

/// Copies a filesystem image to its partition, skipping zero blocks so the disk stays sparse.
fn copy_into(disk: &Path, part: &Partition, file: &Path) -> Result<()> {
    let len = fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if len > part.size_mib * MIB {
        bail!(
            "{} is {} MiB, more than partition {} ({} MiB); raise the size in image/src/disk.rs",
            file.display(),
            len.div_ceil(MIB),
            part.label,
            part.size_mib
        );
    }
    let mut from = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut to = OpenOptions::new()
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let base = part.start_mib * MIB;
    let mut buf = vec![0u8; MIB as usize];
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut from, &mut buf)
            .with_context(|| format!("reading {}", file.display()))?;
        let Some(chunk) = buf.get(..n) else { break };
        if n == 0 {
            break;
        }
        if chunk.iter().any(|b| *b != 0) {
            to.seek(SeekFrom::Start(base + offset))?;
            to.write_all(chunk)
                .with_context(|| format!("writing partition {}", part.label))?;
        }
        offset += n as u64;
    }
    to.sync_all()
        .with_context(|| format!("syncing {}", disk.display()))?;
    Ok(())
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match f.read(rest)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_contiguous_and_aligned() {
        let parts = layout(Sizes::default());
        let labels: Vec<&str> = parts.iter().map(|p| p.label).collect();
        assert_eq!(labels, ["ESP", "rootA", "rootB", "data"]);
        assert_eq!(parts[0].start_mib, 1);
        for w in parts.windows(2) {
            assert_eq!(w[0].start_mib + w[0].size_mib, w[1].start_mib);
        }
        assert_eq!(parts[1].size_mib, parts[2].size_mib);
        assert_eq!(disk_size_mib(&parts), 1 + 256 + 1024 + 1024 + 512 + 1);
    }

    #[test]
    fn sgdisk_gets_sector_ranges_types_and_labels() {
        let cmd = sgdisk(Path::new("d.img"), &layout(Sizes::default()));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--new=1:2048:526335".to_owned()), "{args:?}");
        assert!(args.contains(&format!("--typecode=2:{TYPE_ROOT_X86_64}")));
        assert!(args.contains(&"--change-name=3:rootB".to_owned()));
        assert_eq!(args.last().map(String::as_str), Some("d.img"));
    }
}
