//! `cargo xtask bench dns`: dnsd against dnsmasq (the engine under Pi-hole's FTL) and
//! unbound, on loopback, with the same synthetic block list and the same authoritative
//! upstream (knot).
//!
//! Each server runs alone, pinned to CPU 0; dnsperf and knot share CPU 1, so QPS ratios
//! compare work per core. Peak QPS comes from a closed-loop dnsperf run (100 queries
//! outstanding); p50/p99 come from a second, open-loop run at half of that server's peak
//! rate with `dnsperf -v`, which prints every answer's latency (dnsperf 2.10 has no
//! percentiles of its own). The first [`WARMUP`] of each open-loop run is left out of the
//! percentiles: dnsperf itself bursts then (see there).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Failure, Secs, cargo, ensure_debian_packages, repo_root, run, usage};

const PACKAGES: &[&str] = &["dnsperf", "dnsmasq-base", "unbound", "knot", "util-linux"];
const DEFAULT_DOMAINS: usize = 1_000_000;
const DEFAULT_SECONDS: u64 = 10;
/// The zone knot serves; every forwarded and cached name is under it (a wildcard answers).
const ZONE: &str = "fwd.bench";
/// What the wildcard of [`ZONE`] answers.
const ZONE_ADDR: [u8; 4] = [192, 0, 2, 1];
/// Names of the cached set, asked over and over after a warm-up.
const CACHED_NAMES: usize = 1000;
/// Lines of the blocked query file (dnsperf loops over it).
const BLOCKED_QUERIES: usize = 200_000;
/// Queries outstanding in the peak-rate runs: under dnsmasq's default `dns-forward-max`
/// (150), so that dnsmasq does not drop forwarded queries by design.
const OUTSTANDING: u32 = 100;
/// The longest a server may take to block the probe name after its start.
const LOAD_DEADLINE: Duration = Duration::from_secs(180);
/// The start of an open-loop run left out of its latency percentiles. For its first `-q`
/// queries dnsperf 2.10 yields the CPU after every other send ("avoid flooding the network
/// too quickly" in `do_send`), so it falls behind its `-Q` schedule; after that it catches
/// up at full speed, and the burst starves its own receiver thread on the client core. In
/// the quiet run of 2026-11-26 07:54 every server's latency jumped at exactly the 10,000th
/// query (`-q 10000`), and with `-q 3000` at the 3,000th; the faster the rate, the longer the
/// catch-up (up to 60,000 queries, 0.7 s, at 84k QPS). The whole-run figure is still shown.
const WARMUP: Duration = Duration::from_secs(2);
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";

/// `dns [--domains N] [--seconds S]`; other areas are not built yet.
pub(super) fn dispatch(rest: &[String]) -> Result<(), Failure> {
    let Some((area, opts)) = rest.split_first() else {
        return usage("bench needs an area: `cargo xtask bench dns [--domains N] [--seconds S]`");
    };
    match area.as_str() {
        "dns" => {
            let opts = Opts::parse(opts)?;
            Ok(bench(&opts)?)
        }
        "netd" | "stored" => Err(Failure::Failed(anyhow!(
            "`cargo xtask bench {area}` arrives with the {area} issue"
        ))),
        other => usage(format!("unknown bench area `{other}` (known: dns)")),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Opts {
    domains: usize,
    seconds: u64,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self, Failure> {
        let mut o = Opts {
            domains: DEFAULT_DOMAINS,
            seconds: DEFAULT_SECONDS,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (a.as_str(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next().cloned());
            match key {
                "--domains" => {
                    o.domains = match value().and_then(|v| v.replace('_', "").parse().ok()) {
                        Some(n) if (1000..=20_000_000).contains(&n) => n,
                        _ => return usage("--domains takes a number from 1000 to 20000000"),
                    }
                }
                "--seconds" => {
                    o.seconds = match value().and_then(|v| v.parse().ok()) {
                        Some(n) if (2..=600).contains(&n) => n,
                        _ => return usage("--seconds takes a number from 2 to 600"),
                    }
                }
                other => return usage(format!("unknown option to bench dns: `{other}`")),
            }
        }
        Ok(o)
    }
}

// ---------------------------------------------------------------------------------------
// Synthetic data

/// splitmix64: the same names on every machine and every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const TLDS: &[&str] = &[
    "com", "net", "org", "io", "info", "biz", "co", "xyz", "top", "site", "online", "de",
];
const PREFIXES: &[&str] = &["ads", "track", "metrics", "cdn", "pixel", "stats", "t", "a"];

/// Block list names: random-looking labels made unique by the index after the last hyphen,
/// a third of them with a leading label as real lists have.
fn blocked_domains(n: usize) -> Vec<String> {
    blocked_domains_from(n, 0x00d1_5ea5_eb10_c4ed, "")
}

/// [`blocked_domains`] from another seed, with `tag` before each index (a tag of letters
/// that are not hex digits makes every name differ from every untagged one).
fn blocked_domains_from(n: usize, seed: u64, tag: &str) -> Vec<String> {
    let mut rng = Rng(seed);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|i| {
            let mut s = String::with_capacity(32);
            if rng.below(3) == 0 {
                s.push_str(
                    PREFIXES
                        .get(rng.below(PREFIXES.len() as u64) as usize)
                        .unwrap_or(&"a"),
                );
                s.push('.');
            }
            for _ in 0..4 + rng.below(9) {
                let c = alphabet
                    .get(rng.below(26) as usize)
                    .copied()
                    .unwrap_or(b'a');
                s.push(char::from(c));
            }
            let _ = write!(s, "-{tag}{i:x}.");
            s.push_str(
                TLDS.get(rng.below(TLDS.len() as u64) as usize)
                    .unwrap_or(&"com"),
            );
            s
        })
        .collect()
}

fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(f);
    for l in lines {
        w.write_all(l.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Where everything of one run lives.
struct Files {
    dir: PathBuf,
    hosts: PathBuf,
    dnsmasq_list: PathBuf,
    unbound_list: PathBuf,
    blocked: PathBuf,
    cached: PathBuf,
    forwarded: PathBuf,
    forwarded_half: PathBuf,
    reload: PathBuf,
    /// A blocked name (a subdomain of the last list entry) for the load-time probe.
    probe: String,
}

fn generate(dir: &Path, opts: &Opts) -> Result<Files> {
    let domains = blocked_domains(opts.domains);
    let f = Files {
        dir: dir.to_path_buf(),
        hosts: dir.join("blocklist.hosts"),
        dnsmasq_list: dir.join("dnsmasq-blocklist.conf"),
        unbound_list: dir.join("unbound-blocklist.conf"),
        blocked: dir.join("q-blocked.txt"),
        cached: dir.join("q-cached.txt"),
        forwarded: dir.join("q-forwarded.txt"),
        forwarded_half: dir.join("q-forwarded-half.txt"),
        reload: dir.join("q-reload.txt"),
        probe: format!("www.{}", domains.last().map_or("none.test", String::as_str)),
    };
    write_lines(
        &f.hosts,
        std::iter::once("# synthetic block list of cargo xtask bench dns".to_owned())
            .chain(domains.iter().map(|d| format!("0.0.0.0 {d}"))),
    )?;
    write_lines(
        &f.dnsmasq_list,
        domains.iter().map(|d| format!("address=/{d}/#")),
    )?;
    write_lines(
        &f.unbound_list,
        std::iter::once("server:".to_owned()).chain(
            domains
                .iter()
                .map(|d| format!("local-zone: \"{d}.\" always_null")),
        ),
    )?;
    // Listed names and, for a quarter, a subdomain of one: every server blocks both.
    let mut rng = Rng(0x0b10_c4ed_0000_0001);
    let mut blocked = Vec::with_capacity(BLOCKED_QUERIES);
    for _ in 0..BLOCKED_QUERIES {
        let d = domains
            .get(rng.below(domains.len() as u64) as usize)
            .map_or("none.test", String::as_str);
        blocked.push(if rng.below(4) == 0 {
            format!("www.{d} A")
        } else {
            format!("{d} A")
        });
    }
    write_lines(&f.blocked, blocked.iter().cloned())?;
    write_lines(
        &f.cached,
        (0..CACHED_NAMES).map(|i| format!("c{i}.{ZONE} A")),
    )?;
    // Enough distinct names that dnsperf does not wrap around at 100k forwarded QPS.
    let n = usize::try_from(opts.seconds).unwrap_or(600) * 100_000;
    write_lines(&f.forwarded, (0..n).map(|i| format!("f{i}.{ZONE} A")))?;
    write_lines(
        &f.forwarded_half,
        (0..n / 2).map(|i| format!("h{i}.{ZONE} A")),
    )?;
    // The reload load: blocked and cached names alternating.
    write_lines(
        &f.reload,
        blocked
            .iter()
            .take(CACHED_NAMES * 20)
            .enumerate()
            .flat_map(|(i, b)| [b.clone(), format!("c{}.{ZONE} A", i % CACHED_NAMES)]),
    )?;
    Ok(f)
}

// ---------------------------------------------------------------------------------------
// Processes

/// A child that is killed when the bench ends, however it ends.
struct Proc {
    name: String,
    child: Child,
    started: Instant,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("{} exited early with {status}", self.name),
            None => Ok(()),
        }
    }
}

/// Starts `program args` pinned to `cpu`, its stderr (and stdout unless piped) in a log.
fn spawn_pinned(
    name: &str,
    cpu: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    pipe_stdout: bool,
) -> Result<Proc> {
    let err = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let out: Stdio = if pipe_stdout {
        Stdio::piped()
    } else {
        err.try_clone()?.into()
    };
    let started = Instant::now();
    let child = Command::new("taskset")
        .args(["-c", cpu])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        started,
    })
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 after 100 tries")
}

