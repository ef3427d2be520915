//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Everything shells out to `cargo` and friends with `std::process::Command`; `cargo xtask
//! help` lists the commands. Exit codes: 0 success, 1 failure, 2 usage error.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

mod bench_dns;
mod bench_net;
mod bench_ota;
mod bench_storage;
mod vm_lanes;

const USAGE: &str = "\
Usage: cargo xtask <command> [options]

Commands:
  ci                      the whole CI: toolchain check, rustfmt check, clippy -D warnings,
                          every test, a build check of the fuzz targets, and the VM tests
                          (builds the image; needs root)
  test [--vm]             run every test: unit and namespace tests (cargo test
                          --workspace --locked), then the VM tests (as vm-test);
                          with --vm, only the VM tests
  fuzz <target> [--time SECONDS] [--jobs N] [-- LIBFUZZER_ARGS...]
                          fuzz a target in fuzz/fuzz_targets/ with cargo-fuzz (default 60 s,
                          1 job); `config` fuzzes the appliance.toml loader
  schema [--check]        regenerate appliance/config.schema.json, docs/config.md and
                          appliance/openapi.json;
                          with --check, fail if the committed copies are stale instead
  image                   build the release binaries and the firmware disk image
                          (target/image/appliance.img; needs root; installs the Debian
                          packages it needs)
  run [--rebuild] [--kvm] boot the image in QEMU (TCG) with the serial console in the
                          terminal, building it first if there is none; a fresh disk
                          overlay each run; quit with Ctrl-A X
  vm-test [--only NAME]... [--lanes N] [--ignored]
                          build the image if there is none, then run the VM tests
                          (tests/vm: boot, read-only root, /data, A/B fallback, and
                          802.1Q, WireGuard, ZFS, nfsd, smbd in the guest), one process
                          per test in N lanes (2), longest first; --only keeps the tests
                          whose path contains NAME; --ignored runs the ignored ones
                          instead (the kernel diagnostic `capabilities`, the benches);
                          each log in target/vm-logs/lanes
  bench dns [--domains N] [--seconds S]
                          dnsd against dnsmasq and unbound with dnsperf, one core each;
                          ends with `bench: <name> = <value> <unit>` lines
  bench ota [--size-mib N]
                          bundle verify against sha256sum, install into a slot file
                          against dd, on one payload (default 512 MiB)
  bench net [--reps N] [--no-vm]
                          netd's firewall (8 zones, 2000 forwards, a 100k-address
                          blocklist) against `nft -f` of the same table, the no-op apply
                          and a one-forward change, in fresh network namespaces (root);
                          config and rulesets in target/bench/net/ (default 5 reps); then
                          1000 WireGuard peers applied by netd in a VM
  bench storage [--full-mib N] [--inc-mib N] [--empty N] [--no-ssh] [--only prune|replication]
                          in one VM boot: raw zfs send|recv, syncoid and stored on a full
                          send (1024 MiB), an incremental (1024 MiB) and 1000 empty
                          incrementals, and stored's prune of ~10k snapshots
  help                    this text

Exit codes: 0 success, 1 failure, 2 usage error.
";

/// Default fuzzing time per `cargo xtask fuzz` run, in seconds.
const DEFAULT_FUZZ_SECONDS: u64 = 60;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Why a command did not succeed: the user asked wrongly (exit 2) or the work failed (1).
enum Failure {
    Usage(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

fn usage<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Usage(msg.into()))
}

