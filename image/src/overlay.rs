//! Files the image puts over the Debian packages (the tree is image/overlay/), and the
//! units it enables and disables. They are compiled in so that `appliance-image` works from
//! any directory.

/// A file of the overlay.
#[derive(Debug, Clone, Copy)]
pub struct File {
    pub path: &'static str,
    pub mode: u32,
    pub contents: &'static str,
}

pub const FILES: &[File] = &[
    File {
        path: "/etc/fstab",
        mode: 0o644,
        contents: include_str!("../overlay/etc/fstab"),
    },
    File {
        path: "/etc/hostname",
        mode: 0o644,
        contents: include_str!("../overlay/etc/hostname"),
    },
    File {
        path: "/etc/hosts",
        mode: 0o644,
        contents: include_str!("../overlay/etc/hosts"),
    },
    File {
        path: "/etc/ssh/sshd_config.d/appliance.conf",
        mode: 0o644,
        contents: include_str!("../overlay/etc/ssh/sshd_config.d/appliance.conf"),
    },
    File {
        path: "/etc/systemd/journald.conf.d/appliance.conf",
        mode: 0o644,
        contents: include_str!("../overlay/etc/systemd/journald.conf.d/appliance.conf"),
    },
    File {
        path: "/usr/lib/appliance/boot-report",
        mode: 0o755,
        contents: include_str!("../overlay/usr/lib/appliance/boot-report"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-boot-report.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-boot-report.service"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-ssh-hostkeys.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-ssh-hostkeys.service"),
    },
    File {
        path: "/usr/lib/appliance/health-check",
        mode: 0o755,
        contents: include_str!("../overlay/usr/lib/appliance/health-check"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-health.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-health.service"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-boot-check.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-boot-check.service"),
    },
    File {
        path: "/usr/lib/systemd/system/emergency.service.d/appliance-reboot.conf",
        mode: 0o644,
        contents: include_str!(
            "../overlay/usr/lib/systemd/system/emergency.service.d/appliance-reboot.conf"
        ),
    },
    File {
        path: "/usr/lib/systemd/system/rescue.service.d/appliance-reboot.conf",
        mode: 0o644,
        contents: include_str!(
            "../overlay/usr/lib/systemd/system/rescue.service.d/appliance-reboot.conf"
        ),
    },
    File {
        path: "/etc/systemd/system.conf.d/appliance-watchdog.conf",
        mode: 0o644,
        contents: include_str!("../overlay/etc/systemd/system.conf.d/appliance-watchdog.conf"),
    },
    File {
        path: "/etc/sysctl.d/60-appliance.conf",
        mode: 0o644,
        contents: include_str!("../overlay/etc/sysctl.d/60-appliance.conf"),
    },
    File {
        path: "/usr/lib/sysusers.d/appliance.conf",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/sysusers.d/appliance.conf"),
    },
    File {
        path: "/usr/lib/tmpfiles.d/appliance.conf",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/tmpfiles.d/appliance.conf"),
    },
    File {
        path: "/usr/lib/appliance/machine-id",
        mode: 0o755,
        contents: include_str!("../overlay/usr/lib/appliance/machine-id"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-machine-id.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-machine-id.service"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-healthy.target",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-healthy.target"),
    },
    File {
        path: "/usr/lib/systemd/system/dnsd.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/dnsd.service"),
    },
    File {
        path: "/usr/lib/systemd/system/netd.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/netd.service"),
    },
    File {
        path: "/usr/lib/systemd/system/applianced.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/applianced.service"),
    },
    File {
        path: "/usr/lib/systemd/system/stored.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/stored.service"),
    },
    File {
        path: "/usr/lib/appliance/config-import",
        mode: 0o755,
        contents: include_str!("../overlay/usr/lib/appliance/config-import"),
    },
    File {
        path: "/usr/lib/systemd/system/appliance-config-import.service",
        mode: 0o644,
        contents: include_str!("../overlay/usr/lib/systemd/system/appliance-config-import.service"),
    },
    File {
        path: "/etc/samba/smb.conf",
        mode: 0o644,
        contents: include_str!("../overlay/etc/samba/smb.conf"),
    },
    File {
        path: "/etc/nfs.conf.d/appliance.conf",
        mode: 0o644,
        contents: include_str!("../overlay/etc/nfs.conf.d/appliance.conf"),
    },
];