/// VmRSS and VmHWM of a process, in MB.
fn memory(pid: u32) -> Result<(f64, f64)> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v / 1024.0)
    };
    match (kb("VmRSS:"), kb("VmHWM:")) {
        (Some(r), Some(h)) => Ok((r, h)),
        _ => bail!("no VmRSS/VmHWM in {path}"),
    }
}

/// The kernel's UDP drop counters (`/proc/net/snmp`, this network namespace): datagrams
/// dropped because a receive buffer was full, and sends refused for a full send buffer.
/// They count every UDP socket: the server's, dnsperf's and anything else running.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct UdpDrops {
    rcvbuf: u64,
    sndbuf: u64,
}

impl UdpDrops {
    fn read() -> Result<Self> {
        let text = fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
        Self::parse(&text).context("no Udp RcvbufErrors/SndbufErrors in /proc/net/snmp")
    }

    fn parse(snmp: &str) -> Option<Self> {
        let mut rows = snmp.lines().filter_map(|l| l.strip_prefix("Udp:"));
        let (names, values) = (rows.next()?, rows.next()?);
        let field = |want: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == want)
                .and_then(|(_, v)| v.parse().ok())
        };
        Some(Self {
            rcvbuf: field("RcvbufErrors")?,
            sndbuf: field("SndbufErrors")?,
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            rcvbuf: self.rcvbuf.saturating_sub(before.rcvbuf),
            sndbuf: self.sndbuf.saturating_sub(before.sndbuf),
        }
    }
}

/// Datagrams dropped by the UDP sockets bound to `addr` since they were made (the `drops`
/// column of `/proc/net/udp`): the server's own losses, as opposed to dnsperf's.
fn socket_drops(addr: SocketAddr) -> Result<u64> {
    let text = fs::read_to_string("/proc/net/udp").context("reading /proc/net/udp")?;
    Ok(socket_drops_in(&text, addr))
}

fn socket_drops_in(table: &str, addr: SocketAddr) -> u64 {
    let SocketAddr::V4(v4) = addr else { return 0 };
    // The kernel prints the address as the u32 in host order (little endian here).
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(1) == Some(&local.as_str()))
                .then(|| cols.last().and_then(|d| d.parse::<u64>().ok()))
                .flatten()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// DNS on the wire, just enough to probe a server

fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63).min(63));
        q.extend_from_slice(label.as_bytes().get(..63.min(label.len())).unwrap_or(&[]));
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    // Each step moves forward, so the walk ends within the message.
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return Some(pos + 2),
            l => pos += 1 + usize::from(l),
        }
    }
}

fn u16_at(b: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(pos)?, *b.get(pos + 1)?]))
}

