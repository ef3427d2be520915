//! The root filesystem: Debian packages assembled by mmdebstrap into a tarball that is cached
//! by its inputs, then unpacked, given our overlay and binaries, and packed as a squashfs.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

use crate::cmd::{Took, run};
use crate::overlay;

/// Bumped whenever the way the tarball is made changes in a way the spec fields below do
/// not show (hooks, dpkg options), so that old cache entries are not reused.
const TARBALL_FORMAT: u32 = 1;

/// 2025-01-01T00:00:00Z: the timestamp of every file in the cached package tarball. It is a
/// constant, not the commit time, so that a new commit does not invalidate the cache.
pub const PACKAGES_EPOCH: u64 = 1_735_689_600;

/// What the package tarball is made of; its hash is the cache key.
#[derive(Debug, Clone)]
pub struct RootfsSpec {
    pub suite: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub mirrors: Vec<String>,
}

/// Debian packages of the root. The kernel and initramfs-tools build the initrd inside the
/// chroot; dbus is what systemctl, logind and hostnamectl talk through. The storage
/// packages are in, with their services disabled (stored starts them with its state on
/// /data). The zfs module is not a package of the root: see `zfs`.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "linux-image-amd64",
    "initramfs-tools",
    "iproute2",
    "nftables",
    "wireguard-tools",
    "openssh-server",
    "procps",
    "iputils-ping",
    "zfsutils-linux",
    "samba",
    "nfs-kernel-server",
    // The VM tests read a share back with it; on a box it checks a share from the inside.
    "smbclient",
    // udhcpc, a DHCP client independent of netd: the VM tests lease an address from netd's
    // server with it, and on a box it checks the LAN's DHCP from the inside.
    "busybox",
    // nss-systemd: NAS users' accounts are JSON user records stored writes to /run/userdb
    // (the root's /etc/passwd is read-only); its postinst adds `systemd` to nsswitch.conf.
    "libnss-systemd",
    // The roots dnsd's HTTPS client trusts (block lists, DoH upstreams): without them it
    // cannot build its client and does not start.
    "ca-certificates",
];

impl Default for RootfsSpec {
    fn default() -> Self {
        let mirror = "http://deb.debian.org/debian";
        let security = "http://deb.debian.org/debian-security";
        RootfsSpec {
            suite: "bookworm".to_owned(),
            components: vec!["main".to_owned(), "contrib".to_owned()],
            packages: PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
            mirrors: vec![
                format!("deb {mirror} bookworm main contrib"),
                format!("deb {mirror} bookworm-updates main contrib"),
                format!("deb {security} bookworm-security main contrib"),
            ],
        }
    }
}

/// Files dpkg leaves out: documentation and translations nobody reads on an appliance
/// (copyright files stay, the licenses require them).
const DPKG_OPTIONS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
];

/// Runs before the kernel is installed, so that the initrd update-initramfs builds in the
/// chroot can mount a squashfs root (MODULES=most leaves squashfs out).
const ESSENTIAL_HOOK: &str = "mkdir -p \"$1/usr/share/initramfs-tools/modules.d\" && \
     echo squashfs > \"$1/usr/share/initramfs-tools/modules.d/appliance\"";

impl RootfsSpec {
    /// A hash of everything that goes into the tarball.
    pub fn cache_key(&self) -> String {
        let mut text = format!("format {TARBALL_FORMAT}\nepoch {PACKAGES_EPOCH}\n");
        let _ = writeln!(text, "suite {}", self.suite);
        let _ = writeln!(text, "components {}", self.components.join(","));
        let mut packages = self.packages.clone();
        packages.sort();
        let _ = writeln!(text, "packages {}", packages.join(","));
        for m in &self.mirrors {
            let _ = writeln!(text, "mirror {m}");
        }
        for o in DPKG_OPTIONS {
            let _ = writeln!(text, "dpkgopt {o}");
        }
        let _ = writeln!(text, "essential-hook {ESSENTIAL_HOOK}");
        let digest = Sha256::digest(text.as_bytes());
        hex::encode(digest.get(..8).unwrap_or(&digest))
    }

    fn mmdebstrap(&self, out: &Path) -> Command {
        let mut cmd = Command::new("mmdebstrap");
        cmd.env("SOURCE_DATE_EPOCH", PACKAGES_EPOCH.to_string())
            .arg("--variant=minbase")
            .arg("--format=tar")
            .arg(format!("--components={}", self.components.join(",")))
            .arg(format!("--include={}", self.packages.join(",")))
            .arg(format!("--essential-hook={ESSENTIAL_HOOK}"));
        for o in DPKG_OPTIONS {
            cmd.arg(format!("--dpkgopt={o}"));
        }
        cmd.arg(&self.suite).arg(out).args(&self.mirrors);
        cmd
    }
}

