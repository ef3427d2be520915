//! `cargo xtask bench ota`: bundle verification against `sha256sum` of the same payload,
//! and an install into a slot (a file here) against `dd` of the same payload, in one run.
//!
//! Usage: bench_ota [--size-mib N] [--dir DIR]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use image::bootstate::{BootEnv, BootState};
use image::bundle::{self, Keyring, Policy, Release as BundleRelease, SecretKey};
use image::install::source::FileSource;
use image::install::{Device, Paths, Release};

fn main() -> Result<()> {
    let mut size_mib: u64 = 512;
    let mut dir = PathBuf::from("target/bench-ota");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mib" => {
                size_mib = args
                    .next()
                    .context("--size-mib needs a number")?
                    .parse()
                    .context("--size-mib")?;
            }
            "--dir" => dir = args.next().context("--dir needs a path")?.into(),
            other => bail!("unknown argument {other}"),
        }
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let payload = dir.join("rootfs.squashfs");
    write_payload(&payload, size_mib << 20)?;
    let mib = size_mib as f64;

    let (key, _) = SecretKey::generate()?;
    let release = BundleRelease {
        compatible: bundle::cli::COMPATIBLE.into(),
        version: "1.1.0".parse()?,
        security_version: 1,
        min_version: None,
        created: bundle::cli::now(),
        expires: bundle::cli::now() + 86_400,
        allow_downgrade: false,
    };
    let bundle_path = dir.join("update.bundle");
    let t = Instant::now();
    bundle::create(&payload, &release, &[&key], &bundle_path)?;
    let create = t.elapsed();

    let t = Instant::now();
    let out = Command::new("sha256sum").arg(&payload).output()?;
    if !out.status.success() {
        bail!("sha256sum failed: {out:?}");
    }
    let sha256sum = t.elapsed();
    let policy = Policy {
        keyring: Keyring::new(vec![key.public()], 1),
        compatible: bundle::cli::COMPATIBLE.into(),
        installed: "1.0.0".parse()?,
        security_floor: 0,
        now: bundle::cli::now(),
    };
    let t = Instant::now();
    bundle::verify_file(&bundle_path, &policy)?;
    let verify = t.elapsed();

    let device = device(&dir, size_mib, &key)?;
    let slot = device.slot_device(image::bootstate::Slot::B);
    let t = Instant::now();
    let out = Command::new("dd")
        .arg(format!("if={}", payload.display()))
        .arg(format!("of={}", slot.display()))
        .args(["bs=1M", "conv=fsync,notrunc", "status=none"])
        .output()?;
    if !out.status.success() {
        bail!("dd failed: {out:?}");
    }
    let dd = t.elapsed();
    let t = Instant::now();
    device.install(&mut FileSource(bundle_path.clone()), |_, _| {})?;
    let install = t.elapsed();
    let rss = peak_rss_mib();

    let rate = |d: Duration| mib / d.as_secs_f64().max(1e-9);
    println!("payload {size_mib} MiB, chunks of 1 MiB");
    println!("{:<34} {:>10} {:>12}", "step", "seconds", "MiB/s");
    for (name, d) in [
        ("bundle create (hash + sign + copy)", create),
        ("sha256sum of the payload (peer)", sha256sum),
        ("bundle verify (every chunk)", verify),
        ("dd to the slot, fsync (peer)", dd),
        ("install (verify, write, read back)", install),
    ] {
        println!("{name:<34} {:>10.2} {:>12.0}", d.as_secs_f64(), rate(d));
    }
    println!("peak RSS of this process: {rss:.1} MiB");
    println!("bench: verify_mib_s = {:.0} MiB/s", rate(verify));
    println!("bench: sha256sum_mib_s = {:.0} MiB/s", rate(sha256sum));
    println!(
        "bench: verify_vs_sha256sum = {:.2} ratio",
        sha256sum.as_secs_f64() / verify.as_secs_f64().max(1e-9)
    );
    println!("bench: install_mib_s = {:.0} MiB/s", rate(install));
    println!("bench: dd_mib_s = {:.0} MiB/s", rate(dd));
    println!(
        "bench: install_vs_dd = {:.2} ratio",
        dd.as_secs_f64() / install.as_secs_f64().max(1e-9)
    );
    println!("bench: peak_rss = {rss:.1} MB");
    fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Incompressible bytes (xorshift), so no layer below can shortcut the writes.
fn write_payload(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

/// A device whose slots, ESP and /data are files under `dir`, running 1.0.0 from slot A.
fn device(dir: &Path, size_mib: u64, key: &SecretKey) -> Result<Device> {
    let paths = Paths {
        esp: dir.join("esp"),
        slot_dir: dir.join("slots"),
        state_dir: dir.join("data/update"),
        release: dir.join("release"),
        keyring: dir.join("update-keys"),
        cmdline: dir.join("cmdline"),
    };
    fs::create_dir_all(paths.esp.join("EFI/appliance"))?;
    BootEnv::new(&paths.esp).init(&BootState::initial())?;
    fs::create_dir_all(&paths.slot_dir)?;
    for s in ["rootA", "rootB"] {
        fs::File::create(paths.slot_dir.join(s))?.set_len((size_mib + 16) << 20)?;
    }
    fs::write(&paths.keyring, format!("{}\n", key.public()))?;
    fs::write(&paths.cmdline, "appliance.slot=A\n")?;
    let release = Release {
        version: "1.0.0".parse()?,
        security_version: 1,
        compatible: bundle::cli::COMPATIBLE.into(),
    };
    fs::write(&paths.release, release.render())?;
    Ok(Device::new(paths))
}

fn peak_rss_mib() -> f64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