/// The A records of an answer to query `id`; `None` if it is not one.
fn a_records(b: &[u8], id: u16) -> Option<Vec<[u8; 4]>> {
    if u16_at(b, 0)? != id {
        return None;
    }
    let (qd, an) = (u16_at(b, 4)?, u16_at(b, 6)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(b, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(b, pos)?;
        let (ty, len) = (u16_at(b, pos)?, usize::from(u16_at(b, pos + 8)?));
        let data = b.get(pos + 10..pos + 10 + len)?;
        if let (1, Ok(a)) = (ty, <[u8; 4]>::try_from(data)) {
            out.push(a);
        }
        pos += 10 + len;
    }
    Some(out)
}

/// Asks `name` until the answer has the A record `want`, the process dies, or `deadline`.
/// Returns the time from the process's start.
fn wait_for_answer(
    p: &mut Proc,
    server: SocketAddr,
    name: &str,
    want: [u8; 4],
    deadline: Duration,
) -> Result<Duration> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut id: u16 = 1;
    let mut buf = [0u8; 1500];
    while p.started.elapsed() < deadline {
        p.check_alive()?;
        id = id.wrapping_add(1);
        sock.send_to(&query_bytes(id, name), server)?;
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_millis(20) {
            let Ok(n) = sock.recv(&mut buf) else { break };
            let got = buf
                .get(..n)
                .and_then(|b| a_records(b, id))
                .is_some_and(|a| a.contains(&want));
            if got {
                return Ok(p.started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!(
        "{} did not answer {name} with {want:?} within {}",
        p.name,
        Secs(deadline)
    )
}

/// Whether `server` answers `name` with the A record `want`, asked a few times.
fn answers(server: SocketAddr, name: &str, want: [u8; 4]) -> Result<bool> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut buf = [0u8; 1500];
    for id in 100..103u16 {
        sock.send_to(&query_bytes(id, name), server)?;
        if let Ok(n) = sock.recv(&mut buf) {
            return Ok(buf
                .get(..n)
                .and_then(|b| a_records(b, id))
                .is_some_and(|a| a.contains(&want)));
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------
// dnsperf

#[derive(Debug, Default, Clone)]
struct Perf {
    sent: u64,
    lost: u64,
    qps: f64,
    avg_ms: f64,
    rcodes: String,
    /// Per-answer latencies in ms, in the order answers came, from `-v` runs only.
    latencies: Vec<f64>,
    /// Answers of dnsperf's start-up ([`WARMUP`]) at the front of `latencies`.
    warmup: usize,
}

fn percentile_of(latencies: &[f64], p: f64) -> Option<f64> {
    let mut l = latencies.to_vec();
    l.sort_by(f64::total_cmp);
    let rank = ((p * l.len() as f64).ceil() as usize).max(1) - 1;
    l.get(rank).copied()
}

impl Perf {
    /// Over every answer.
    fn percentile(&self, p: f64) -> Option<f64> {
        percentile_of(&self.latencies, p)
    }

    /// Over the answers after dnsperf's start-up.
    fn steady_percentile(&self, p: f64) -> Option<f64> {
        percentile_of(self.latencies.get(self.warmup..).unwrap_or_default(), p)
    }

    fn max_ms(&self) -> Option<f64> {
        self.latencies.iter().copied().max_by(f64::total_cmp)
    }
}

struct PerfRun<'a> {
    server: SocketAddr,
    file: &'a Path,
    seconds: u64,
    /// Fixed rate (open loop) instead of as fast as answers come back.
    rate: Option<u64>,
    outstanding: u32,
    /// Each name once (warm-up) instead of looping for `seconds`.
    once: bool,
    verbose: bool,
}

fn parse_summary(out: &mut Perf, line: &str) {
    let Some((key, value)) = line.trim().split_once(':') else {
        return;
    };
    let first = || {
        value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
    };
    match key {
        "Queries sent" => out.sent = first().unwrap_or(0.0) as u64,
        "Queries lost" => out.lost = first().unwrap_or(0.0) as u64,
        "Queries per second" => out.qps = first().unwrap_or(0.0),
        "Average Latency (s)" => out.avg_ms = first().unwrap_or(0.0) * 1000.0,
        "Response codes" => out.rcodes = value.trim().to_owned(),
        _ => {}
    }
}

fn read_perf(text: &str, verbose: bool) -> Perf {
    let mut out = Perf::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("> ") {
            if verbose
                && let Some(ms) = rest
                    .split_whitespace()
                    .last()
                    .and_then(|v| v.parse::<f64>().ok())
            {
                out.latencies.push(ms * 1000.0);
            }
        } else {
            parse_summary(&mut out, line);
        }
    }
    out
}

fn dnsperf(r: &PerfRun<'_>, log: &Path) -> Result<Perf> {
    let mut args: Vec<String> = vec![
        "-s".into(),
        r.server.ip().to_string(),
        "-p".into(),
        r.server.port().to_string(),
        "-d".into(),
        r.file.display().to_string(),
        "-c".into(),
        "4".into(),
        "-q".into(),
        r.outstanding.to_string(),
        "-t".into(),
        "2".into(),
        "-l".into(),
        r.seconds.to_string(),
        // 4 MiB socket buffers for dnsperf too: with the default 208 KiB its sockets
        // overflowed whenever its receiver thread lost the client core for a few ms, and
        // those drops counted as the server's losses (run of 09:45: 9,644 of 10,424 lost
        // datagrams were in dnsperf's sockets, 780 in dnsd's).
        "-b".into(),
        "4096".into(),
    ];
    if r.once {
        args.extend(["-n".into(), "1".into()]);
    }
    if let Some(q) = r.rate {
        args.extend(["-Q".into(), q.max(1).to_string()]);
    }
    if r.verbose {
        args.push("-v".into());
    }
    // A file rather than a pipe: a slow reader must not hold dnsperf back and inflate the
    // latencies it measures.
    let mut p = spawn_pinned(
        "dnsperf",
        CLIENT_CPU,
        Path::new("dnsperf"),
        &args,
        log,
        false,
    )?;
    // dnsperf stops itself after -l; the margin covers its last timeouts.
    let deadline = Duration::from_secs(r.seconds + 30);
    let status = loop {
        if let Some(s) = p.child.try_wait()? {
            break s;
        }
        if p.started.elapsed() > deadline {
            bail!("dnsperf did not finish within {}", Secs(deadline));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!("dnsperf exited with {status}; see {}", log.display());
    }
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    let perf = read_perf(&text, r.verbose);
    if perf.sent == 0 {
        bail!("dnsperf sent nothing; see {}", log.display());
    }
    Ok(perf)
}

// ---------------------------------------------------------------------------------------
// The ceiling

/// One peak run of dnsd's `bench_ceiling` helper: a UDP reflector that does no DNS work,
/// so that its rate is what the kernel allows any server on the server core.
#[derive(Debug)]
struct Ceiling {
    peak: Perf,
    cpu: f64,
}

impl Ceiling {
    fn per_cpu_second(&self) -> f64 {
        per_cpu_second(&self.peak, self.cpu)
    }
}

/// Waits until the reflector on `server` sends back a query with the QR bit set.
fn wait_for_echo(p: &mut Proc, server: SocketAddr) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut buf = [0u8; 1500];
    for id in 1..=500u16 {
        p.check_alive()?;
        sock.send_to(&query_bytes(id, "probe.ceiling"), server)?;
        if let Ok(n) = sock.recv(&mut buf)
            && n >= 12
            && u16_at(&buf, 0) == Some(id)
            && buf.get(2).is_some_and(|b| b & 0x80 != 0)
        {
            return Ok(());
        }
    }
    bail!("{} did not answer on {server} within 10 s", p.name)
}

/// The cached query set, closed loop as the servers' peak runs, against the reflector.
fn measure_ceiling(bin: &Path, files: &Files, seconds: u64, when: &str) -> Result<Ceiling> {
    let server = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut p = spawn_pinned(
        "ceiling",
        SERVER_CPU,
        bin,
        &[server.to_string()],
        &files.dir.join(format!("ceiling-{when}.log")),
        false,
    )?;
    wait_for_echo(&mut p, server)?;
    let cpu_before = cpu_seconds(p.pid())?;
    let peak = dnsperf(
        &PerfRun {
            server,
            file: &files.cached,
            seconds,
            rate: None,
            outstanding: OUTSTANDING,
            once: false,
            verbose: false,
        },
        &files.dir.join(format!("dnsperf-ceiling-{when}.out")),
    )?;
    let cpu = cpu_seconds(p.pid())? - cpu_before;
    p.check_alive()?;
    let c = Ceiling { peak, cpu };
    println!(
        "==> ceiling ({when} the servers; a reflector doing no DNS work): {:.0} qps, lost {}, {:.2} CPU seconds of its core, {:.0} answers per CPU second",
        c.peak.qps,
        c.peak.lost,
        c.cpu,
        c.per_cpu_second()
    );
    Ok(c)
}

// ---------------------------------------------------------------------------------------
// The servers

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Set {
    Blocked,
    Cached,
    Forwarded,
}

impl Set {
    const ALL: [Set; 3] = [Set::Blocked, Set::Cached, Set::Forwarded];

    fn name(self) -> &'static str {
        match self {
            Set::Blocked => "blocked",
            Set::Cached => "cached",
            Set::Forwarded => "forwarded",
        }
    }
}

#[derive(Debug, Default)]
struct ServerResult {
    /// Peak run and half-rate run per query set.
    runs: BTreeMap<Set, (Perf, Perf)>,
    load: Duration,
    rss_loaded: f64,
    hwm_loaded: f64,
    rss_after: f64,
    hwm_after: f64,
    /// Resident after [`SETTLE`] without queries: the steady state, once a server has
    /// given back what the last burst freed.
    rss_settled: f64,
    /// The kernel's UDP drop counters over this server's runs (every socket).
    udp: UdpDrops,
    /// Drops of the server's own socket.
    socket_drops: u64,
    /// CPU seconds (user + system, every thread) the server spent during each peak run.
    cpu: BTreeMap<Set, f64>,
}

/// How long the servers sit idle before their steady resident memory is read; longer than
/// dnsd's trim interval (`dnsd::reclaim::TRIM_EVERY`, 5 s).
const SETTLE: Duration = Duration::from_secs(6);

/// Runs the three query sets against a loaded server.
fn measure(
    p: &mut Proc,
    server: SocketAddr,
    files: &Files,
    seconds: u64,
    result: &mut ServerResult,
) -> Result<()> {
    (result.rss_loaded, result.hwm_loaded) = memory(p.pid())?;
    let name = p.name.clone();
    let log = |set: Set, kind: &str| {
        files
            .dir
            .join(format!("dnsperf-{name}-{}-{kind}.out", set.name()))
    };
    if !answers(server, &format!("probe.{ZONE}"), ZONE_ADDR)? {
        bail!("{} does not forward {ZONE} to the upstream", p.name);
    }
    let drops_before = UdpDrops::read()?;
    for set in Set::ALL {
        let (file, half_file) = match set {
            Set::Blocked => (&files.blocked, &files.blocked),
            Set::Cached => (&files.cached, &files.cached),
            Set::Forwarded => (&files.forwarded, &files.forwarded_half),
        };
        if set == Set::Cached {
            dnsperf(
                &PerfRun {
                    server,
                    file,
                    seconds: 30,
                    rate: None,
                    outstanding: 10,
                    once: true,
                    verbose: false,
                },
                &log(set, "warmup"),
            )?;
        }
        let cpu_before = cpu_seconds(p.pid())?;
        let peak = dnsperf(
            &PerfRun {
                server,
                file,
                seconds,
                rate: None,
                outstanding: OUTSTANDING,
                once: false,
                verbose: false,
            },
            &log(set, "peak"),
        )?;
        let cpu = cpu_seconds(p.pid())? - cpu_before;
        result.cpu.insert(set, cpu);
        p.check_alive()?;
        let rate = (peak.qps / 2.0) as u64;
        let mut half = dnsperf(
            &PerfRun {
                server,
                file: half_file,
                seconds: seconds + WARMUP.as_secs(),
                rate: Some(rate),
                outstanding: 10_000,
                once: false,
                verbose: true,
            },
            &log(set, "half"),
        )?;
        half.warmup = usize::try_from(rate.saturating_mul(WARMUP.as_secs())).unwrap_or(0);
        p.check_alive()?;
        println!(
            "  {:<8} {:<9} peak {:>8.0} qps, lost {}, avg {:.3} ms [{}]; at {:.0} qps p50 {} p99 {} ms (whole run {} ms), lost {}",
            p.name,
            set.name(),
            peak.qps,
            peak.lost,
            peak.avg_ms,
            peak.rcodes,
            half.qps,
            ms(half.steady_percentile(0.50)),
            ms(half.steady_percentile(0.99)),
            ms(half.percentile(0.99)),
            half.lost
        );
        println!(
            "  {:<8} {:<9} peak run: {:.2} CPU seconds of its core, {:.0} answers per CPU second",
            p.name,
            set.name(),
            cpu,
            per_cpu_second(&peak, cpu)
        );
        result.runs.insert(set, (peak, half));
    }
    result.udp = UdpDrops::read()?.since(drops_before);
    result.socket_drops = socket_drops(server)?;
    println!(
        "  {:<8} UDP drops over its runs: {} of its own socket; every socket: {} receive-buffer, {} send-buffer",
        p.name, result.socket_drops, result.udp.rcvbuf, result.udp.sndbuf
    );
    (result.rss_after, result.hwm_after) = memory(p.pid())?;
    std::thread::sleep(SETTLE);
    (result.rss_settled, _) = memory(p.pid())?;
    Ok(())
}

/// Linux reports `utime`/`stime` in USER_HZ ticks, 100 a second on every architecture's ABI
/// that this bench runs on (x86-64).
const USER_HZ: f64 = 100.0;

/// CPU seconds, user and system, of every thread of `pid` so far. On loopback the kernel
/// delivers an answer to dnsperf's socket in the sender's system call, so a server's
/// system time includes that delivery, the same for every server.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("no command name in {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at field 3.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no field {} in {path}", i + 3))
    };
    Ok((tick(11)? + tick(12)?) / USER_HZ)
}

/// Answers per CPU second of the server: the work one core does, which the QPS ratio shows
/// only while the server's core, not dnsperf's, is the bottleneck.
fn per_cpu_second(peak: &Perf, cpu: f64) -> f64 {
    if cpu <= 0.0 {
        return 0.0;
    }
    peak.sent.saturating_sub(peak.lost) as f64 / cpu
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

fn start_knot(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let kdir = dir.join("knot");
    fs::create_dir_all(&kdir)?;
    let port = free_port()?;
    let zone = format!(
        "$ORIGIN {ZONE}.\n$TTL 3600\n@ SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 3600\n@ NS ns\nns A 127.0.0.1\n* A {}\n",
        ZONE_ADDR.map(|b| b.to_string()).join(".")
    );
    fs::write(kdir.join(format!("{ZONE}.zone")), zone)?;
    let conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n\
         database:\n    storage: \"{d}\"\n\
         log:\n  - target: stderr\n    any: warning\n\
         zone:\n  - domain: {ZONE}\n    storage: \"{d}\"\n    file: \"{ZONE}.zone\"\n",
        d = kdir.display()
    );
    let conf_path = kdir.join("knot.conf");
    fs::write(&conf_path, conf)?;
    let mut p = spawn_pinned(
        "knot",
        CLIENT_CPU,
        Path::new("/usr/sbin/knotd"),
        &["-c".into(), conf_path.display().to_string()],
        &dir.join("knot.log"),
        false,
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_answer(
        &mut p,
        addr,
        &format!("probe.{ZONE}"),
        ZONE_ADDR,
        Duration::from_secs(30),
    )?;
    Ok((p, addr))
}

fn dnsd_config(dir: &Path, files: &Files, upstream: SocketAddr) -> Result<PathBuf> {
    let path = dir.join("appliance.toml");
    fs::write(
        &path,
        format!(
            "version = 1\n[dns]\nupstreams = [\"{upstream}\"]\ncache_size = 10000\n\
             [dns.lists.bench]\nfile = \"{}\"\nformat = \"hosts\"\n",
            files.hosts.display()
        ),
    )?;
    Ok(path)
}

fn start_dnsd(
    bin: &Path,
    name: &str,
    config: &Path,
    lists: &Path,
    files: &Files,
) -> Result<(Proc, SocketAddr, Duration)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let args = [
        "--config".to_owned(),
        config.display().to_string(),
        "--lists-dir".into(),
        lists.display().to_string(),
        "--listen".into(),
        addr.to_string(),
    ];
    start_server(files, name, bin, &args, addr.port())
}

/// Starts a server on the server core and waits until it answers the probe on `port`;
/// returns it, its address and how long it took to load its list.
fn start_server(
    files: &Files,
    name: &str,
    program: &Path,
    args: &[String],
    port: u16,
) -> Result<(Proc, SocketAddr, Duration)> {
    let log = files.dir.join(format!("{name}.log"));
    let mut p = spawn_pinned(name, SERVER_CPU, program, args, &log, false)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let load = wait_for_answer(&mut p, addr, &files.probe, [0; 4], LOAD_DEADLINE)?;
    Ok((p, addr, load))
}

fn start_dnsmasq(files: &Files, upstream: SocketAddr) -> Result<(Proc, SocketAddr, Duration)> {
    let port = free_port()?;
    let conf = files.dir.join("dnsmasq.conf");
    fs::write(
        &conf,
        format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             server={}#{}\n# Pi-hole's cache size\ncache-size=10000\nuser=root\n\
             pid-file={}\nconf-file={}\n",
            upstream.ip(),
            upstream.port(),
            files.dir.join("dnsmasq.pid").display(),
            files.dnsmasq_list.display()
        ),
    )?;
    let args = ["-k".to_owned(), format!("--conf-file={}", conf.display())];
    start_server(
        files,
        "dnsmasq",
        Path::new("/usr/sbin/dnsmasq"),
        &args,
        port,
    )
}

