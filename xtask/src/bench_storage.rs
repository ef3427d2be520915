//! `cargo xtask bench storage`: raw `zfs send | zfs recv`, syncoid and stored replicating
//! the same data in one VM boot (full send, an incremental, many empty incrementals), and
//! stored pruning about 10k snapshots next to `zfs destroy -r` of a range and of a list.
//! `--only prune` or `--only replication` runs one half; `--only streams` the full send
//! and the incremental alone. The work is
//! `tests/vm/bench_storage.rs`, an ignored VM test; this builds what it needs and runs it.
//!
//! syncoid comes from Debian's sanoid package, which the image does not ship: its .deb and
//! those of the Perl modules it needs beyond perl-base are downloaded (`apt-get download`)
//! and unpacked in the guest under /tmp, for the bench only.

use anyhow::Context as _;

use super::{
    Failure, QEMU_PACKAGES, cargo, ensure_debian_packages, image_if_needed, repo_root, run, usage,
};

/// What syncoid needs that the image lacks.
const SYNCOID_DEBS: &[&str] = &[
    "sanoid",
    "libcapture-tiny-perl",
    "perl-modules-5.36",
    "libperl5.36",
];

/// The host's strace and the shared libraries it loads, copied into `dir` for the guest,
/// which lacks it (both are Debian 12): the bench runs stored's local transport under
/// `strace -f -c` once, to show which system calls carry the stream.
fn strace_kit(dir: &std::path::Path) -> Result<std::path::PathBuf, Failure> {
    ensure_debian_packages(&["strace"])?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ldd = std::process::Command::new("ldd")
        .arg("/usr/bin/strace")
        .output()
        .context("running ldd on /usr/bin/strace")?;
    let libs = String::from_utf8_lossy(&ldd.stdout);
    let files = libs
        .lines()
        .filter_map(|l| l.split_once("=> ").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next())
        .filter(|p| p.starts_with('/') && !p.contains("/libc.so"));
    for f in std::iter::once("/usr/bin/strace").chain(files) {
        let src = std::path::Path::new(f);
        let Some(name) = src.file_name() else {
            continue;
        };
        std::fs::copy(src, dir.join(name)).with_context(|| format!("copying {f}"))?;
    }
    Ok(dir.to_path_buf())
}

/// The lock every image build on this machine takes (`flock -x /tmp/image.lock cargo
/// xtask image`).
const IMAGE_LOCK: &str = "/tmp/image.lock";

/// The image the bench boots: built only when there is none, and then under
/// [`IMAGE_LOCK`], so that the bench never builds it alongside another build. An existing
/// image is used as it is (the bench copies its own stored into the guest, so an image
/// older than the tree does not matter). The returned file holds the lock shared until
/// it is dropped at the end of the bench: a rebuild waits rather than replacing the disk
/// under the running guest. flock(2) drops the exclusive lock before it takes the shared
/// one, so a build waiting then may slip in between; it only makes the image newer.
fn locked_image() -> Result<std::fs::File, Failure> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(IMAGE_LOCK)
        .with_context(|| format!("opening {IMAGE_LOCK}"))?;
    if lock.try_lock().is_err() {
        println!("==> waiting for {IMAGE_LOCK} (an image build is running)");
        lock.lock()
            .with_context(|| format!("locking {IMAGE_LOCK}"))?;
    }
    image_if_needed(false)?;
    lock.lock_shared()
        .with_context(|| format!("locking {IMAGE_LOCK} shared"))?;
    Ok(lock)
}

pub(super) fn run_bench(opts: &[String]) -> Result<(), Failure> {
    let mut env: Vec<(&str, String)> = Vec::new();
    let mut it = opts.iter();
    while let Some(a) = it.next() {
        if a == "--only" {
            match it.next().map(String::as_str) {
                Some(v @ ("prune" | "replication" | "streams" | "empties")) => {
                    env.push(("BENCH_ONLY", v.to_owned()))
                }
                _ => {
                    return usage(
                        "--only needs `prune`, `replication`, `streams` or `empties`".to_owned(),
                    );
                }
            }
            continue;
        }
        if a == "--no-ssh" {
            env.push(("BENCH_SSH", "0".to_owned()));
            continue;
        }
        let var = match a.as_str() {
            "--full-mib" => "BENCH_FULL_MIB",
            "--inc-mib" => "BENCH_INC_MIB",
            "--empty" => "BENCH_EMPTY",
            other => return usage(format!("unknown option to bench storage: `{other}`")),
        };
        match it.next() {
            Some(v) if v.parse::<u64>().is_ok_and(|n| n > 0) => env.push((var, v.clone())),
            _ => return usage(format!("{a} needs a positive number")),
        }
    }
    let root = repo_root()?;
    let _image = locked_image()?;
    ensure_debian_packages(QEMU_PACKAGES)?;
    let debs = root
        .join("target")
        .join("bench")
        .join("storage")
        .join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let have = std::fs::read_dir(&debs)
        .with_context(|| format!("reading {}", debs.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
        .count();
    if have < SYNCOID_DEBS.len() {
        run(std::process::Command::new("apt-get")
            .arg("download")
            .args(SYNCOID_DEBS)
            .current_dir(&debs))
        .context("downloading syncoid's packages")?;
    }
    // A release build of stored, copied into the guest: the image's may be older than the
    // tree, and the figures are for optimized code. STORED_BIN names another build.
    let stored = match std::env::var_os("STORED_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            run(cargo(&root).args(["build", "--release", "--locked", "-p", "stored"]))
                .context("building stored")?;
            root.join("target").join("release").join("stored")
        }
    };
    let strace = strace_kit(
        &root
            .join("target")
            .join("bench")
            .join("storage")
            .join("strace"),
    )?;
    let mut cmd = crate::cargo_vm_tests(&root);
    cmd.args([
        "--",
        "--ignored",
        "--exact",
        "bench_storage::bench_storage",
        "--nocapture",
    ])
    .env("STORED_BIN", &stored)
    .env("SYNCOID_DEBS", &debs)
    .env("BENCH_STRACE_DIR", &strace);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd).context("the storage bench failed")?;
    Ok(())
}
