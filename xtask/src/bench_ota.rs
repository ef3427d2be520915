//! `cargo xtask bench ota [--size-mib N]`: bundle verification against `sha256sum`, and an
//! install into a slot against `dd`, on the same payload in one run (image's bench_ota).

use anyhow::Context as _;

use super::{Failure, cargo, repo_root, run, usage};

pub(super) fn run_bench(opts: &[String]) -> Result<(), Failure> {
    let mut size = "512".to_owned();
    let mut it = opts.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size-mib" => match it.next() {
                Some(v) if v.parse::<u64>().is_ok_and(|n| n > 0) => size.clone_from(v),
                _ => return usage("--size-mib needs a positive number of MiB"),
            },
            other => return usage(format!("unknown option to bench ota: `{other}`")),
        }
    }
    let root = repo_root()?;
    let dir = root.join("target").join("bench-ota");
    run(cargo(&root)
        .args([
            "run",
            "--release",
            "--locked",
            "-p",
            "image",
            "--example",
            "bench_ota",
            "--",
            "--size-mib",
            &size,
            "--dir",
        ])
        .arg(&dir))
    .context("the OTA bench failed")?;
    Ok(())
}