fn start_unbound(files: &Files, upstream: SocketAddr) -> Result<(Proc, SocketAddr, Duration)> {
    let port = free_port()?;
    let conf = files.dir.join("unbound.conf");
    fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1@{port}\n  num-threads: 1\n  do-daemonize: no\n\
             \x20 username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n\
             \x20 use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n\
             \x20 module-config: \"iterator\"\n  do-not-query-localhost: no\n\
             \x20 qname-minimisation: no\n  access-control: 127.0.0.0/8 allow\n\
             include: \"{list}\"\n\
             forward-zone:\n  name: \".\"\n  forward-addr: {}@{}\n",
            upstream.ip(),
            upstream.port(),
            d = files.dir.display(),
            list = files.unbound_list.display()
        ),
    )?;
    let args = ["-d".to_owned(), "-c".into(), conf.display().to_string()];
    start_server(
        files,
        "unbound",
        Path::new("/usr/sbin/unbound"),
        &args,
        port,
    )
}

// ---------------------------------------------------------------------------------------
// Reload under load

#[derive(Debug)]
struct Reload {
    rate: u64,
    perf: Perf,
    swap_ms: Option<u64>,
    rss_before: f64,
    hwm_during: f64,
    new_entry_blocked: bool,
    udp: UdpDrops,
    socket_drops: u64,
}

