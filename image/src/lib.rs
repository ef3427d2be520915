//! The firmware image, host side: the read-only root filesystem assembled from Debian
//! packages, the GRUB A/B bootloader and the GPT disk image. See README.md for the layout.

pub mod boot;
pub mod bootstate;
pub mod bundle;
pub mod cmd;
pub mod disk;
pub mod grubenv;
pub mod install;
pub mod overlay;
pub mod rootfs;
pub mod zfs;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use sha2::{Digest as _, Sha256};

use crate::cmd::Took;

/// The disk image's file name inside the output directory.
pub const DISK_IMAGE: &str = "appliance.img";
/// The slot payload (what an OTA bundle will carry).
pub const ROOT_IMAGE: &str = "rootfs.squashfs";

/// What `appliance-image build` makes.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub cache: PathBuf,
    pub customization: rootfs::Customization,
    /// The mtime of every file in the root image.
    pub epoch: u64,
    pub sizes: disk::Sizes,
    /// SSH public keys (files) allowed to log in as root, put in /data/ssh/authorized_keys.
    pub authorized_keys: Vec<PathBuf>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub disk: PathBuf,
    pub root: PathBuf,
    pub root_sha256: String,
    pub kernel: String,
    /// The zfs release whose module is in the root.
    pub zfs: String,
}

/// Builds the disk image: package tarball (cached), root tree, zfs module (cached),
/// squashfs, GRUB, ESP, data, GPT. Each step logs when it starts and how long it took.
/// The package tarball and the zfs module made into `cache` if they are not there: what
/// [`build`] spends most of its time on (the network, dpkg, a DKMS build), none of which
/// needs the appliance's binaries, so that a build machine can run it while it compiles
/// them. [`build`] then finds both cached.
pub fn warm_cache(cache: &Path, work: &Path) -> Result<()> {
    let started = Instant::now();
    let spec = rootfs::RootfsSpec::default();
    let tarball = rootfs::package_tarball(&spec, cache)?;
    let tree = work.join("tree");
    let cleanup = rootfs::unpack(&tarball, &tree)?;
    let kernel = rootfs::kernel_version(&tree)?;
    let module = zfs::ModuleSpec::from_tree(&tree, &kernel)?;
    zfs::cached_module(&module, &spec, cache)?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    if let Some(c) = cleanup
        && c.join().is_err()
    {
        tracing::warn!("removing the previous root tree panicked");
    }
    tracing::info!("cache warm in {}: {}", Took(started), cache.display());
    Ok(())
}

pub fn build(o: &BuildOptions) -> Result<Built> {
    let started = Instant::now();
    let work = o.out.join("work");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    tracing::info!("[1/7] package tarball");
    let spec = rootfs::RootfsSpec::default();
    let tarball = rootfs::package_tarball(&spec, &o.cache)?;

    tracing::info!("[2/7] root tree");
    let tree = work.join("tree");
    let cleanup = rootfs::unpack(&tarball, &tree)?;
    rootfs::customize(&tree, &o.customization)?;
    let kernel = rootfs::kernel_version(&tree)?;

    tracing::info!("[3/7] zfs module (kernel {kernel})");
    let module = zfs::ModuleSpec::from_tree(&tree, &kernel)?;
    let modules = zfs::cached_module(&module, &spec, &o.cache)?;
    zfs::install(&modules, &tree, &kernel)?;

    tracing::info!("[4/7] root image");
    let root = o.out.join(ROOT_IMAGE);
    rootfs::squashfs(&tree, &root, o.epoch)?;
    let root_sha256 = sha256_file(&root)?;
    fs::write(
        o.out.join(format!("{ROOT_IMAGE}.sha256")),
        format!("{root_sha256}  {ROOT_IMAGE}\n"),
    )
    .context("writing the root image checksum")?;
    tracing::info!("root image sha256 {root_sha256}");

    tracing::info!("[5/7] bootloader");
    let t = Instant::now();
    let boot_dir = work.join("boot");
    boot::build(&boot_dir)?;
    let esp = work.join("esp.img");
    disk::make_esp(
        &esp,
        o.sizes.esp_mib,
        &boot_dir.join("BOOTX64.EFI"),
        &boot_dir,
    )?;
    tracing::info!("GRUB and ESP in {}", Took(t));

    tracing::info!("[6/7] data partition");
    let skel = work.join("data");
    data_skeleton(&skel, &o.authorized_keys)?;
    let data = work.join("data.img");
    disk::make_data(&data, o.sizes.data_mib, &skel, o.epoch)?;

    tracing::info!("[7/7] disk image");
    let disk_path = o.out.join(DISK_IMAGE);
    disk::assemble(
        &disk_path,
        o.sizes,
        &disk::Contents {
            esp: &esp,
            root_a: &root,
            root_b: None,
            data: &data,
        },
    )?;
    for f in [&esp, &data] {
        fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
    }
    if let Some(c) = cleanup
        && c.join().is_err()
    {
        tracing::warn!("removing the previous root tree panicked");
    }
    tracing::info!("image built in {}: {}", Took(started), disk_path.display());
    Ok(Built {
        disk: disk_path,
        root,
        root_sha256,
        kernel,
        zfs: module.zfs_version,
    })
}

/// The first contents of /data: directories whose modes matter, and the authorized SSH
/// keys if any; the services make the rest.
fn data_skeleton(dir: &Path, authorized_keys: &[PathBuf]) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let ssh = dir.join("ssh");
    fs::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", ssh.display()))?;
    if !authorized_keys.is_empty() {
        let mut keys = String::new();
        for k in authorized_keys {
            let text = fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
            keys.push_str(text.trim_end());
            keys.push('\n');
        }
        let path = ssh.join("authorized_keys");
        fs::write(&path, keys).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}
