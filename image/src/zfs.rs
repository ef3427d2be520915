//! The zfs kernel module. Debian ships it only as source (zfs-dkms, in contrib), so it is
//! built in a throwaway mmdebstrap chroot with the linux-headers of the image's kernel and
//! zfs-dkms of the image's zfsutils-linux, and the result is cached by (kernel version, zfs
//! version): the first build takes about 10 minutes on 2 cores, later ones copy a few MiB.
//! Nothing is installed on the host (dkms runs inside the chroot).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Took, run};
use crate::rootfs::{PACKAGES_EPOCH, RootfsSpec};

/// Bumped when the way the module is built changes, so that old cache entries are not
/// reused.
const MODULE_FORMAT: u32 = 1;

/// Where dkms installs modules under /usr/lib/modules/<kernel>/, inside the build chroot and
/// in the image alike; depmod ranks `updates` above the kernel's own tree.
pub const MODULE_DIR: &str = "updates/dkms";

/// What the module is built from, read from the image's package database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    /// The kernel's release name, e.g. `6.1.0-56-amd64` (`uname -r`, the modules directory).
    pub kernel: String,
    /// The Debian version of `linux-image-<kernel>`; the headers are pinned to it.
    pub kernel_package_version: String,
    /// The Debian version of zfsutils-linux; zfs-dkms is pinned to it, since the tools and
    /// the module must come from the same release.
    pub zfs_version: String,
}

impl ModuleSpec {
    /// The versions in the root tree `tree` whose kernel is `kernel`.
    pub fn from_tree(tree: &Path, kernel: &str) -> Result<ModuleSpec> {
        let status_path = tree.join("var/lib/dpkg/status");
        let status = fs::read_to_string(&status_path)
            .with_context(|| format!("reading {}", status_path.display()))?;
        let image = format!("linux-image-{kernel}");
        let Some(kernel_package_version) = package_version(&status, &image) else {
            bail!("{image} is not installed in the root tree: cannot pick matching headers");
        };
        let Some(zfs_version) = package_version(&status, "zfsutils-linux") else {
            bail!("zfsutils-linux is not installed in the root tree (it is in rootfs::PACKAGES)");
        };
        Ok(ModuleSpec {
            kernel: kernel.to_owned(),
            kernel_package_version,
            zfs_version,
        })
    }

    /// The cache entry's directory name: the key is (kernel version, zfs version).
    pub fn cache_name(&self) -> String {
        let name = format!(
            "zfs-module-{}-{}-v{MODULE_FORMAT}",
            self.kernel, self.zfs_version
        );
        // A Debian epoch (`1:2.1.11-1`) would put a colon in a path.
        name.replace(':', "_")
    }

    /// The upstream part of the zfs version, which is what dkms calls the module version.
    fn dkms_version(&self) -> &str {
        let without_epoch = self
            .zfs_version
            .split_once(':')
            .map_or(self.zfs_version.as_str(), |(_, v)| v);
        without_epoch
            .rsplit_once('-')
            .map_or(without_epoch, |(upstream, _)| upstream)
    }

    /// mmdebstrap of a build chroot that installs the headers and zfs-dkms (whose postinst
    /// builds the module for every kernel with headers), builds it explicitly if the
    /// postinst did not, and copies the modules into the existing directory `out`.
    fn mmdebstrap(&self, rootfs: &RootfsSpec, out: &Path) -> Command {
        let kernel = &self.kernel;
        let modules = format!("/usr/lib/modules/{kernel}/{MODULE_DIR}");
        let build_if_missing = format!(
            "ls \"$1\"{modules}/zfs.ko* >/dev/null 2>&1 || \
             chroot \"$1\" dkms install -m zfs -v {} -k {kernel}",
            self.dkms_version()
        );
        let mut cmd = Command::new("mmdebstrap");
        cmd.env("SOURCE_DATE_EPOCH", PACKAGES_EPOCH.to_string())
            .arg("--variant=apt")
            // Nothing of the chroot is kept but the modules the hook copies out.
            .arg("--format=null")
            .arg(format!("--components={}", rootfs.components.join(",")))
            .arg(format!(
                "--include=build-essential,dkms,linux-headers-{kernel}={},zfs-dkms={}",
                self.kernel_package_version, self.zfs_version
            ))
            .args(["--dpkgopt=path-exclude=/usr/share/man/*"])
            .args(["--dpkgopt=path-exclude=/usr/share/doc/*"])
            .arg(format!("--customize-hook={build_if_missing}"))
            .arg(format!(
                "--customize-hook=sync-out {modules} {}",
                out.display()
            ))
            .arg(&rootfs.suite)
            .arg("/dev/null")
            .args(&rootfs.mirrors);
        cmd
    }
}

/// The `Version:` of `package` in a dpkg status file, if it is installed.
pub fn package_version(status: &str, package: &str) -> Option<String> {
    status.split("\n\n").find_map(|stanza| {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        (name == Some(package) && installed)
            .then_some(version)
            .flatten()
            .map(str::to_owned)
    })
}