/// Replaces the list file by a full replacement: `domains` names none of which the list
/// had, plus the names the reload load asks for (about 2% of a 1M list: they must stay
/// blocked, or the load would turn into forwarded queries at the swap) and `added`. The
/// reload's peak memory is then that of a list replaced whole, the worst case.
fn replace_list(files: &Files, domains: usize, added: &str) -> Result<()> {
    let asked = fs::read_to_string(&files.reload)?;
    let kept: std::collections::BTreeSet<&str> = asked
        .lines()
        .filter_map(|l| l.strip_suffix(" A"))
        .filter(|n| !n.ends_with(ZONE))
        .map(|n| n.strip_prefix("www.").unwrap_or(n))
        .collect();
    let tmp = files.hosts.with_extension("replacement");
    write_lines(
        &tmp,
        std::iter::once("# synthetic block list, replaced".to_owned())
            .chain(
                blocked_domains_from(domains, 0x7e91_ace0_0000_0002, "r")
                    .into_iter()
                    .map(|d| format!("0.0.0.0 {d}")),
            )
            .chain(kept.iter().map(|d| format!("0.0.0.0 {d}")))
            .chain(std::iter::once(format!("0.0.0.0 {added}"))),
    )?;
    fs::rename(&tmp, &files.hosts)?;
    Ok(())
}