/// The package tarball from the cache, made with mmdebstrap first when it is not there.
pub fn package_tarball(spec: &RootfsSpec, cache: &Path) -> Result<PathBuf> {
    let path = cache.join(format!("rootfs-{}-{}.tar", spec.suite, spec.cache_key()));
    if path.is_file() {
        tracing::info!("package tarball cached: {}", path.display());
        return Ok(path);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let partial = path.with_extension("tar.partial");
    tracing::info!(
        "building the package tarball with mmdebstrap ({} packages; about a minute)",
        spec.packages.len()
    );
    let t = Instant::now();
    run(&mut spec.mmdebstrap(&partial)).context("assembling the root with mmdebstrap")?;
    fs::rename(&partial, &path)
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    tracing::info!("package tarball built in {}: {}", Took(t), path.display());
    Ok(path)
}

/// Unpacks the tarball into an empty `tree` (owners, modes and file capabilities kept).
/// The previous build's tree is moved aside and deleted on a thread, because deleting
/// 20,000 files took 10 to 40 s on these machines; join the returned handle before exiting.
pub fn unpack(tarball: &Path, tree: &Path) -> Result<Option<thread::JoinHandle<()>>> {
    let mut cleanup = None;
    if tree.exists() {
        let old = tree.with_extension(format!("old-{}", std::process::id()));
        fs::rename(tree, &old).with_context(|| format!("moving {} aside", tree.display()))?;
        cleanup = Some(thread::spawn(move || {
            if let Err(e) = fs::remove_dir_all(&old) {
                tracing::warn!("could not remove {}: {e}", old.display());
            }
        }));
    }
    fs::create_dir_all(tree).with_context(|| format!("creating {}", tree.display()))?;
    let t = Instant::now();
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(tarball)
        .arg("-C")
        .arg(tree))
    .context("unpacking the package tarball")?;
    tracing::info!("unpacked the package tarball in {}", Took(t));
    Ok(cleanup)
}

/// What goes on top of the packages.
#[derive(Debug, Clone, Default)]
pub struct Customization {
    /// Our executables, installed as /usr/bin/<file name>.
    pub binaries: Vec<PathBuf>,
    /// Development image: root logs in on the console without a password.
    pub dev: bool,
    /// What the root says it is (/usr/lib/appliance/release): the updater compares bundles
    /// against it.
    pub release: crate::install::Release,
    /// Public keys (files from `keygen`) whose bundles this release accepts, and how many
    /// of them must sign (/usr/share/appliance/update-keys).
    pub update_keys: Vec<PathBuf>,
    pub update_threshold: usize,
}

/// The release file and the update keyring.
fn write_release(tree: &Path, c: &Customization) -> Result<()> {
    let dir = tree.join("usr/lib/appliance");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("release"), c.release.render()).context("writing the release file")?;
    let mut keys = Vec::new();
    for k in &c.update_keys {
        keys.push(crate::bundle::keys::load_public(k)?);
    }
    let ring = crate::bundle::Keyring::new(keys, c.update_threshold);
    if ring.threshold > ring.keys.len().max(1) {
        anyhow::bail!(
            "--update-threshold {} needs at least that many --update-key files",
            ring.threshold
        );
    }
    let mut text = String::from(
        "# Keys whose signatures this release accepts on OTA bundles (appliance-image keygen).\n",
    );
    let _ = writeln!(text, "threshold {}", ring.threshold);
    for k in &ring.keys {
        let _ = writeln!(text, "{k} {}", k.id());
    }
    let share = tree.join("usr/share/appliance");
    fs::create_dir_all(&share).with_context(|| format!("creating {}", share.display()))?;
    fs::write(share.join("update-keys"), text).context("writing the update keyring")?;
    Ok(())
}

