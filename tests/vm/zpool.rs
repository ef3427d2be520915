//! The common start of the storage VM tests (storage, replication, bench_storage): one boot
//! with blank virtio disks named by id, ZFS loaded, a writable /mnt for the pools, and the
//! `stored` binary to drive. The pools themselves are made by `stored apply` from the
//! config the test writes with [`pool`], so that creating them stays part of what is tested.

use std::path::Path;
use std::time::Duration;

use crate::BOOT_TIMEOUT;
use crate::harness::{Options, Vm};

/// A booted guest with its blank disks ready for `zpool create`.
pub struct ZfsVm {
    pub vm: Vm,
    /// `/dev/disk/by-id/virtio-SERIAL` of each disk, in the order given.
    pub disks: Vec<String>,
    /// The `stored` to run: the image's, or a host build copied in when `STORED_BIN` names
    /// one (same Debian, so the same libzfs_core), to try a change without an image build.
    pub stored: String,
}

/// Boots `name` with one blank disk per `(serial, MiB)` and waits until the boot is done and
/// every disk shows up by id.
pub fn boot(name: &str, disks: &[(&str, u64)]) -> ZfsVm {
    let options = disks
        .iter()
        .fold(Options::default(), |o, (serial, mib)| o.disk(serial, *mib));
    let ids: Vec<String> = options.disks.iter().map(|d| d.by_id()).collect();
    let mut vm = Vm::boot_with(name, options);
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    let present: Vec<String> = ids.iter().map(|d| format!("test -b {d}")).collect();
    vm.wait_until(&present.join(" && "), Duration::from_secs(60));
    // The root is read-only: pools mount under /mnt, which needs to be writable.
    vm.sh("modprobe zfs && mount -t tmpfs -o mode=755 tmpfs /mnt");
    let stored = match std::env::var_os("STORED_BIN") {
        Some(host) => {
            vm.copy_in(Path::new(&host), "/tmp/stored");
            "/tmp/stored".to_owned()
        }
        None => "stored".to_owned(),
    };
    ZfsVm {
        vm,
        disks: ids,
        stored,
    }
}

/// `[storage.pools.NAME]` with one vdev of `layout` (single, mirror, raidz1...) over
/// `disks`; the caller appends more keys of the pool on the following lines.
pub fn pool(name: &str, layout: &str, disks: &[impl AsRef<str>]) -> String {
    let disks: Vec<String> = disks
        .iter()
        .map(|d| format!("\"{}\"", d.as_ref()))
        .collect();
    format!(
        "\n[storage.pools.{name}]\nvdevs = [{{ layout = \"{layout}\", disks = [{}] }}]\n",
        disks.join(", ")
    )
}