/// Runs the reload helper on a copy of dnsd's stored list and swaps the policy once in the
/// middle of a fixed-rate load of blocked and cached names; the reload replaces the list
/// whole ([`replace_list`]) by `replace_with` new names.
fn reload_under_load(
    helper: &Path,
    files: &Files,
    stored: &Path,
    config: &Path,
    rate: u64,
    seconds: u64,
    replace_with: Option<usize>,
) -> Result<Reload> {
    // The control run (`None`) is the same load without a reload.
    let swap = replace_with.is_some();
    let kind = if swap { "reload" } else { "control" };
    let lists = files.dir.join(format!("{kind}-lists"));
    fs::create_dir_all(&lists)?;
    for ext in ["bin", "json"] {
        let from = stored.join(format!("bench.{ext}"));
        fs::copy(&from, lists.join(format!("bench.{ext}")))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // The control run's reload would come after the load, and the helper is killed first.
    let reload_after = if swap {
        seconds * 1000 / 3
    } else {
        (seconds + 60) * 1000
    };
    let args = [
        "--config".to_owned(),
        config.display().to_string(),
        "--lists-dir".into(),
        lists.display().to_string(),
        "--listen".into(),
        addr.to_string(),
        "--reload-after-ms".into(),
        reload_after.to_string(),
        "--exit-after-ms".into(),
        (reload_after + 20_000).to_string(),
    ];
    let mut p = spawn_pinned(
        "bench_reload",
        SERVER_CPU,
        helper,
        &args,
        &files.dir.join(format!("bench_reload-{kind}.log")),
        true,
    )?;
    let stdout = p.child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("the reload helper did not start within 60 s"))?;
    if !ready.starts_with("ready") {
        bail!("the reload helper said `{ready}`");
    }
    // A name only the reloaded list blocks, to see that the swap took effect.
    let added = "added-by-reload.bench-new.test";
    if let Some(domains) = replace_with {
        replace_list(files, domains, added)?;
    }
    // Resets VmHWM, so that it shows the peak of the load and the reload alone.
    fs::write(format!("/proc/{}/clear_refs", p.pid()), "5")?;
    let drops_before = UdpDrops::read()?;
    // Steady state is read while the load runs and before the swap (a third of the run in):
    // right after the start the stored list is mapped but mostly not yet touched, which
    // made the ratio compare the reload against a half-resident process.
    let pid = p.pid();
    let sample_at = Duration::from_millis(reload_after.min(seconds * 1000) / 2);
    let steady = std::thread::spawn(move || {
        std::thread::sleep(sample_at);
        memory(pid).map(|(rss, _)| rss)
    });
    let perf = dnsperf(
        &PerfRun {
            server: addr,
            file: &files.reload,
            seconds,
            rate: Some(rate),
            outstanding: 10_000,
            once: false,
            verbose: true,
        },
        &files.dir.join(format!("dnsperf-{kind}.out")),
    )?;
    let (_, hwm_during) = memory(p.pid())?;
    let rss_before = steady
        .join()
        .map_err(|_| anyhow!("the memory sampler panicked"))??;
    let udp = UdpDrops::read()?.since(drops_before);
    let socket_drops = socket_drops(addr)?;
    let swap_ms = rx
        .recv_timeout(Duration::from_secs(5))
        .ok()
        .and_then(|l| l.strip_prefix("swapped ").and_then(|v| v.parse().ok()));
    let new_entry_blocked = swap && answers(addr, added, [0; 4])?;
    Ok(Reload {
        rate,
        perf,
        swap_ms,
        rss_before,
        hwm_during,
        new_entry_blocked,
        udp,
        socket_drops,
    })
}

// ---------------------------------------------------------------------------------------
// The run

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn bench(opts: &Opts) -> Result<()> {
    let root = repo_root()?;
    let started = Instant::now();
    println!(
        "==> bench dns: {} domains, {} s per run; load average {} on {} CPUs",
        opts.domains,
        opts.seconds,
        loadavg(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    ensure_debian_packages(PACKAGES)?;
    run(cargo(&root).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "dnsd",
        "--bin",
        "dnsd",
        "--example",
        "bench_reload",
        "--example",
        "bench_ceiling",
    ]))?;
    // Where cargo put them: CARGO_TARGET_DIR when set (relative to the root, where cargo
    // runs), else target/.
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    let release = target.join("release");
    let dnsd_bin = release.join("dnsd");
    let helper = release.join("examples").join("bench_reload");
    let reflector = release.join("examples").join("bench_ceiling");

    // The bench's own threads stay off the servers' CPU.
    run(Command::new("taskset").args([
        "-a",
        "-p",
        "-c",
        CLIENT_CPU,
        &std::process::id().to_string(),
    ]))?;
    let dir = root.join("target").join("bench").join("dns");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let files = generate(&dir, opts)?;
    println!(
        "==> generated the block list and query sets in {} under {}",
        Secs(t.elapsed()),
        dir.display()
    );

    let (_knot, upstream) = start_knot(&dir)?;
    println!("==> knot serves {ZONE} on {upstream} (CPU {CLIENT_CPU}, with dnsperf)");
    let mut results: BTreeMap<&str, ServerResult> = BTreeMap::new();
    // The ceiling before the servers and after them: the machine's speed drifts over a run.
    let mut ceiling = vec![measure_ceiling(&reflector, &files, opts.seconds, "before")?];

    // dnsd, first start: the hosts file is read and compiled after the start.
    let config = dnsd_config(&dir, &files, upstream)?;
    let lists = dir.join("dnsd-lists");
    let (p, _, cold) = start_dnsd(&dnsd_bin, "dnsd-cold", &config, &lists, &files)?;
    let (cold_rss, cold_hwm) = memory(p.pid())?;
    drop(p);
    println!(
        "==> dnsd, empty store: blocks {:.3} s after its start (hosts file compiled), RSS {cold_rss:.1} MB, peak {cold_hwm:.1} MB",
        cold.as_secs_f64()
    );
    // dnsd, restart: the compiled list stored by the first start.
    let (mut p, addr, stored_load) = start_dnsd(&dnsd_bin, "dnsd", &config, &lists, &files)?;
    println!(
        "==> dnsd, restart: blocks {:.3} s after its start (stored list)",
        stored_load.as_secs_f64()
    );
    let mut r = ServerResult {
        load: cold,
        ..Default::default()
    };
    measure(&mut p, addr, &files, opts.seconds, &mut r)?;
    drop(p);
    results.insert("dnsd", r);

    type Start = fn(&Files, SocketAddr) -> Result<(Proc, SocketAddr, Duration)>;
    let peers: [(&str, Start); 2] = [("dnsmasq", start_dnsmasq), ("unbound", start_unbound)];
    for (name, start) in peers {
        let (mut p, addr, load) = start(&files, upstream)?;
        println!(
            "==> {name} blocks {:.3} s after its start",
            load.as_secs_f64()
        );
        let mut r = ServerResult {
            load,
            ..Default::default()
        };
        measure(&mut p, addr, &files, opts.seconds, &mut r)?;
        drop(p);
        results.insert(name, r);
    }

    ceiling.push(measure_ceiling(&reflector, &files, opts.seconds, "after")?);

    let dnsd_blocked_peak = results
        .get("dnsd")
        .and_then(|r| r.runs.get(&Set::Blocked))
        .map_or(1000.0, |(p, _)| p.qps);
    // A quarter of the peak: at half of it dnsperf's open-loop bursts already lose queries
    // on every server, which would hide what the reload itself costs.
    let reload_rate = (dnsd_blocked_peak / 4.0) as u64;
    println!(
        "==> dnsd reload under load ({reload_rate} qps, blocked and cached names), and the same load without a reload"
    );
    let control = reload_under_load(
        &helper,
        &files,
        &lists,
        &config,
        reload_rate,
        opts.seconds.max(6),
        None,
    )?;
    let reload = reload_under_load(
        &helper,
        &files,
        &lists,
        &config,
        reload_rate,
        opts.seconds.max(6),
        Some(opts.domains),
    )?;

    report(
        opts,
        &results,
        &ceiling,
        cold_hwm,
        stored_load,
        &reload,
        &control,
    );
    println!(
        "==> bench dns done in {}; load average now {}",
        Secs(started.elapsed()),
        loadavg()
    );
    Ok(())
}