fn dispatch(args: &[String]) -> Result<(), Failure> {
    let Some((cmd, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    match cmd.as_str() {
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        "ci" => {
            no_args("ci", rest)?;
            Ok(ci()?)
        }
        "test" => match rest {
            [] => Ok(run_steps(&[TEST, VM])?),
            [flag] if flag == "--vm" => Ok(run_steps(&[VM])?),
            _ => usage(format!("unexpected arguments to test: {}", rest.join(" "))),
        },
        "fuzz" => {
            let opts = FuzzOpts::parse(rest)?;
            Ok(fuzz(&opts)?)
        }
        "schema" => {
            let check = match rest {
                [] => false,
                [flag] if flag == "--check" => true,
                _ => {
                    return usage(format!(
                        "unexpected arguments to schema: {}",
                        rest.join(" ")
                    ));
                }
            };
            Ok(schema(check)?)
        }
        "image" => match rest {
            [] => image().map(|_| ()).map_err(Failure::from),
            [flag] if flag == "--check-reproducible" => {
                Ok(image().and_then(|_| check_reproducible())?)
            }
            _ => usage(format!(
                "`image` takes only --check-reproducible, got: {}",
                rest.join(" ")
            )),
        },
        "run" => {
            let mut rebuild = false;
            let mut kvm = false;
            for arg in rest {
                match arg.as_str() {
                    "--rebuild" => rebuild = true,
                    "--kvm" => kvm = true,
                    other => return usage(format!("unknown option to run: `{other}`")),
                }
            }
            Ok(run_vm(rebuild, kvm)?)
        }
        "vm-test" => {
            let mut only = Vec::new();
            let mut lanes = VM_LANES;
            let mut ignored = false;
            let mut args = rest.iter();
            while let Some(arg) = args.next() {
                if arg == "--ignored" {
                    ignored = true;
                    continue;
                }
                match (arg.as_str(), args.next()) {
                    ("--only", Some(name)) => only.push(name.clone()),
                    ("--lanes", Some(n)) => match n.parse() {
                        Ok(n) if n > 0 => lanes = n,
                        _ => return usage(format!("--lanes takes a positive number, got `{n}`")),
                    },
                    (other, _) => {
                        return usage(format!(
                            "vm-test takes --only NAME (repeatable), --lanes N and --ignored, \
                             got `{other}`"
                        ));
                    }
                }
            }
            Ok(vm_test(&only, lanes, ignored)?)
        }
        "bench" if rest.first().is_some_and(|a| a == "ota") => {
            bench_ota::run_bench(rest.get(1..).unwrap_or_default())
        }
        "bench" if rest.first().is_some_and(|a| a == "net") => {
            bench_net::run_bench(rest.get(1..).unwrap_or_default())
        }
        "bench" if rest.first().is_some_and(|a| a == "storage") => {
            bench_storage::run_bench(rest.get(1..).unwrap_or_default())
        }
        "bench" => bench_dns::dispatch(rest),
        other => usage(format!("unknown command `{other}`")),
    }
}

fn no_args(cmd: &str, rest: &[String]) -> Result<(), Failure> {
    if rest.is_empty() {
        Ok(())
    } else {
        usage(format!(
            "`{cmd}` takes no arguments, got: {}",
            rest.join(" ")
        ))
    }
}

// ---------------------------------------------------------------------------------------
// CI

/// One CI step: a name for the header, the Debian packages it needs, and what it runs.
struct Step {
    name: &'static str,
    packages: &'static [&'static str],
    run: fn(&Path) -> Result<()>,
    /// Printed when the step fails: how to fix the usual cause.
    hint: Option<&'static str>,
}

const TOOLCHAIN: Step = Step {
    name: "toolchain",
    packages: &[],
    run: step_toolchain,
    hint: None,
};
const FMT: Step = Step {
    name: "rustfmt",
    packages: &[],
    run: step_fmt,
    hint: Some("run `cargo fmt --all` (or rustfmt --edition 2024 on the files you changed)"),
};
const CLIPPY: Step = Step {
    name: "clippy",
    // stored's build script runs bindgen on libzfs_core.
    packages: ZFS_BUILD_PACKAGES,
    run: step_clippy,
    hint: None,
};
const TEST: Step = Step {
    name: "test",
    // Real peers of the tests: dnsmasq and dig for dnsd, nft and ip netns for netd, the
    // DHCP clients of netd's server (udhcpc pulls in busybox or uses busybox-static); and
    // what stored's build needs (ZFS_BUILD_PACKAGES).
    packages: &[
        "dnsmasq-base",
        "bind9-dnsutils",
        // dnsd's reload test loads it with dnsperf
        "dnsperf",
        "nftables",
        "iproute2",
        "udhcpc",
        "isc-dhcp-client",
        "dhcpcd-base",
        // the ISP's router advertisements in netd's IPv6 namespace test
        "radvd",
        "libzfslinux-dev",
        "libclang-dev",
        "pkg-config",
    ],
    run: step_test,
    hint: None,
};
const FUZZ_BUILD: Step = Step {
    name: "fuzz-build",
    packages: &[],
    run: step_fuzz_build,
    hint: Some(
        "if fuzz/Cargo.lock is out of date (a dependency of appliance changed), run \
         `cargo update --manifest-path fuzz/Cargo.toml --workspace` and commit fuzz/Cargo.lock",
    ),
};

/// The real image booted in QEMU: the only place the boot chain, the read-only root and
/// the A/B fallback can be shown.
const VM: Step = Step {
    name: "vm",
    packages: &[],
    run: step_vm,
    hint: Some("`cargo xtask vm-test` reruns this step alone; the serial log is in its output"),
};

fn ci() -> Result<()> {
    CI_PROFILE.store(true, Ordering::Relaxed);
    run_steps(&[TOOLCHAIN, FMT, CLIPPY, TEST, PRUNE_TESTS, FUZZ_BUILD, VM])
}

/// Set by `cargo xtask ci`: the image's daemons build with the `ci` profile (Cargo.toml says
/// why) instead of the release profile, beside the tests (see [`step_test`]).
static CI_PROFILE: AtomicBool = AtomicBool::new(false);

/// Cargo's profile arguments for the image's binaries, and their directory under target/.
/// Under CI they build in a target directory of their own while the tests run in the
/// main one: no cargo waits on the other's lock.
fn image_profile() -> (&'static [&'static str], &'static str) {
    if CI_PROFILE.load(Ordering::Relaxed) {
        (
            &["--profile", "ci", "--target-dir", "target/image-build"],
            "image-build/ci",
        )
    } else {
        (&["--release"], "release")
    }
}

/// Where the image's build beside the tests writes its output.
fn prebuild_log(root: &Path) -> PathBuf {
    root.join("target").join("image-prebuild.log")
}

/// The image's binaries and warm cache being built beside the tests (CI only); `image`
/// waits for it instead of building them itself.
static PREBUILD: Mutex<Option<thread::JoinHandle<Result<()>>>> = Mutex::new(None);

/// CI's disk has been seen nearly full: once the tests have passed, their executables (each
/// links the whole dependency tree) are dead weight for the image build that follows.
const PRUNE_TESTS: Step = Step {
    name: "prune-tests",
    packages: &[],
    run: step_prune_tests,
    hint: None,
};

/// Deletes the executables under `target/debug/deps`: test harnesses and copies of binaries,
/// which cargo links again when a later command needs one. Libraries and build scripts stay.
fn step_prune_tests(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let deps = root.join("target").join("debug").join("deps");
    let mut freed = 0u64;
    let mut count = 0usize;
    for entry in fs::read_dir(&deps).with_context(|| format!("reading {}", deps.display()))? {
        let entry = entry.with_context(|| format!("reading {}", deps.display()))?;
        let meta = entry.metadata()?;
        let name = entry.file_name();
        let is_lib = Path::new(&name)
            .extension()
            .is_some_and(|e| e == "so" || e == "rlib" || e == "rmeta" || e == "d");
        if meta.is_file() && meta.permissions().mode() & 0o100 != 0 && !is_lib {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            freed += meta.len();
            count += 1;
        }
    }
    println!("removed {count} test executables, {} MiB", freed >> 20);
    Ok(())
}

