//! The VM suite run as separate test processes in lanes, longest test first.
//!
//! libtest with `--test-threads=2` takes tests in name order, so the longest one (the OTA
//! power-cut test, about half the suite) could start last and leave one core idle while it
//! runs alone. Each lane here is one QEMU (one TCG thread, one core); a free lane takes the
//! longest test left (LPT scheduling), which keeps the suite near half its summed time. Every
//! test's output goes to its own log, printed whole when it ends so that parallel outputs never
//! interleave, and the summary lists each test's time: the figures that the weights below come
//! from.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::Secs;

/// Seconds each test took in a clean-clone CI run (2 lanes, 2 cores); only the order
/// matters. Matched as a prefix of the test's path; a new test counts as [`UNKNOWN`].
const EXPECTED_SECS: &[(&str, u64)] = &[
    ("ota_power::", 1800),
    ("ota::", 800),
    ("replication::", 700),
    ("storage_daemon::", 600),
    ("shares::", 400),
    ("storage::", 350),
    ("a_trial_slot", 300),
    ("wireguard::", 250),
    ("vlan::", 200),
    ("zpool::", 200),
    ("boots_to", 220),
];

/// Where a test without a weight goes: early, since an unmeasured test may be long.
const UNKNOWN: u64 = 500;

fn expected(test: &str) -> u64 {
    EXPECTED_SECS
        .iter()
        .find(|(prefix, _)| test.starts_with(prefix))
        .map_or(UNKNOWN, |&(_, secs)| secs)
}

/// Longest expected first; ties by name so that the order is the same on every run.
fn schedule(mut tests: Vec<String>) -> Vec<String> {
    tests.sort_by(|a, b| expected(b).cmp(&expected(a)).then_with(|| a.cmp(b)));
    tests
}

/// Builds the VM test executable and returns its path.
fn build(root: &Path) -> Result<PathBuf> {
    let mut cmd = crate::cargo_vm_tests(root);
    cmd.args(["--no-run", "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit());
    println!("$ {}", crate::Shown(&cmd));
    let out = cmd.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the VM tests failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v.pointer("/reason").and_then(|r| r.as_str()) == Some("compiler-artifact")
                && v.pointer("/target/name").and_then(|n| n.as_str()) == Some("vm")
        })
        .find_map(|v| v.pointer("/executable")?.as_str().map(PathBuf::from))
        .context("cargo built no executable for the `vm` test target")
}

/// The names `--list` prints, one `name: test` line each.
fn list(exe: &Path, ignored: bool) -> Result<Vec<String>> {
    let mut cmd = Command::new(exe);
    cmd.args(["--list", "--format", "terse"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let out = cmd
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} --list failed ({})", exe.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

struct Outcome {
    test: String,
    lane: usize,
    took: Duration,
    passed: bool,
    log: PathBuf,
}

/// Runs the VM tests that are not ignored, or with `ignored` those that are (those whose
/// path contains one of `only`, when given), in `lanes` parallel processes; fails if any
/// failed, after all have run.
pub(crate) fn run(root: &Path, only: &[String], lanes: usize, ignored: bool) -> Result<()> {
    let exe = build(root)?;
    let ignored_tests = list(&exe, true)?;
    let mut tests: Vec<String> = list(&exe, false)?
        .into_iter()
        .filter(|t| ignored_tests.contains(t) == ignored)
        .filter(|t| only.is_empty() || only.iter().any(|o| t.contains(o.as_str())))
        .collect();
    if tests.is_empty() {
        bail!("no VM test matches {}", only.join(", "));
    }
    tests = schedule(tests);
    let logs = root.join("target").join("vm-logs").join("lanes");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    println!(
        "==> {} VM tests in {lanes} lanes, longest expected first: {}",
        tests.len(),
        tests.join(", ")
    );
    let cpu_before = cpu_times();
    let queue = Mutex::new(tests.into_iter().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for lane in 1..=lanes {
            let (queue, outcomes, exe, logs) = (&queue, &outcomes, &exe, &logs);
            s.spawn(move || {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(test) = next else { break };
                    let outcome = run_one(root, exe, logs, lane, &test, started, ignored);
                    if let Ok(mut all) = outcomes.lock() {
                        all.push(outcome);
                    }
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_default();
    // Whether another lane would have found idle CPU: a VM test also waits on the host
    // (squashfs builds, ssh, the guest's timers).
    let idle = match (cpu_before, cpu_times()) {
        (Some((busy0, idle0)), Some((busy1, idle1))) => {
            let total = (busy1 + idle1).saturating_sub(busy0 + idle0).max(1);
            format!(
                ", the CPUs {:.0}% idle",
                100.0 * idle1.saturating_sub(idle0) as f64 / total as f64
            )
        }
        _ => String::new(),
    };
    println!(
        "==> VM tests: {} in {} ({lanes} lanes{idle})",
        outcomes.len(),
        Secs(started.elapsed())
    );
    for o in &outcomes {
        println!(
            "    lane {} {:>8}  {}  {}",
            o.lane,
            Secs(o.took).to_string(),
            if o.passed { "ok    " } else { "FAILED" },
            o.test
        );
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|o| format!("{} (log {})", o.test, crate::rel(root, &o.log)))
            .collect();
        bail!("{} VM test(s) failed: {}", failed.len(), list.join("; "));
    }
    Ok(())
}

/// Busy and idle (idle + iowait) jiffies of all CPUs, from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        // user .. steal; guest time is already counted in user.
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4)?;
    let busy = fields.iter().sum::<u64>().checked_sub(idle)?;
    Some((busy, idle))
}

fn run_one(
    root: &Path,
    exe: &Path,
    logs: &Path,
    lane: usize,
    test: &str,
    started: Instant,
    ignored: bool,
) -> Outcome {
    let log = logs.join(format!("{}.log", test.replace("::", "-")));
    println!(
        "==> [lane {lane}, {}] start {test}",
        Secs(started.elapsed())
    );
    let t = Instant::now();
    let passed = (|| -> Result<bool> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let status = Command::new(exe)
            // cargo runs a test binary in its package's directory.
            .current_dir(root.join("tests"))
            .env("CARGO_MANIFEST_DIR", root.join("tests"))
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .args(ignored.then_some("--ignored"))
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(status.success())
    })();
    let took = t.elapsed();
    let (passed, why) = match passed {
        Ok(p) => (p, String::new()),
        Err(e) => (false, format!("{e:#}")),
    };
    let text = fs::read_to_string(&log).unwrap_or_default();
    // One print per test keeps the lanes' outputs apart in the CI log.
    println!(
        "==> [lane {lane}] {test}: {} in {}\n{text}{why}\n==> [lane {lane}] end of {test} ({})",
        if passed { "ok" } else { "FAILED" },
        Secs(took),
        Secs(started.elapsed())
    );
    Outcome {
        test: test.to_owned(),
        lane,
        took,
        passed,
        log,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_expected_test_goes_first_and_unknown_ones_early() {
        let order = schedule(vec![
            "units::x".to_owned(),
            "ota_power::y".to_owned(),
            "new::z".to_owned(),
            "ota::w".to_owned(),
        ]);
        assert_eq!(order, ["ota_power::y", "ota::w", "new::z", "units::x"]);
    }

    #[test]
    fn ota_is_not_taken_for_ota_power() {
        assert_eq!(expected("ota::install"), 800);
        assert_eq!(expected("ota_power::cuts"), 1800);
    }
}