fn report(
    opts: &Opts,
    results: &BTreeMap<&str, ServerResult>,
    ceiling: &[Ceiling],
    cold_hwm: f64,
    stored_load: Duration,
    reload: &Reload,
    control: &Reload,
) {
    let servers = ["dnsd", "dnsmasq", "unbound"];
    let peak = |s: &str, set: Set| {
        results
            .get(s)
            .and_then(|r| r.runs.get(&set))
            .map_or(0.0, |(p, _)| p.qps)
    };
    let per_cpu = |s: &str, set: Set| {
        results.get(s).map_or(0.0, |r| {
            r.runs
                .get(&set)
                .zip(r.cpu.get(&set))
                .map_or(0.0, |((p, _), cpu)| per_cpu_second(p, *cpu))
        })
    };
    let ceiling_qps = ceiling.iter().map(|c| c.peak.qps).fold(0.0, f64::max);
    let ceiling_cpu = ceiling
        .iter()
        .map(Ceiling::per_cpu_second)
        .fold(0.0, f64::max);
    println!();
    for set in Set::ALL {
        println!(
            "{} names: {}\n  (QPS, lost, avg: closed loop, {OUTSTANDING} outstanding; p50, p99, lost@½: open loop at half of that server's QPS, \
             its first {} s left out; p99 all: the whole run)",
            set.name(),
            match set {
                Set::Blocked => "listed names and their subdomains",
                Set::Cached => "1000 names asked again and again after a warm-up",
                Set::Forwarded => "distinct names, cold cache, knot upstream",
            },
            WARMUP.as_secs()
        );
        println!(
            "  {:<8} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "server",
            "QPS",
            "lost",
            "avg ms",
            "p50 ms",
            "p99 ms",
            "p99 all",
            "lost@½",
            "RSS MB",
            "idle MB",
            "peak MB",
            "load s"
        );
        for s in servers {
            let Some(r) = results.get(s) else { continue };
            let Some((p, h)) = r.runs.get(&set) else {
                continue;
            };
            println!(
                "  {:<8} {:>9.0} {:>7} {:>8.3} {:>8} {:>8} {:>8} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>7.2}",
                s,
                p.qps,
                p.lost,
                p.avg_ms,
                ms(h.steady_percentile(0.50)),
                ms(h.steady_percentile(0.99)),
                ms(h.percentile(0.99)),
                h.lost,
                r.rss_after,
                r.rss_settled,
                r.hwm_after,
                r.load.as_secs_f64()
            );
        }
        println!(
            "  dnsd/dnsmasq {:.2}x, dnsd/unbound {:.2}x",
            ratio(peak("dnsd", set), peak("dnsmasq", set)),
            ratio(peak("dnsd", set), peak("unbound", set))
        );
        println!(
            "  answers per CPU second of the server's core (work per core, meaningful when dnsperf's core is the bottleneck): \
             dnsd {:.0}, dnsmasq {:.0}, unbound {:.0}; dnsd/dnsmasq {:.2}x, dnsd/unbound {:.2}x",
            per_cpu("dnsd", set),
            per_cpu("dnsmasq", set),
            per_cpu("unbound", set),
            ratio(per_cpu("dnsd", set), per_cpu("dnsmasq", set)),
            ratio(per_cpu("dnsd", set), per_cpu("unbound", set))
        );
        if set == Set::Cached {
            println!(
                "  ceiling (a reflector doing no DNS work, best of {} runs): {:.0} QPS, {:.0} answers per CPU second; \
                 dnsd reaches {:.2} and {:.2} of them, dnsmasq {:.2} and {:.2}; no server can beat dnsmasq by more than {:.2}x here",
                ceiling.len(),
                ceiling_qps,
                ceiling_cpu,
                ratio(peak("dnsd", set), ceiling_qps),
                ratio(per_cpu("dnsd", set), ceiling_cpu),
                ratio(peak("dnsmasq", set), ceiling_qps),
                ratio(per_cpu("dnsmasq", set), ceiling_cpu),
                ratio(ceiling_qps, peak("dnsmasq", set))
            );
        }
        println!();
    }
    let rs = &reload.perf;
    println!(
        "reload under load (the list replaced whole): {} qps for {:.0} s, policy swapped {} ms \
         after the forced refresh; {} of {} queries lost; p99 {} ms, max {} ms; RSS {:.1} MB \
         steady under the load before the swap, peak {:.1} MB during; name added to the list blocked after: {}",
        reload.rate,
        rs.sent as f64 / reload.rate.max(1) as f64,
        reload
            .swap_ms
            .map_or_else(|| "?".to_owned(), |v| v.to_string()),
        rs.lost,
        rs.sent,
        ms(rs.percentile(0.99)),
        ms(rs.max_ms()),
        reload.rss_before,
        reload.hwm_during,
        reload.new_entry_blocked
    );
    println!(
        "the same load without a reload: {} of {} queries lost; p99 {} ms, max {} ms",
        control.perf.lost,
        control.perf.sent,
        ms(control.perf.percentile(0.99)),
        ms(control.perf.max_ms()),
    );
    println!(
        "UDP drops with a reload: {} of the server's socket, {} receive-buffer on every socket; \
         without: {} and {}",
        reload.socket_drops, reload.udp.rcvbuf, control.socket_drops, control.udp.rcvbuf
    );
    println!(
        "dnsd with an empty store peaks at {cold_hwm:.1} MB while compiling; load average {}",
        loadavg()
    );
    println!();

    let half = |s: &str, set: Set| {
        results
            .get(s)
            .and_then(|r| r.runs.get(&set))
            .map(|(_, h)| h)
    };
    let steady = |s: &str, set: Set| half(s, set).and_then(|h| h.steady_percentile(0.99));
    let whole = |s: &str, set: Set| half(s, set).and_then(|h| h.percentile(0.99));
    let worst = |f: &dyn Fn(Set) -> Option<f64>| {
        [Set::Blocked, Set::Cached]
            .into_iter()
            .filter_map(f)
            .fold(0.0, f64::max)
    };
    let mut lines: Vec<(String, String, &str)> = vec![
        ("domains".into(), opts.domains.to_string(), "names"),
        ("seconds_per_run".into(), opts.seconds.to_string(), "s"),
    ];
    for set in Set::ALL {
        for s in servers {
            lines.push((
                format!("{}_qps_{s}", set.name()),
                format!("{:.0}", peak(s, set)),
                "qps",
            ));
        }
        for other in ["dnsmasq", "unbound"] {
            lines.push((
                format!("{}_qps_vs_{other}", set.name()),
                format!("{:.2}", ratio(peak("dnsd", set), peak(other, set))),
                "ratio",
            ));
        }
        for s in servers {
            lines.push((
                format!("{}_answers_per_cpu_second_{s}", set.name()),
                format!("{:.0}", per_cpu(s, set)),
                "answers",
            ));
        }
        for other in ["dnsmasq", "unbound"] {
            lines.push((
                format!("{}_answers_per_cpu_second_vs_{other}", set.name()),
                format!("{:.2}", ratio(per_cpu("dnsd", set), per_cpu(other, set))),
                "ratio",
            ));
        }
        lines.push((
            format!("p99_half_load_{}", set.name()),
            ms(steady("dnsd", set)),
            "ms",
        ));
        lines.push((
            format!("p99_half_load_whole_run_{}", set.name()),
            ms(whole("dnsd", set)),
            "ms",
        ));
        for other in ["dnsmasq", "unbound"] {
            lines.push((
                format!("p99_half_load_{}_{other}", set.name()),
                ms(steady(other, set)),
                "ms",
            ));
        }
    }
    lines.push(("ceiling_qps".into(), format!("{ceiling_qps:.0}"), "qps"));
    lines.push((
        "ceiling_answers_per_cpu_second".into(),
        format!("{ceiling_cpu:.0}"),
        "answers",
    ));
    for (i, c) in ceiling.iter().enumerate() {
        lines.push((
            format!("ceiling_qps_run_{}", i + 1),
            format!("{:.0}", c.peak.qps),
            "qps",
        ));
    }
    for s in servers {
        lines.push((
            format!("cached_qps_vs_ceiling_{s}"),
            format!("{:.2}", ratio(peak(s, Set::Cached), ceiling_qps)),
            "ratio",
        ));
    }
    // The most any server could show against dnsmasq on cached names on this machine.
    lines.push((
        "ceiling_vs_dnsmasq_cached".into(),
        format!("{:.2}", ratio(ceiling_qps, peak("dnsmasq", Set::Cached))),
        "ratio",
    ));
    lines.push((
        "ceiling_answers_per_cpu_second_vs_dnsmasq_cached".into(),
        format!("{:.2}", ratio(ceiling_cpu, per_cpu("dnsmasq", Set::Cached))),
        "ratio",
    ));
    lines.push((
        "p99_half_load".into(),
        format!("{:.3}", worst(&|set| steady("dnsd", set))),
        "ms",
    ));
    lines.push((
        "p99_half_load_whole_run".into(),
        format!("{:.3}", worst(&|set| whole("dnsd", set))),
        "ms",
    ));
    for s in servers {
        if let Some(r) = results.get(s) {
            lines.push((
                format!("udp_socket_drops_{s}"),
                r.socket_drops.to_string(),
                "datagrams",
            ));
            lines.push((
                format!("udp_rcvbuf_errors_all_sockets_{s}"),
                r.udp.rcvbuf.to_string(),
                "datagrams",
            ));
        }
    }
    for s in servers {
        if let Some(r) = results.get(s) {
            let name = if s == "dnsd" {
                "rss_1m_domains".to_owned()
            } else {
                format!("rss_1m_domains_{s}")
            };
            lines.push((name, format!("{:.1}", r.rss_settled), "MB"));
        }
    }
    if let Some(r) = results.get("dnsd") {
        lines.push((
            "rss_1m_domains_right_after_load".into(),
            format!("{:.1}", r.rss_after),
            "MB",
        ));
    }
    lines.push((
        "rss_peak_compile_1m_domains".into(),
        format!("{cold_hwm:.1}"),
        "MB",
    ));
    for s in servers {
        if let Some(r) = results.get(s) {
            let name = if s == "dnsd" {
                "load_1m_domains".to_owned()
            } else {
                format!("load_1m_domains_{s}")
            };
            lines.push((name, format!("{:.3}", r.load.as_secs_f64()), "s"));
        }
    }
    lines.push((
        "load_stored_1m_domains".into(),
        format!("{:.3}", stored_load.as_secs_f64()),
        "s",
    ));
    lines.push((
        "reload_peak_vs_steady".into(),
        format!("{:.2}", ratio(reload.hwm_during, reload.rss_before)),
        "ratio",
    ));
    lines.push((
        "lost_under_load_without_reload".into(),
        control.perf.lost.to_string(),
        "queries",
    ));
    // Raw, not minus the control run: on a busy machine the two runs lose at different
    // moments, and a difference would hide a loss the reload caused.
    lines.push((
        "lost_during_reload".into(),
        reload.perf.lost.to_string(),
        "queries",
    ));
    lines.push((
        "udp_socket_drops_during_reload".into(),
        reload.socket_drops.to_string(),
        "datagrams",
    ));
    lines.push((
        "udp_rcvbuf_errors_all_sockets_during_reload".into(),
        reload.udp.rcvbuf.to_string(),
        "datagrams",
    ));
    for (name, value, unit) in lines {
        println!("bench: {name} = {value} {unit}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        assert_eq!(
            Opts::parse(&[]).ok(),
            Some(Opts {
                domains: DEFAULT_DOMAINS,
                seconds: DEFAULT_SECONDS
            })
        );
        assert_eq!(
            Opts::parse(&args("--domains 10_000 --seconds=3")).ok(),
            Some(Opts {
                domains: 10_000,
                seconds: 3
            })
        );
        assert!(Opts::parse(&args("--domains 5")).is_err());
        assert!(Opts::parse(&args("--seconds")).is_err());
        assert!(Opts::parse(&args("--bogus")).is_err());
        assert!(matches!(dispatch(&args("")), Err(Failure::Usage(_))));
        assert!(matches!(dispatch(&args("dns --x")), Err(Failure::Usage(_))));
    }

    #[test]
    fn names_are_deterministic_and_distinct() {
        let a = blocked_domains(5000);
        assert_eq!(a, blocked_domains(5000));
        let set: std::collections::BTreeSet<&String> = a.iter().collect();
        assert_eq!(set.len(), a.len());
    }

    #[test]
    fn wire_answers_are_read() {
        let q = query_bytes(7, "x.example.");
        // The query turned into an answer: QR set, one A record by a compression pointer.
        let mut r = q.clone();
        if let Some(b) = r.get_mut(2) {
            *b = 0x81;
        }
        if let Some(b) = r.get_mut(7) {
            *b = 1;
        }
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 0, 0, 0, 0]);
        assert_eq!(a_records(&r, 7), Some(vec![[0, 0, 0, 0]]));
        assert_eq!(a_records(&r, 8), None);
        assert_eq!(a_records(r.get(..r.len() - 2).unwrap_or(&[]), 7), None);
    }

    #[test]
    fn percentiles() {
        let p = Perf {
            latencies: (1..=100).map(f64::from).collect(),
            ..Default::default()
        };
        assert_eq!(p.percentile(0.5), Some(50.0));
        assert_eq!(p.percentile(0.99), Some(99.0));
        assert_eq!(Perf::default().percentile(0.99), None);
        let start = Perf {
            latencies: (1..=100).map(f64::from).collect(),
            warmup: 90,
            ..Default::default()
        };
        assert_eq!(start.steady_percentile(0.5), Some(95.0));
        assert_eq!(start.percentile(0.5), Some(50.0));
    }

    #[test]
    fn udp_counters_are_read() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
            Udp: 335643765 1949 1092184 336737971 1092180 3 0\n\
            UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
            UdpLite: 0 0 0 0 0 0\n";
        let d = UdpDrops::parse(snmp);
        assert_eq!(
            d,
            Some(UdpDrops {
                rcvbuf: 1_092_180,
                sndbuf: 3
            })
        );
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20 12: 0100007F:14B4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 17\n\
            \x20 13: 0100007F:14B5 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 5\n";
        let addr = SocketAddr::from(([127, 0, 0, 1], 5300));
        assert_eq!(socket_drops_in(table, addr), 17);
    }
}