/// Free space on the disk that holds `root`, as `df` prints it, for the step lines: a step
/// that fails with "No space left on device" then shows how close the run came before.
fn disk_free(root: &Path) -> String {
    Command::new("df")
        .args(["-h", "--output=avail"])
        .arg(root)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8(o.stdout)
                .ok()?
                .lines()
                .nth(1)
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn step_vm(_root: &Path) -> Result<()> {
    vm_test(&[], VM_LANES, false)
}

/// Runs the steps in order with a header and a timing each; stops at the first failure.
fn run_steps(steps: &[Step]) -> Result<()> {
    let root = repo_root()?;
    let started = Instant::now();
    let mut times = Vec::new();
    for step in steps {
        println!("==> {}", step.name);
        let t = Instant::now();
        let result = ensure_debian_packages(step.packages).and_then(|()| (step.run)(&root));
        let took = t.elapsed();
        if let Err(e) = result {
            let mut msg = format!("step `{}` failed after {}: {e:#}", step.name, Secs(took));
            if let Some(hint) = step.hint {
                msg.push_str("\nhint: ");
                msg.push_str(hint);
            }
            println!(
                "==> FAILED: {} ({}; {} free on disk)",
                step.name,
                Secs(took),
                disk_free(&root)
            );
            bail!(msg);
        }
        println!(
            "==> {} ok ({}; {} free on disk)",
            step.name,
            Secs(took),
            disk_free(&root)
        );
        times.push((step.name, took));
    }
    if steps.len() > 1 {
        let list: Vec<String> = times
            .iter()
            .map(|(n, t)| format!("{n} {}", Secs(*t)))
            .collect();
        println!(
            "==> all {} steps passed in {}: {}",
            steps.len(),
            Secs(started.elapsed()),
            list.join(", ")
        );
    }
    Ok(())
}

fn step_toolchain(root: &Path) -> Result<()> {
    run(cargo(root).arg("--version"))?;
    let tools = ["fmt", "clippy"];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| quiet(cargo(root).args([t, "--version"])).is_err())
        .collect();
    if !missing.is_empty() {
        println!(
            "cargo {} missing; installing rustfmt and clippy",
            missing.join(" and ")
        );
        run(Command::new("rustup").current_dir(root).args([
            "component",
            "add",
            "rustfmt",
            "clippy",
        ]))
        .context(
            "`cargo fmt` or `cargo clippy` is missing and `rustup component add rustfmt clippy` \
             failed; install the rustfmt and clippy components of the toolchain",
        )?;
    }
    for t in tools {
        run(cargo(root).args([t, "--version"])).with_context(|| {
            format!("`cargo {t} --version` fails even after `rustup component add rustfmt clippy`")
        })?;
    }
    Ok(())
}

fn step_fmt(root: &Path) -> Result<()> {
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))
}