/// Turns the unpacked package tree into the appliance root: overlay files, enabled units,
/// no per-machine secrets, and our binaries.
pub fn customize(tree: &Path, c: &Customization) -> Result<()> {
    // Host keys made by openssh-server's postinst would be shared by every box flashed from
    // this image; each box makes its own on /data at first boot.
    for entry in fs::read_dir(tree.join("etc/ssh")).context("reading etc/ssh")? {
        let path = entry?.path();
        let is_host_key = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ssh_host_"));
        if is_host_key {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    // Empty, so systemd puts a transient id on a tmpfs over it at boot;
    // appliance-machine-id.service then puts the one kept on /data in its place.
    fs::write(tree.join("etc/machine-id"), "").context("emptying etc/machine-id")?;
    for stale in ["vmlinuz.old", "initrd.img.old"] {
        let p = tree.join(stale);
        if p.symlink_metadata().is_ok() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    fs::create_dir_all(tree.join("data")).context("creating /data")?;
    fs::create_dir_all(tree.join("boot/efi")).context("creating /boot/efi")?;
    write_release(tree, c)?;

    for file in overlay::FILES {
        let path = tree.join(file.path.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, file.contents).with_context(|| format!("writing {}", file.path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))
            .with_context(|| format!("setting the mode of {}", file.path))?;
    }
    for (path, target) in overlay::LINKS {
        let link = tree.join(path.trim_start_matches('/'));
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("replacing {path}"))?;
        }
        symlink(target, &link).with_context(|| format!("linking {path} to {target}"))?;
    }
    sysusers(tree)?;
    for (wants, unit) in overlay::ENABLED {
        let dir = tree.join("etc/systemd/system").join(wants);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let link = dir.join(unit.rsplit('/').next().unwrap_or(unit));
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        symlink(unit, &link).with_context(|| format!("enabling {unit}"))?;
    }
    for unit in overlay::DISABLED {
        let link = tree.join("etc/systemd/system").join(unit);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("disabling {unit}"))?;
        }
    }
    if c.dev {
        // passwd -d, done on the file so no chroot is needed: an empty second field.
        let shadow = tree.join("etc/shadow");
        let text = fs::read_to_string(&shadow).context("reading etc/shadow")?;
        let mut out = String::new();
        for line in text.lines() {
            match line.split_once(':') {
                Some(("root", rest)) => {
                    let after = rest.split_once(':').map_or("", |(_, a)| a);
                    let _ = writeln!(out, "root::{after}");
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        fs::write(&shadow, out).context("writing etc/shadow")?;
    }
    for bin in &c.binaries {
        let Some(name) = bin.file_name() else {
            bail!("binary path {} has no file name", bin.display());
        };
        let to = tree.join("usr/bin").join(name);
        fs::copy(bin, &to).with_context(|| format!("installing {}", bin.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", to.display()))?;
    }
    Ok(())
}

/// The daemons' system users (usr/lib/sysusers.d), made now: at boot /etc is read-only.
/// Their ids are fixed in the file, so every build gives the same passwd and group; the
/// day of the shadow entries comes from SOURCE_DATE_EPOCH, which is pinned for that.
fn sysusers(tree: &Path) -> Result<()> {
    run(Command::new("systemd-sysusers")
        .env("SOURCE_DATE_EPOCH", "0")
        .arg("--root")
        .arg(tree))
    .context("creating the system users (systemd-sysusers, from the systemd package)")?;
    Ok(())
}

/// The kernel version installed in the tree (the name of its one /usr/lib/modules entry).
pub fn kernel_version(tree: &Path) -> Result<String> {
    let dir = tree.join("usr/lib/modules");
    let mut versions = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        versions.push(entry?.file_name().to_string_lossy().into_owned());
    }
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one kernel in /usr/lib/modules, found {versions:?}"),
    }
}

/// Packs the tree as a squashfs. gzip because GRUB's squash4 reader, which loads the kernel
/// and initrd out of the slot, does not know zstd; every file gets the same mtime so that the
/// same inputs give the same bytes.
pub fn squashfs(tree: &Path, out: &Path, epoch: u64) -> Result<()> {
    if out.exists() {
        fs::remove_file(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let t = Instant::now();
    tracing::info!("packing the root as squashfs (gzip; about a minute)");
    let epoch = epoch.to_string();
    run(Command::new("mksquashfs")
        // It refuses SOURCE_DATE_EPOCH next to the explicit times below.
        .env_remove("SOURCE_DATE_EPOCH")
        .arg(tree)
        .arg(out)
        // Level 6 gives the size of the default 9 (within 1%) in a quarter of the time.
        .args(["-noappend", "-no-progress", "-quiet", "-comp", "gzip"])
        .args(["-Xcompression-level", "6"])
        .args(["-mkfs-time", &epoch, "-all-time", &epoch])
        // /data is the mount point of the data partition; /dev, /proc, /run, /sys and
        // /tmp are mounted over at boot.
        .args([
            "-wildcards",
            "-e",
            "dev/*",
            "proc/*",
            "run/*",
            "sys/*",
            "tmp/*",
        ]))
    .context("packing the root filesystem")?;
    let size = fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    tracing::info!("squashfs {} MiB in {}", size >> 20, Took(t));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_follows_the_package_set_not_its_order() {
        let a = RootfsSpec::default();
        let mut b = a.clone();
        b.packages.reverse();
        assert_eq!(a.cache_key(), b.cache_key());
        b.packages.push("less".to_owned());
        assert_ne!(a.cache_key(), b.cache_key());
        let mut c = a.clone();
        c.mirrors.pop();
        assert_ne!(a.cache_key(), c.cache_key());
        assert_eq!(a.cache_key().len(), 16);
    }

    #[test]
    fn mmdebstrap_gets_the_contrib_component_and_every_package() {
        let cmd = RootfsSpec::default().mmdebstrap(Path::new("/tmp/x.tar"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--components=main,contrib".to_owned()));
        assert!(args.iter().any(|a| a.starts_with("--include=systemd,")));
        assert!(args.iter().any(|a| a.contains("linux-image-amd64")));
    }
}
