//! `cargo xtask bench net [--reps N] [--no-vm]`: netd's firewall against raw `nft` in
//! fresh network namespaces of the host, one run (netd's bench_net example; needs root,
//! iproute2 and nftables, which it installs), the daemon path (a release `netd serve`
//! answering POST /v1/apply: the no-op apply and one forward added, as `noop_apply` and
//! `one_forward_change`, and one forward added beside the blocklist as 100k /25 prefixes, an
//! interval set, as `one_forward_change_prefixes`; the firewall-only figures are
//! `*_firewall`), then 1000 WireGuard
//! peers applied by a release netd in one VM boot (`tests/vm/bench_net.rs`, an ignored VM
//! test: the host kernel has no WireGuard). `--no-vm` leaves the VM part out. The output
//! ends with every `bench:` line in one block.

use anyhow::Context as _;

use super::{
    Failure, QEMU_PACKAGES, cargo, ensure_debian_packages, image_if_needed, repo_root, run, usage,
};

pub(super) fn run_bench(opts: &[String]) -> Result<(), Failure> {
    let mut reps = "5".to_owned();
    let mut vm = true;
    let mut it = opts.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => match it.next() {
                Some(v) if v.parse::<u64>().is_ok_and(|n| n > 0) => reps.clone_from(v),
                _ => return usage("--reps needs a positive number"),
            },
            "--no-vm" => vm = false,
            other => return usage(format!("unknown option to bench net: `{other}`")),
        }
    }
    ensure_debian_packages(&["iproute2", "nftables"])?;
    let root = repo_root()?;
    let dir = root.join("target").join("bench").join("net");
    // The daemon path runs the tree's optimized `netd serve`; the VM part copies it in.
    run(cargo(&root).args(["build", "--release", "--locked", "-p", "netd"]))
        .context("building netd")?;
    let netd = root.join("target").join("release").join("netd");
    let (lines, vm_lines) = (dir.join("bench-lines.txt"), dir.join("bench-lines-vm.txt"));
    let _ = std::fs::remove_file(&lines);
    let _ = std::fs::remove_file(&vm_lines);
    run(cargo(&root)
        .args([
            "run",
            "--release",
            "--locked",
            "-p",
            "netd",
            "--example",
            "bench_net",
            "--",
            "--reps",
            &reps,
            "--dir",
        ])
        .arg(&dir)
        .arg("--netd")
        .arg(&netd)
        .arg("--lines-out")
        .arg(&lines))
    .context("the net bench failed")?;
    if vm {
        bench_wg(&root, &reps, &netd, &vm_lines)?;
    } else {
        std::fs::write(&vm_lines, "bench: wg_1000_peers = n/a (--no-vm)\n")
            .with_context(|| format!("writing {}", vm_lines.display()))?;
    }
    // Every figure in one block at the very end, the VM's included.
    println!("==> all figures");
    for file in [&lines, &vm_lines] {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("the bench left no figures in {}", file.display()))?;
        print!("{text}");
    }
    Ok(())
}

/// 1000 WireGuard peers applied by the release `netd` in one VM boot; its figure line
/// goes to `out`.
fn bench_wg(
    root: &std::path::Path,
    reps: &str,
    netd: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), Failure> {
    // The figure is for the tree's optimized netd, copied into the guest: the image's
    // may be older.
    println!("==> WireGuard: 1000 peers applied by a release netd in a VM ({reps} reps)");
    image_if_needed(false)?;
    ensure_debian_packages(QEMU_PACKAGES)?;
    run(crate::cargo_vm_tests(root)
        .args([
            "--",
            "--ignored",
            "--exact",
            "bench_net::bench_wg_peers",
            "--nocapture",
        ])
        .env("NETD_BIN", netd)
        .env("BENCH_WG_REPS", reps)
        .env("BENCH_LINES_OUT", out))
    .context("the WireGuard half of the net bench failed")?;
    Ok(())
}