/// Symbolic links (path, target): files the read-only root must show at a fixed path but
/// that are written at runtime. stored generates the NFS exports under /run; exportfs only
/// reads /etc/exports and /etc/exports.d. applianced writes the console's API banner (its
/// addresses and certificate fingerprint) under /run; agetty reads /etc/issue.d/*.issue.
pub const LINKS: &[(&str, &str)] = &[
    (
        "/etc/exports.d/appliance.exports",
        "/run/appliance/shares/appliance.exports",
    ),
    (
        "/etc/issue.d/appliance-api.issue",
        "/run/appliance/issue/api.issue",
    ),
];

/// Units enabled as `systemctl enable` would: (the .wants directory, the unit file).
pub const ENABLED: &[(&str, &str)] = &[
    (
        "sysinit.target.wants",
        "/usr/lib/systemd/system/appliance-machine-id.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/appliance-healthy.target",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/dnsd.service",
    ),
    (
        "appliance-healthy.target.requires",
        "/usr/lib/systemd/system/dnsd.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/appliance-ssh-hostkeys.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/appliance-boot-report.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/appliance-health.service",
    ),
    (
        "sysinit.target.wants",
        "/usr/lib/systemd/system/appliance-boot-check.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/netd.service",
    ),
    (
        "appliance-healthy.target.requires",
        "/usr/lib/systemd/system/netd.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/applianced.service",
    ),
    (
        "appliance-healthy.target.requires",
        "/usr/lib/systemd/system/applianced.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/appliance-config-import.service",
    ),
    (
        "multi-user.target.wants",
        "/usr/lib/systemd/system/stored.service",
    ),
    (
        "appliance-healthy.target.requires",
        "/usr/lib/systemd/system/stored.service",
    ),
];

/// Units the packages enable that make no sense on a read-only appliance without apt
/// (relative to /etc/systemd/system).
pub const DISABLED: &[&str] = &[
    "timers.target.wants/apt-daily.timer",
    "timers.target.wants/apt-daily-upgrade.timer",
    "timers.target.wants/dpkg-db-backup.timer",
    // stored starts the storage services itself, with their state on /data; on their own
    // they would write to the read-only /var/lib (the zfs module loads with `modprobe zfs`).
    "multi-user.target.wants/zfs.target",
    "zfs.target.wants/zfs-import.target",
    "zfs.target.wants/zfs-load-module.service",
    "zfs.target.wants/zfs-mount.service",
    "zfs.target.wants/zfs-share.service",
    "zfs.target.wants/zfs-volumes.target",
    "zfs-import.target.wants/zfs-import-cache.service",
    "zfs-mount.service.wants/zfs-load-module.service",
    "zfs-volumes.target.wants/zfs-volume-wait.service",
    "multi-user.target.wants/smbd.service",
    "multi-user.target.wants/nmbd.service",
    "multi-user.target.wants/samba-ad-dc.service",
    "multi-user.target.wants/nfs-server.service",
    "multi-user.target.wants/nfs-client.target",
    "remote-fs.target.wants/nfs-client.target",
    "nfs-client.target.wants/nfs-blkmap.service",
    "multi-user.target.wants/rpcbind.service",
    "sockets.target.wants/rpcbind.socket",
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(format!("/{}", path.strip_prefix(base).unwrap().display()));
            }
        }
    }

    #[test]
    fn every_file_of_the_overlay_tree_is_listed() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("overlay");
        let mut on_disk = Vec::new();
        walk(&base, &base, &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|f| f.path.to_owned()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn executables_are_the_scripts() {
        for f in FILES {
            let script = f.contents.starts_with("#!");
            assert_eq!(f.mode == 0o755, script, "{}", f.path);
        }
    }
}
