//! `cargo xtask bench net [--reps N]`: netd's firewall against raw `nft` in fresh network
//! namespaces of the host, one run (netd's bench_net example; needs root, iproute2 and
//! nftables, which it installs).

use anyhow::Context as _;

use super::{Failure, cargo, ensure_debian_packages, repo_root, run, usage};

pub(super) fn run_bench(opts: &[String]) -> Result<(), Failure> {
    let mut reps = "5".to_owned();
    let mut it = opts.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reps" => match it.next() {
                Some(v) if v.parse::<u64>().is_ok_and(|n| n > 0) => reps.clone_from(v),
                _ => return usage("--reps needs a positive number"),
            },
            other => return usage(format!("unknown option to bench net: `{other}`")),
        }
    }
    ensure_debian_packages(&["iproute2", "nftables"])?;
    let root = repo_root()?;
    let dir = root.join("target").join("bench").join("net");
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
        .arg(&dir))
    .context("the net bench failed")?;
    Ok(())
}