fn step_clippy(root: &Path) -> Result<()> {
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        // The VM tests are behind a feature; lint them too.
        "--features",
        "appliance-tests/vm",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

fn step_test(root: &Path) -> Result<()> {
    if !CI_PROFILE.load(Ordering::Relaxed) {
        return run(cargo(root).args(["test", "--workspace", "--locked"]));
    }
    // CI: compile first, then run the tests with the image's binaries and its warm cache
    // (the zfs DKMS build) compiling at nice 19 beside them. The tests wait on namespaces,
    // timers and peers for much of their run; what they leave idle of the two cores goes to
    // the image build, and what they need they get first. Only CPU time is shared: the
    // background build writes to target/image-build, target/image-cache and its own log.
    run(cargo(root).args(["test", "--workspace", "--locked", "--no-run"]))?;
    ensure_debian_packages(IMAGE_PACKAGES)?;
    ensure_debian_packages(ZFS_BUILD_PACKAGES)?;
    let log = prebuild_log(root);
    // A rerun in the same checkout starts a new log: `image` prints it whole.
    fs::write(&log, "").with_context(|| format!("creating {}", log.display()))?;
    println!(
        "==> image binaries and warm cache building at nice 19 beside the tests; log {}",
        rel(root, &log)
    );
    let bg_root = root.to_owned();
    let handle = thread::spawn(move || image_binaries(&bg_root, Some(&log)));
    *PREBUILD.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    run(cargo(root).args(["test", "--workspace", "--locked"]))
}

/// The fuzz crate is its own workspace, so the steps above do not build it. A plain (stable)
/// clippy of it keeps the targets compiling and lint-clean; only `cargo fuzz` itself needs
/// the sanitizer flags.
fn step_fuzz_build(root: &Path) -> Result<()> {
    run(cargo(root).args([
        "clippy",
        "--manifest-path",
        "fuzz/Cargo.toml",
        // The workspace's target directory, where the clippy step left the dependencies
        // checked with the same versions, features and (fuzz/Cargo.toml's) dev profile.
        "--target-dir",
        "target",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

// ---------------------------------------------------------------------------------------
// Image, run, vm-test

/// Host tools `appliance-image build` calls.
const IMAGE_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "squashfs-tools",
    "dosfstools",
    "mtools",
    "gdisk",
    "e2fsprogs",
    "grub-efi-amd64-bin",
    "openssh-client",
];

/// What booting the image takes.
const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-utils", "ovmf", "openssh-client"];

/// Our executables installed into the image. The daemons join as their binaries arrive.
const IMAGE_BINARIES: &[&str] = &["applctl", "applianced", "stored", "netd", "dnsd"];

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Host ports `cargo xtask run` forwards to the guest's WAN address: (protocol, host, guest,
/// what).
const FORWARDS: &[(&str, u16, u16, &str)] = &[
    ("tcp", 2222, 22, "SSH"),
    ("tcp", 5353, 53, "DNS"),
    ("udp", 5353, 53, "DNS"),
    ("tcp", 8443, 443, "API"),
];

/// The LAN NIC of `cargo xtask run` listens here; a client VM joins the LAN with
/// `-netdev socket,id=lan,connect=127.0.0.1:10002`.
const LAN_SOCKET: &str = "127.0.0.1:10002";

fn image_dir(root: &Path) -> PathBuf {
    root.join("target").join("image")
}

/// Builds the release binaries and the disk image; returns the disk image's path.
fn image() -> Result<PathBuf> {
    let root = repo_root()?;
    let started = Instant::now();
    require_root("building the image")?;
    println!("==> image: host packages");
    ensure_debian_packages(IMAGE_PACKAGES)?;
    // stored, one of the image's binaries, links libzfs_core through bindgen.
    ensure_debian_packages(ZFS_BUILD_PACKAGES)?;

    let prebuilt = PREBUILD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(handle) = prebuilt {
        let t = Instant::now();
        println!("==> image: waiting for the binaries and warm cache started beside the tests");
        let result = handle
            .join()
            .map_err(|_| anyhow!("the image's background build panicked"))
            .and_then(|r| r);
        let log = prebuild_log(&root);
        let text = fs::read_to_string(&log).unwrap_or_default();
        println!(
            "---- {} ----\n{text}---- end of {} ----",
            rel(&root, &log),
            rel(&root, &log)
        );
        result?;
        println!(
            "==> image: background build done, waited {}",
            Secs(t.elapsed())
        );
    } else {
        image_binaries(&root, None)?;
    }

    println!("==> image: appliance-image build");
    let out = image_dir(&root);
    run(&mut image_build(&root, &out)?)?;
    let disk = out.join("appliance.img");
    println!(
        "==> image built in {}: {}",
        Secs(started.elapsed()),
        rel(&root, &disk)
    );
    Ok(disk)
}

/// The image's binaries (profile of [`image_profile`]) and, beside them, the warm cache
/// (package tarball and zfs module). With `log`, everything runs at nice 19 with its output
/// in that file (CI's build beside the tests); without, in the foreground.
fn image_binaries(root: &Path, log: Option<&Path>) -> Result<()> {
    let t = Instant::now();
    let (profile, dir) = image_profile();
    let output = |cmd: &mut Command| -> Result<()> {
        match log {
            None => run(cmd),
            Some(log) => run_logged(cmd, log),
        }
    };
    if log.is_none() {
        println!("==> image: release binaries");
    }
    // appliance-image first: its warm-cache (mmdebstrap, then the zfs DKMS build; about 7
    // minutes, much of it waiting on the network and dpkg) then runs beside the release
    // build of the daemons instead of after it.
    let mut tool = cargo(root);
    tool.args(["build", "--locked", "-p", "image"])
        .args(profile);
    output(&mut background(tool, log.is_some()))?;
    let warm = WarmCache::start(root, dir, log)?;
    let mut daemons = cargo(root);
    daemons
        .args(["build", "--locked"])
        .args([
            "-p",
            "appliance",
            "-p",
            "image",
            "-p",
            "stored",
            "-p",
            "netd",
            "-p",
            "dnsd",
        ])
        .args(profile);
    let built = output(&mut background(daemons, log.is_some()));
    let binaries = t.elapsed();
    let warmed = warm.wait();
    let summary = format!(
        "==> image: release binaries built in {}, ready with the warm cache after {}",
        Secs(binaries),
        Secs(t.elapsed())
    );
    match log {
        None => println!("{summary}"),
        Some(log) => append_log(log, &summary),
    }
    built.with_context(|| match log {
        Some(log) => format!(
            "building the image's binaries; its output is in {}",
            log.display()
        ),
        None => "building the image's binaries".to_owned(),
    })?;
    warmed
}

/// `cmd` as `nice -n 19 cmd` when `niced`, else `cmd` itself.
fn background(cmd: Command, niced: bool) -> Command {
    if !niced {
        return cmd;
    }
    let mut nice = Command::new("nice");
    nice.args(["-n", "19"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        nice.current_dir(dir);
    }
    nice
}

/// Runs `cmd` with its output appended to `log`; fails unless it exits 0.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    append_log(log, &format!("$ {}", Shown(cmd)));
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("running {}", Shown(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", Shown(cmd));
    }
    Ok(())
}

fn append_log(log: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}

/// `appliance-image warm-cache` as a child process, its output in a log file printed whole
/// when it ends (interleaved with cargo's it would be unreadable); in the background build,
/// into that build's log instead of stdout.
struct WarmCache {
    child: std::process::Child,
    log: PathBuf,
    report: Option<PathBuf>,
    started: Instant,
}

impl WarmCache {
    fn start(root: &Path, profile_dir: &str, report: Option<&Path>) -> Result<WarmCache> {
        let target = root.join("target");
        let log = target.join("image-warm-cache.log");
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = background(
            Command::new(target.join(profile_dir).join("appliance-image")),
            report.is_some(),
        )
        .current_dir(root)
        .arg("warm-cache")
        .arg("--cache")
        .arg(target.join("image-cache"))
        .arg("--work")
        .arg(target.join("image-warm"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting `appliance-image warm-cache`")?;
        let cache = WarmCache {
            child,
            log,
            report: report.map(Path::to_owned),
            started: Instant::now(),
        };
        cache.say(&format!(
            "==> image: package tarball and zfs module (appliance-image warm-cache, pid {}) \
             beside the release build; log {}",
            cache.child.id(),
            rel(root, &cache.log)
        ));
        Ok(cache)
    }

    fn say(&self, text: &str) {
        match &self.report {
            None => println!("{text}"),
            Some(report) => append_log(report, text),
        }
    }

    fn wait(mut self) -> Result<()> {
        let status = self
            .child
            .wait()
            .context("waiting for appliance-image warm-cache")?;
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        self.say(&format!(
            "---- appliance-image warm-cache ----\n{text}---- end of warm-cache ----"
        ));
        if !status.success() {
            bail!("appliance-image warm-cache failed ({status}); its output is above");
        }
        self.say(&format!(
            "==> package tarball and zfs module ready after {} (waited for since the release \
             build ended)",
            Secs(self.started.elapsed())
        ));
        Ok(())
    }
}

/// Builds the root a second time from the same inputs and the warm cache into
/// target/image-repro, and fails unless its squashfs hashes the same as target/image's:
/// the update bundles and the A/B slots are trusted by that hash.
fn check_reproducible() -> Result<()> {
    let root = repo_root()?;
    let started = Instant::now();
    let again = root.join("target").join("image-repro");
    println!("==> image: second build into {}", rel(&root, &again));
    run(&mut image_build(&root, &again)?)?;
    let hash = |dir: &Path| -> Result<String> {
        let file = dir.join("rootfs.squashfs.sha256");
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        Ok(text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    };
    let (first, second) = (hash(&image_dir(&root))?, hash(&again)?);
    if first.is_empty() || first != second {
        bail!(
            "the image is not reproducible: {} has root sha256 {first}, the rebuild in {} has \
             {second}; compare the two with `diffoscope` (both kept)",
            rel(&root, &image_dir(&root)),
            rel(&root, &again)
        );
    }
    fs::remove_dir_all(&again).with_context(|| format!("removing {}", again.display()))?;
    println!(
        "==> image reproducible: root sha256 {first} twice (second build {})",
        Secs(started.elapsed())
    );
    Ok(())
}

/// The `appliance-image build` of the development image into `out`.
fn image_build(root: &Path, out: &Path) -> Result<Command> {
    let release = root.join("target").join(image_profile().1);
    let mut cmd = Command::new(release.join("appliance-image"));
    cmd.current_dir(root)
        .arg("build")
        .arg("--out")
        .arg(out)
        .arg("--cache")
        .arg(root.join("target").join("image-cache"))
        .arg("--dev");
    for bin in IMAGE_BINARIES {
        cmd.arg("--bin").arg(release.join(bin));
    }
    // The VM tests log in with this key (it is made once per checkout, under target/).
    let test_key = vm_test_key(root)?;
    cmd.arg("--authorized-key")
        .arg(test_key.with_extension("pub"));
    // Bundles signed with the checkout's development key install on this image (the VM
    // OTA tests sign theirs with it); release builds pass their own keys.
    let update_key = dev_update_key(root, &release)?;
    cmd.arg("--update-key")
        .arg(update_key.with_extension("pub"));
    // The developer's own keys, so that `ssh -p 2222 root@127.0.0.1` works in `run`.
    if let Some(home) = std::env::var_os("HOME") {
        for name in ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"] {
            let key = Path::new(&home).join(".ssh").join(name);
            if key.is_file() {
                println!("    authorizing {} for root over SSH", key.display());
                cmd.arg("--authorized-key").arg(key);
            }
        }
    }
    // The commit time, so that a checkout builds the same root as anyone else's.
    if std::env::var_os("SOURCE_DATE_EPOCH").is_none()
        && let Ok(o) = Command::new("git")
            .current_dir(root)
            .args(["log", "-1", "--format=%ct"])
            .output()
        && o.status.success()
    {
        cmd.env(
            "SOURCE_DATE_EPOCH",
            String::from_utf8_lossy(&o.stdout).trim(),
        );
    }
    Ok(cmd)
}

/// The private key of the VM tests, `target/vm-key/id_ed25519`, made when missing. The
/// harness in tests/vm finds it at the same path.
fn vm_test_key(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target").join("vm-key");
    let key = dir.join("id_ed25519");
    if key.is_file() && key.with_extension("pub").is_file() {
        return Ok(key);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "appliance-vm-tests",
            "-f",
        ])
        .arg(&key))?;
    Ok(key)
}

/// The development signing key for OTA bundles, `target/update-key/dev.key`, made with
/// `appliance-image keygen` when missing. The VM tests find it at the same path.
fn dev_update_key(root: &Path, release: &Path) -> Result<PathBuf> {
    let dir = root.join("target").join("update-key");
    let key = dir.join("dev.key");
    if key.is_file() && key.with_extension("pub").is_file() {
        return Ok(key);
    }
    run(Command::new(release.join("appliance-image"))
        .args(["keygen", "--name", "dev", "--out"])
        .arg(&dir))?;
    Ok(key)
}

fn require_root(what: &str) -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u`")?;
    if out.stdout.trim_ascii() != b"0" {
        bail!("{what} needs root (mmdebstrap, and a root tree with device nodes and owners)");
    }
    Ok(())
}

/// The image, built first when there is none (or when asked to).
fn image_if_needed(rebuild: bool) -> Result<PathBuf> {
    let disk = image_dir(&repo_root()?).join("appliance.img");
    if rebuild || !disk.exists() {
        return image();
    }
    println!(
        "==> using the existing {} (`cargo xtask image` or `run --rebuild` to rebuild)",
        disk.display()
    );
    Ok(disk)
}

fn run_vm(rebuild: bool, kvm: bool) -> Result<()> {
    let root = repo_root()?;
    let disk = image_if_needed(rebuild)?;
    ensure_debian_packages(QEMU_PACKAGES)?;
    let dir = root.join("target").join("vm").join("run");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A fresh overlay and UEFI variable store each run: every boot starts as a newly
    // flashed box, and the image itself is never written.
    let overlay = dir.join("disk.qcow2");
    let vars = dir.join("OVMF_VARS.fd");
    if overlay.exists() {
        fs::remove_file(&overlay).with_context(|| format!("removing {}", overlay.display()))?;
    }
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&disk)
        .arg(&overlay))?;
    fs::copy(OVMF_VARS, &vars).with_context(|| format!("copying {OVMF_VARS}"))?;

    let hostfwd: Vec<String> = FORWARDS
        .iter()
        .map(|(proto, host, guest, _)| format!("hostfwd={proto}:127.0.0.1:{host}-:{guest}"))
        .collect();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", if kvm { "kvm" } else { "tcg" }])
        .args(["-m", "2048", "-smp", "2", "-nographic"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!("if=virtio,format=qcow2,file={}", overlay.display()))
        .arg("-netdev")
        .arg(format!("user,id=wan,{}", hostfwd.join(",")))
        .args(["-device", "virtio-net-pci,netdev=wan,mac=52:54:00:a9:00:01"])
        .arg("-netdev")
        .arg(format!("socket,id=lan,listen={LAN_SOCKET}"))
        .args(["-device", "virtio-net-pci,netdev=lan,mac=52:54:00:a9:00:02"]);
    println!(
        "==> booting {} in QEMU ({})",
        rel(&root, &disk),
        if kvm { "KVM" } else { "TCG" }
    );
    println!("    WAN: QEMU user network; host ports forwarded to the appliance:");
    for (proto, host, guest, what) in FORWARDS {
        println!("      {what:<4} 127.0.0.1:{host}/{proto} -> {guest}");
    }
    println!("    LAN: socket {LAN_SOCKET} (192.168.1.1/24 on the appliance)");
    println!("    SSH: ssh -p 2222 root@127.0.0.1 (keys: ~/.ssh/id_*.pub at image build time)");
    println!("    console: root logs in without a password; quit QEMU with Ctrl-A X");
    run(&mut cmd)
}

/// Each VM is one TCG thread, so two of them use the two cores that the build used.
const VM_LANES: usize = 2;

fn vm_test(only: &[String], lanes: usize, ignored: bool) -> Result<()> {
    let root = repo_root()?;
    let started = Instant::now();
    image_if_needed(false)?;
    // The same inputs must give the same root: a second build from the warm cache is cheap.
    if only.is_empty() && !ignored {
        check_reproducible()?;
    }
    ensure_debian_packages(QEMU_PACKAGES)?;
    // The A/B test edits the ESP of a copy of the image.
    ensure_debian_packages(&["mtools"])?;
    vm_lanes::run(&root, only, lanes, ignored)?;
    println!("==> VM tests passed in {}", Secs(started.elapsed()));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// System packages

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// What building stored takes: libzfs_core's headers and .pc file for its bindgen build
/// script (libzfslinux-dev, from Debian's contrib component) and libclang for bindgen.
const ZFS_BUILD_PACKAGES: &[&str] = &["libzfslinux-dev", "libclang-dev", "pkg-config"];

/// Packages that exist only in Debian's contrib component, which a stock install lacks.
const CONTRIB_PACKAGES: &[&str] = &["libzfslinux-dev", "zfsutils-linux", "zfs-dkms"];

const CONTRIB_LIST: &str = "/etc/apt/sources.list.d/contrib.list";

/// Installs the Debian packages that are not installed yet (`apt-get update` runs once per
/// process, and only when something is missing).
fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing = not_installed(packages);
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing Debian packages: {}", missing.join(" "));
    let fail = || {
        format!(
            "could not install {}; on Debian 12 run as root: apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        )
    };
    if missing.iter().any(|p| CONTRIB_PACKAGES.contains(p)) && ensure_contrib()? {
        APT_UPDATED.store(false, Ordering::Relaxed);
    }
    if !APT_UPDATED.load(Ordering::Relaxed) {
        run(apt_get().arg("update")).with_context(fail)?;
        APT_UPDATED.store(true, Ordering::Relaxed);
    }
    apt_install(&missing).with_context(fail)?;
    // apt removes an installed package that conflicts with the new ones: the build machine
    // came with a backported qemu-utils 10, which went when Debian's qemu-system-x86 7.2
    // came in, and every VM test then failed for want of qemu-img. What the list lost is
    // installed again, in the version that fits beside the new ones.
    let lost = not_installed(packages);
    if lost.is_empty() {
        return Ok(());
    }
    println!(
        "installing Debian packages again after apt removed them: {}",
        lost.join(" ")
    );
    apt_install(&lost).with_context(|| {
        format!(
            "apt removed {} while installing {}; on Debian 12 run as root: apt-get install {}",
            lost.join(" "),
            missing.join(" "),
            packages.join(" ")
        )
    })
}

fn not_installed<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run(apt_get()
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages))
}

/// Enables Debian's contrib component when no apt source has it, by writing
/// [`CONTRIB_LIST`] for the release this host runs. Returns whether it wrote the file (the
/// package lists then need an update).
fn ensure_contrib() -> Result<bool> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            dir.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources")),
        );
    }
    let enabled = files
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .any(|text| apt_sources_have_contrib(&text));
    if enabled {
        return Ok(false);
    }
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "Debian's contrib component is not enabled and /etc/os-release names no \
                 VERSION_CODENAME; add contrib to the apt sources by hand"
            )
        })?;
    println!("enabling Debian's contrib component in {CONTRIB_LIST}");
    fs::write(
        CONTRIB_LIST,
        format!("deb http://deb.debian.org/debian {codename} contrib\n"),
    )
    .with_context(|| {
        format!("cannot write {CONTRIB_LIST} to enable Debian's contrib component (run as root)")
    })?;
    Ok(true)
}

/// Whether an apt sources file, one-line (`deb URI SUITE COMPONENTS...`) or deb822
/// (`Components:`), enables the contrib component.
fn apt_sources_have_contrib(text: &str) -> bool {
    text.lines().map(str::trim).any(|line| {
        if let Some(rest) = line.strip_prefix("deb ") {
            // Options in brackets come before the URI; components follow URI and suite.
            let rest = match rest.trim_start().strip_prefix('[') {
                Some(r) => r.split_once(']').map_or("", |(_, r)| r),
                None => rest,
            };
            rest.split_whitespace().skip(2).any(|c| c == "contrib")
        } else if let Some(rest) = line.strip_prefix("Components:") {
            rest.split_whitespace().any(|c| c == "contrib")
        } else {
            false
        }
    })
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii() == b"install ok installed")
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

// ---------------------------------------------------------------------------------------
// Fuzzing

#[derive(Debug)]
struct FuzzOpts {
    target: String,
    seconds: u64,
    jobs: u32,
    /// Passed through to libFuzzer.
    extra: Vec<String>,
}

impl FuzzOpts {
    fn parse(args: &[String]) -> Result<Self, Failure> {
        let mut target = None;
        let mut seconds = DEFAULT_FUZZ_SECONDS;
        let mut jobs = 1;
        let mut extra = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => usage(format!("{name} needs a value")),
            };
            match flag {
                "--time" => seconds = positive(&value("--time")?, "--time")?,
                "--jobs" | "-j" => {
                    let n = positive(&value("--jobs")?, "--jobs")?;
                    jobs = match u32::try_from(n) {
                        Ok(n) => n,
                        Err(_) => return usage("--jobs is too large"),
                    };
                }
                "--" => {
                    extra.extend(it.by_ref().cloned());
                }
                f if f.starts_with('-') => return usage(format!("unknown option `{arg}`")),
                _ if target.is_none() => target = Some(arg.clone()),
                _ => return usage(format!("unexpected argument `{arg}`")),
            }
        }
        let Some(target) = target else {
            return usage("fuzz needs a target name, e.g. `cargo xtask fuzz config`");
        };
        Ok(FuzzOpts {
            target,
            seconds,
            jobs,
            extra,
        })
    }
}

fn positive(v: &str, name: &str) -> Result<u64, Failure> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => usage(format!("{name} takes a positive whole number, got `{v}`")),
    }
}

fn fuzz(opts: &FuzzOpts) -> Result<(), Failure> {
    let root = repo_root()?;
    let targets = fuzz_targets(&root)?;
    if !targets.contains(&opts.target) {
        let known: Vec<&str> = targets.iter().map(String::as_str).collect();
        return usage(format!(
            "no fuzz target `{}`; fuzz/fuzz_targets/ has: {}",
            opts.target,
            known.join(", ")
        ));
    }
    ensure_cargo_fuzz(&root)?;
    let corpus = root.join("fuzz").join("corpus").join(&opts.target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeded = seed_corpus(&root, &opts.target, &corpus)?;
    if seeded > 0 {
        println!("seeded {} with {seeded} files", rel(&root, &corpus));
    }

    let dict = write_dictionary(&root, &opts.target)?;

    println!(
        "==> fuzz {} for {} s with {} job(s) (stable rustc, RUSTC_BOOTSTRAP=1)",
        opts.target, opts.seconds, opts.jobs
    );
    let t = Instant::now();
    let mut cmd = cargo(&root);
    // cargo-fuzz passes -Z flags (sanitizers, sancov) to rustc. Only a stable toolchain is
    // installed; RUSTC_BOOTSTRAP=1 makes stable rustc and cargo accept them.
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--fuzz-dir", "fuzz", &opts.target])
        .arg(format!("--jobs={}", opts.jobs))
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds));
    if let Some(dict) = dict {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.args(&opts.extra);
    let result = run(&mut cmd);
    println!("==> fuzz {} ran for {}", opts.target, Secs(t.elapsed()));
    result.map_err(|e| {
        let artifacts = root.join("fuzz").join("artifacts").join(&opts.target);
        Failure::Failed(e.context(format!(
            "fuzzing `{}` failed; a crashing input is saved under {} \
             (replay it: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz {} <file>)",
            opts.target,
            rel(&root, &artifacts),
            opts.target
        )))
    })
}

/// The names of the fuzz targets: the `.rs` files in fuzz/fuzz_targets/.
fn fuzz_targets(root: &Path) -> Result<BTreeSet<String>> {
    let dir = root.join("fuzz").join("fuzz_targets");
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            out.insert(stem.to_owned());
        }
    }
    Ok(out)
}

fn ensure_cargo_fuzz(root: &Path) -> Result<()> {
    if quiet(cargo(root).args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    println!("==> installing cargo-fuzz");
    run(cargo(root).args(["install", "cargo-fuzz", "--locked"]))
        .context("`cargo fuzz` is missing and `cargo install cargo-fuzz --locked` failed")
}

/// Copies the example configs into the corpus of the `config` target; returns how many.
fn seed_corpus(root: &Path, target: &str, corpus: &Path) -> Result<usize> {
    if target != "config" {
        return Ok(0);
    }
    let mut seeds: Vec<(String, PathBuf)> = vec![(
        "seed-default.toml".to_owned(),
        root.join("appliance/config/default.toml"),
    )];
    for kind in ["valid", "invalid"] {
        let dir = root.join("appliance/tests").join(kind);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml")
                && let Some(name) = path.file_name().and_then(|n| n.to_str())
            {
                seeds.push((format!("seed-{kind}-{name}"), path));
            }
        }
    }
    let mut n = 0;
    for (name, from) in seeds {
        if !from.exists() {
            continue;
        }
        fs::copy(&from, corpus.join(&name))
            .with_context(|| format!("copying {} into the corpus", from.display()))?;
        n += 1;
    }
    Ok(n)
}

/// TOML syntax and typical values, for the `config` dictionary.
const CONFIG_TOKENS: &[&str] = &[
    "version = 1\n",
    " = ",
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "\"\"\"",
    "{",
    "}",
    ", ",
    ".",
    "\n",
    "#",
    "true",
    "false",
    "\"\"",
    "[]",
    "{}",
    "\"90s\"",
    "\"1h30m\"",
    "\"2w\"",
    "\"512M\"",
    "\"1.5G\"",
    "\"8000-8100\"",
    "\"10/second\"",
    "\"100/minute burst 20\"",
    "\"22:00-06:00\"",
    "\"192.168.1.1/24\"",
    "\"10.0.0.1\"",
    "\"fd00::1/64\"",
    "\"::\"",
    "\"0.0.0.0/0\"",
    "\"aa:bb:cc:dd:ee:ff\"",
    "\"eth0\"",
    "\"example.org\"",
    "\"https://example.org/list.txt\"",
    "\"/data/secret\"",
    "\"/dev/sda\"",
    "65535",
    "4294967295",
    "-1",
    "0",
];

/// Writes a libFuzzer dictionary for the `config` target, built from the strings in the
/// current JSON Schema (key names, enum values) plus TOML syntax, so that mutations produce
/// keys the loader knows. Returns its path; other targets get none.
fn write_dictionary(root: &Path, target: &str) -> Result<Option<PathBuf>> {
    if target != "config" {
        return Ok(None);
    }
    let schema = generated(root, "json-schema")?;
    let mut words = BTreeSet::new();
    // Every short JSON string literal of name-like characters: property names, enum
    // values, and some schema keywords (harmless noise in a dictionary).
    for (i, piece) in schema.split('"').enumerate() {
        let name_like = !piece.is_empty()
            && piece.len() <= 40
            && piece
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if i % 2 == 1 && name_like {
            words.insert(piece.to_owned());
            words.insert(format!("\"{piece}\""));
        }
    }
    words.extend(CONFIG_TOKENS.iter().map(|t| (*t).to_owned()));
    let mut out = String::from("# Generated by `cargo xtask fuzz config`; not committed.\n");
    for w in &words {
        out.push('"');
        for b in w.bytes() {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                0x20..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\x{b:02X}")),
            }
        }
        out.push_str("\"\n");
    }
    let dir = root.join("fuzz").join("target").join("dicts");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{target}.dict"));
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("dictionary {} ({} entries)", rel(root, &path), words.len());
    Ok(Some(path))
}

// ---------------------------------------------------------------------------------------
// Schema

/// A document generated from appliance's code, as `applctl schema --format FORMAT` prints
/// it. Through applctl rather than linking appliance: xtask is built before every CI step,
/// and appliance's dependency tree made that a 2-minute debug build of it all.
fn generated(root: &Path, format: &str) -> Result<String> {
    let mut cmd = cargo(root);
    cmd.args([
        "run",
        "--quiet",
        "--locked",
        "--package",
        "appliance",
        "--bin",
        "applctl",
    ])
    .args(["--", "schema", "--format", format])
    .stderr(Stdio::inherit());
    let out = cmd
        .output()
        .with_context(|| format!("running {}", Shown(&cmd)))?;
    if !out.status.success() {
        bail!("{} failed ({})", Shown(&cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", Shown(&cmd)))
}

fn schema(check: bool) -> Result<()> {
    let root = repo_root()?;
    let files = [
        (
            "appliance/config.schema.json",
            generated(&root, "json-schema")?,
        ),
        ("docs/config.md", generated(&root, "reference")?),
        ("appliance/openapi.json", generated(&root, "openapi")?),
    ];
    let mut stale = Vec::new();
    for (rel_path, content) in files {
        let path = root.join(rel_path);
        let current = fs::read_to_string(&path).ok();
        if current.as_deref() == Some(content.as_str()) {
            println!("{rel_path} is up to date");
            continue;
        }
        if check {
            stale.push(rel_path);
            continue;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {rel_path}");
    }
    if !stale.is_empty() {
        bail!(
            "{} out of date; run `cargo xtask schema` and commit the result",
            stale.join(" and ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The workspace root: the parent of this crate's directory.
fn repo_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// A `cargo` command run in the repo root: the cargo that runs xtask, else the one on PATH.
fn cargo(root: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut c = Command::new(cargo);
    c.current_dir(root);
    c
}

/// `cargo test` of the VM test target (`tests/vm`, behind the `vm` feature); the caller adds
/// `--no-run` or the test arguments. Selected from the whole workspace, so that features
/// unify as in `cargo test --workspace` and CI reuses the test step's dependencies: with
/// `-p appliance-tests` 18 of them (ring, hyper, ...) got other features and were built again
/// (7 minutes of a CI run).
fn cargo_vm_tests(root: &Path) -> Command {
    let mut c = cargo(root);
    c.args([
        "test",
        "--locked",
        "--workspace",
        "--features",
        "appliance-tests/vm",
        "--test",
        "vm",
    ]);
    c
}

/// Runs a command with inherited output, echoing it first; fails unless it exits 0.
fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", Shown(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", Shown(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("`{}` exited with {status}", Shown(cmd)))
    }
}

/// Runs a command with its output discarded; fails unless it exits 0.
fn quiet(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{}`", Shown(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("`{}` exited with {status}", Shown(cmd)))
    }
}

/// A command line for display (program name without its directory, plus the arguments).
struct Shown<'a>(&'a Command);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = Path::new(self.0.get_program());
        let name = program.file_name().unwrap_or(program.as_os_str());
        write!(f, "{}", name.to_string_lossy())?;
        for arg in self.0.get_args() {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// A duration as seconds with one decimal, or minutes and seconds past a minute.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs_f64();
        if s < 60.0 {
            write!(f, "{s:.1}s")
        } else {
            let whole = self.0.as_secs();
            write!(f, "{}m{:02}s", whole / 60, whole % 60)
        }
    }
}

fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn parse(s: &str) -> Option<FuzzOpts> {
        FuzzOpts::parse(&args(s)).ok()
    }

    #[test]
    fn fuzz_options() {
        let o = parse("config").map(|o| (o.target, o.seconds, o.jobs));
        assert_eq!(o, Some(("config".to_owned(), DEFAULT_FUZZ_SECONDS, 1)));
        let o = parse("--time 5 config --jobs=2 -- -max_len=100");
        let o = o.map(|o| (o.target, o.seconds, o.jobs, o.extra));
        assert_eq!(
            o,
            Some(("config".to_owned(), 5, 2, vec!["-max_len=100".to_owned()]))
        );
        assert!(parse("").is_none());
        assert!(parse("config --time 0").is_none());
        assert!(parse("config --time").is_none());
        assert!(parse("config --bogus").is_none());
        assert!(parse("config other").is_none());
    }

    #[test]
    fn usage_errors_are_distinguished() {
        assert!(matches!(
            dispatch(&args("frobnicate")),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            dispatch(&args("ci extra")),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            dispatch(&args("schema --x")),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            dispatch(&args("run --bogus")),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            dispatch(&args("bench net --bogus")),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            dispatch(&args("bench netd")),
            Err(Failure::Failed(_))
        ));
        assert!(dispatch(&args("help")).is_ok());
    }

    #[test]
    fn contrib_is_found_in_either_sources_format() {
        assert!(apt_sources_have_contrib(
            "deb http://deb.debian.org/debian bookworm main contrib\n"
        ));
        assert!(apt_sources_have_contrib(
            "deb [signed-by=/k.gpg] http://deb.debian.org/debian bookworm contrib"
        ));
        assert!(apt_sources_have_contrib(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main contrib\n"
        ));
        assert!(!apt_sources_have_contrib(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
        ));
        assert!(!apt_sources_have_contrib(
            "# deb http://deb.debian.org/debian bookworm contrib\ndeb http://x/contrib bookworm main\n"
        ));
    }

    #[test]
    fn durations_display() {
        assert_eq!(Secs(Duration::from_millis(1234)).to_string(), "1.2s");
        assert_eq!(Secs(Duration::from_secs(125)).to_string(), "2m05s");
    }

    #[test]
    fn the_config_fuzz_target_exists() {
        let root = repo_root().ok();
        let targets = root.and_then(|r| fuzz_targets(&r).ok());
        assert!(targets.is_some_and(|t| t.contains("config")));
    }
}