/// The cached module directory (the .ko files of `updates/dkms`), built first when the
/// cache has no entry for `spec`.
pub fn cached_module(spec: &ModuleSpec, rootfs: &RootfsSpec, cache: &Path) -> Result<PathBuf> {
    let entry = cache.join(spec.cache_name());
    let modules = entry.join("dkms");
    if modules.join("zfs.ko").is_file() {
        tracing::info!("zfs module cached: {}", entry.display());
        return Ok(modules);
    }
    let partial = cache.join(format!("{}.partial", spec.cache_name()));
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .with_context(|| format!("removing the unfinished {}", partial.display()))?;
    }
    fs::create_dir_all(partial.join("dkms"))
        .with_context(|| format!("creating {}", partial.display()))?;
    tracing::info!(
        "building the zfs module {} for kernel {} from zfs-dkms in a build chroot \
         (about 10 minutes on 2 cores; cached afterwards as {})",
        spec.zfs_version,
        spec.kernel,
        entry.display()
    );
    let t = Instant::now();
    run(&mut spec.mmdebstrap(rootfs, &partial.join("dkms"))).with_context(|| {
        format!(
            "building the zfs module in a chroot (linux-headers-{}={} and zfs-dkms={} must \
             still be on the mirror; if the kernel moved on, delete the cached \
             rootfs-*.tar so the root gets the current kernel)",
            spec.kernel, spec.kernel_package_version, spec.zfs_version
        )
    })?;
    if !partial.join("dkms/zfs.ko").is_file() {
        bail!(
            "the zfs-dkms build chroot produced no zfs.ko in {}; its log above says why",
            partial.display()
        );
    }
    if entry.exists() {
        fs::remove_dir_all(&entry).with_context(|| format!("removing {}", entry.display()))?;
    }
    fs::rename(&partial, &entry)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    tracing::info!("zfs module built in {}: {}", Took(t), entry.display());
    Ok(modules)
}

/// Puts the modules into the root tree and refreshes its module index, so that
/// `modprobe zfs` finds them (and their dependencies, spl and friends).
pub fn install(modules: &Path, tree: &Path, kernel: &str) -> Result<()> {
    let to = tree.join("usr/lib/modules").join(kernel).join(MODULE_DIR);
    fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    let mut names = Vec::new();
    for entry in fs::read_dir(modules).with_context(|| format!("reading {}", modules.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = to.join(name);
        fs::copy(&path, &target).with_context(|| format!("installing {}", path.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", target.display()))?;
        names.push(name.to_string_lossy().into_owned());
    }
    names.sort();
    // The tree's own depmod, so the index format is the one the image's kmod reads.
    run(Command::new("chroot")
        .arg(tree)
        .args(["/usr/sbin/depmod", "-a", kernel]))
    .context("running depmod in the root tree")?;
    tracing::info!("zfs modules installed: {}", names.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: zfsutils-linux
Status: install ok installed
Priority: optional
Version: 2.1.11-1+deb12u1

Package: linux-image-6.1.0-56-amd64
Status: deinstall ok config-files
Version: 6.1.190-1

Package: linux-image-6.1.0-56-amd64
Status: install ok installed
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Description: Linux 6.1 for 64-bit PCs (signed)
 Version: not a field, a continuation line
";

    fn spec() -> ModuleSpec {
        ModuleSpec {
            kernel: "6.1.0-56-amd64".to_owned(),
            kernel_package_version: "6.1.192-2".to_owned(),
            zfs_version: "2.1.11-1+deb12u1".to_owned(),
        }
    }

    #[test]
    fn versions_come_from_installed_packages_only() {
        assert_eq!(
            package_version(STATUS, "linux-image-6.1.0-56-amd64").as_deref(),
            Some("6.1.192-2")
        );
        assert_eq!(
            package_version(STATUS, "zfsutils-linux").as_deref(),
            Some("2.1.11-1+deb12u1")
        );
        assert_eq!(package_version(STATUS, "zfs-dkms"), None);
    }

    #[test]
    fn the_cache_key_is_the_kernel_and_zfs_versions() {
        let a = spec();
        assert_eq!(
            a.cache_name(),
            "zfs-module-6.1.0-56-amd64-2.1.11-1+deb12u1-v1"
        );
        let mut b = a.clone();
        b.kernel = "6.1.0-57-amd64".to_owned();
        assert_ne!(a.cache_name(), b.cache_name());
        b = a.clone();
        b.zfs_version = "1:2.1.12-1".to_owned();
        assert_eq!(b.cache_name(), "zfs-module-6.1.0-56-amd64-1_2.1.12-1-v1");
    }

    #[test]
    fn dkms_gets_the_upstream_version() {
        assert_eq!(spec().dkms_version(), "2.1.11");
        let mut s = spec();
        s.zfs_version = "1:2.2.0-rc1-2".to_owned();
        assert_eq!(s.dkms_version(), "2.2.0-rc1");
    }

    #[test]
    fn the_chroot_pins_headers_and_dkms_to_the_image() {
        let cmd = spec().mmdebstrap(&RootfsSpec::default(), Path::new("/c/out"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--components=main,contrib".to_owned()));
        assert!(
            args.contains(
                &"--include=build-essential,dkms,linux-headers-6.1.0-56-amd64=6.1.192-2,\
              zfs-dkms=2.1.11-1+deb12u1"
                    .to_owned()
            )
        );
        assert!(
            args.contains(
                &"--customize-hook=sync-out /usr/lib/modules/6.1.0-56-amd64/updates/dkms /c/out"
                    .to_owned()
            )
        );
        assert!(
            args.iter()
                .any(|a| a.contains("dkms install -m zfs -v 2.1.11"))
        );
    }
}
