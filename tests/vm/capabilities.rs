//! What the host kernel here lacks, proven in the image's own kernel in one boot (boots
//! cost about 35 s each under TCG): 802.1Q, WireGuard, a ZFS mirror with send/receive,
//! scrub and export/import, kernel nfsd, Samba, and nftables. Each capability is a script in
//! tests/vm/guest/ run with `sh -eux`, so a failure shows every command and its output.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::{self, Link, Options, Outside, Vm};
use crate::{BOOT_TIMEOUT, POWER_OFF_TIMEOUT};

/// Runs tests/vm/guest/`script` (copied in beforehand) with `args`; fails with its whole
/// output unless it exits 0 and prints `ok_line` last.
fn capability(vm: &Vm, what: &str, script: &str, args: &[&str], ok_line: &str) {
    let command = format!("sh -eux /tmp/guest/{script} {} 2>&1", args.join(" "));
    let out = vm.ssh(&command);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim_end().ends_with(ok_line),
        "{what}: `{command}` failed ({}); its output:\n{text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{what}: ok");
}

/// Not in the CI suite: the vlan, wireguard, storage, shares and boot tests prove each of
/// these kernel features through the daemons, and two more boots cost 5 minutes of a CI run
/// that has 90. It stays as the first thing to run when one of those fails, to tell the
/// kernel from the daemon: `cargo xtask vm-test --only capabilities --ignored`.
#[test]
#[ignore = "a diagnostic: `cargo xtask vm-test --only capabilities --ignored`"]
fn the_guest_kernel_does_vlans_wireguard_zfs_nfs_smb_and_nftables() {
    // Two NICs on a QEMU hub (802.1Q) and two joined by a UDP socket cable through the
    // host, the link between two VMs (WireGuard).
    let (cable_a, cable_b) = harness::udp_cable();
    let options = Options::default()
        .nic(0, Link::Hub(1))
        .nic(0, Link::Hub(1))
        .nic(0, cable_a)
        .nic(0, cable_b)
        .disk("zfs-a", 1024)
        .disk("zfs-b", 1024);
    let macs: Vec<String> = options.nics.iter().map(|n| n.mac.clone()).collect();
    let (disk_a, disk_b) = (options.disks[0].by_id(), options.disks[1].by_id());
    let mut vm = Vm::boot_with("capabilities", options);
    let line = vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    eprintln!(
        "boot report after {:.1}s: {line}",
        vm.uptime().as_secs_f64()
    );

    vm.sh("mkdir -p /tmp/guest");
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm/guest");
    for script in ["vlan.sh", "wireguard.sh", "zfs.sh", "nfs.sh", "smb.sh"] {
        vm.copy_in(&guest.join(script), &format!("/tmp/guest/{script}"));
    }
    // udev makes the by-id links from the virtio serials shortly after boot.
    vm.wait_until(
        &format!("test -b {disk_a} && test -b {disk_b}"),
        Duration::from_secs(60),
    );
    let ifs: Vec<String> = macs.iter().map(|m| vm.iface(m)).collect();

    capability(&vm, "802.1Q", "vlan.sh", &[&ifs[0], &ifs[1]], "VLAN-OK");
    capability(
        &vm,
        "WireGuard",
        "wireguard.sh",
        &[&ifs[2], &ifs[3]],
        "WIREGUARD-OK",
    );
    nftables(&vm);
    capability(&vm, "ZFS", "zfs.sh", &[&disk_a, &disk_b], "ZFS-OK");
    capability(&vm, "nfsd", "nfs.sh", &[], "NFS-OK");
    capability(&vm, "smbd", "smb.sh", &[], "SMB-OK");
    // What the NFS client wrote, seen from the host: the file went through nfsd into ZFS.
    let back = vm.dir.join("nfs-back.txt");
    vm.copy_out("/tmp/zroot/tank/nfs/back.txt", &back);
    assert_eq!(
        fs::read_to_string(&back).unwrap(),
        "written by the client\n"
    );

    let status = vm.power_off(POWER_OFF_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}");
    eprintln!(
        "all capabilities shown by {:.1}s",
        vm.uptime().as_secs_f64()
    );
}

/// nftables in the guest kernel: a table with an input chain and a rule that drops pings
/// from a client namespace, listed back with the rule's counter, then removed.
fn nftables(vm: &Vm) {
    vm.netns("nft-c", "10.40.0.2/24", Outside::Address("10.40.0.1/24"));
    vm.admit("nft-c-v");
    vm.in_netns("nft-c", "ping -c 1 -W 2 10.40.0.1");
    vm.sh(
        "nft add table inet captest && \
         nft add chain inet captest input '{ type filter hook input priority 0; policy accept; }' && \
         nft add rule inet captest input ip saddr 10.40.0.2 icmp type echo-request counter drop",
    );
    let blocked = vm.try_in_netns("nft-c", "ping -c 2 -W 1 10.40.0.1");
    assert!(
        !blocked.status.success(),
        "the drop rule let a ping through"
    );
    let listed = vm.sh("nft list table inet captest");
    assert!(
        listed.contains("ip saddr 10.40.0.2 icmp type echo-request counter packets 2 "),
        "the rule or its counter is not listed back:\n{listed}"
    );
    vm.sh("nft delete table inet captest");
    vm.in_netns("nft-c", "ping -c 1 -W 2 10.40.0.1");
    eprintln!("nftables: ok");
}
