//! The firewall bench behind `cargo xtask bench net` (issue #4): netd's full apply of a
//! large router config against `nft -f` of the same ruleset as text, the no-op apply and a
//! one-forward change, each in a fresh network namespace of the host, in one run; with
//! `--netd BIN`, the same no-op apply and one-forward change through `netd serve`'s
//! POST /v1/apply (what applianced sends), the record of the apply included.
//!
//! The parent (`bench_net --dir DIR`) writes the configs, makes a namespace per repetition
//! and runs itself inside it (`ip netns exec NS bench_net apply ...` or `... nft-file ...`),
//! so that netd and nft spawn their `nft` the same way, and so that each child's peak RSS
//! (`getrusage`, self and waited-for children) is the apply process's and nft's alone.
//! Needs root, `ip` (iproute2) and `nft` (nftables); fails, naming what is missing, without.

use std::error::Error;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netd::firewall::{Firewall, Nft, NftCli, normalize_listing, render};
use nix::sys::resource::{UsageWho, getrusage};
use serde_json::{Value, json};

type Res<T> = Result<T, Box<dyn Error>>;

const ZONES: usize = 8;
const FORWARDS: usize = 2000;
const BLOCKLIST: usize = 100_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("apply") => child_apply(args.get(1..).unwrap_or_default()),
        Some("nft-file") => child_nft_file(args.get(1..).unwrap_or_default()),
        _ => parent(&args),
    };
    if let Err(e) = result {
        eprintln!("bench_net: {e}");
        std::process::exit(1);
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Peak RSS in KiB of this process and of the largest child it has waited for.
fn peak_rss() -> Res<(i64, i64)> {
    let me = getrusage(UsageWho::RUSAGE_SELF)?.max_rss();
    let children = getrusage(UsageWho::RUSAGE_CHILDREN)?.max_rss();
    Ok((me, children))
}

/// The router: 8 zones (one link each), 2000 TCP port forwards from WAN spread over the
/// other zones' servers, and a WAN blocklist rule with 100k source addresses. The config
/// model has no named address sets: a rule's `source` list is how a blocklist is declared,
/// and netd renders a list that long as a named set of its own.
/// The bench's router; `prefixes`: the blocklist holds /25 prefixes (an interval set, whose
/// elements nft 1.0.6 fetches before any element command) instead of /32 addresses.
fn router_config(extra_forward: bool, z1_ssh_port: u16, prefixes: bool) -> String {
    let mut s = String::from("version = 1\n\n[system]\nhostname = \"bench\"\n\n");
    let zone = |i: usize| {
        if i == 0 {
            "wan".to_owned()
        } else {
            format!("z{i}")
        }
    };
    for i in 0..ZONES {
        let name = zone(i);
        let _ = writeln!(s, "[interfaces.{name}]\ndevice = \"eth{i}\"");
        if i == 0 {
            s.push_str("ipv4 = \"dhcp\"\n\n");
        } else {
            let _ = writeln!(s, "addresses = [\"10.{i}.0.1/16\"]\n");
        }
    }
    for i in 0..ZONES {
        let name = zone(i);
        let (input, forward) = if i == 0 {
            ("drop", "drop")
        } else {
            ("accept", "accept")
        };
        let _ = writeln!(
            s,
            "[firewall.zones.{name}]\ninterfaces = [\"{name}\"]\ninput = \"{input}\"\nforward = \"{forward}\"\nmasquerade = {}\n",
            i == 0
        );
    }
    for i in 1..ZONES {
        let _ = writeln!(
            s,
            "[[firewall.policies]]\nfrom = \"z{i}\"\nto = \"wan\"\naction = \"accept\"\n"
        );
    }
    for i in 1..ZONES {
        let port = if i == 1 { z1_ssh_port } else { 22 };
        let _ = writeln!(
            s,
            "[[firewall.rules]]\nname = \"z{i}-ssh\"\nfrom = \"z{i}\"\nprotocol = \"tcp\"\nports = [{port}]\naction = \"accept\"\n"
        );
    }
    s.push_str(
        "[[firewall.rules]]\nname = \"blocklist\"\nfrom = \"wan\"\naction = \"drop\"\nsource = [\n",
    );
    for i in 0..BLOCKLIST {
        if prefixes {
            // 100.64.0.0 and up: one /25 in each /24
            let a = 0x6440_0000u32 + (i as u32) * 256;
            let _ = writeln!(s, "  \"{}/25\",", std::net::Ipv4Addr::from(a));
        } else {
            // 100.64.0.0/10 and up: distinct /32s, none overlapping
            let a = 0x6440_0000u32 + (i as u32) * 3;
            let _ = writeln!(s, "  \"{}/32\",", std::net::Ipv4Addr::from(a));
        }
    }
    s.push_str("]\n\n");
    let forwards = FORWARDS + usize::from(extra_forward);
    for f in 0..forwards {
        let z = 1 + f % (ZONES - 1);
        let host = 10 + f / (ZONES - 1) % 200;
        let _ = writeln!(
            s,
            "[firewall.forwards.f{f}]\nprotocol = \"tcp\"\nport = {}\nto = \"10.{z}.0.{host}\"\nto_port = 80\n",
            20000 + f
        );
    }
    s
}

fn load(path: &str) -> Res<appliance::Config> {
    let text = std::fs::read_to_string(path)?;
    appliance::load_str(&text).map_err(|d| format!("{path}: invalid config: {d}").into())
}

/// Inside a fresh namespace: netd's full apply, `noops` no-op applies, one forward added,
/// then one rule changed (each timed from the config already loaded: render, plan,
/// write), and the rule counters read as `/metrics` reads them.
fn child_apply(args: &[String]) -> Res<()> {
    let base = opt(args, "--config").ok_or("apply needs --config")?;
    let plus = opt(args, "--config-plus").ok_or("apply needs --config-plus")?;
    let rule = opt(args, "--config-rule").ok_or("apply needs --config-rule")?;
    let noops: usize = opt(args, "--noops").unwrap_or("5").parse()?;

    let t = Instant::now();
    let cfg = load(base)?;
    let load_ms = ms(t.elapsed());

    // the full apply as netd serve does it: render, observe (the ruleset generation),
    // plan, apply, record (in memory and in a state file on tmpfs, as /run/netd is)
    // a directory of its own: the record has side files for the large sets
    let state_dir = PathBuf::from(format!("/run/netd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::create_dir_all(&state_dir)?;
    let state = state_dir.join("firewall.json");
    let t = Instant::now();
    let rs = render(&cfg);
    let render_ms = ms(t.elapsed());
    let mut fw = Firewall::with_state_file(NftCli::new(), &state);
    if !fw.apply(&rs)? {
        return Err("the first apply into an empty namespace wrote nothing".into());
    }
    let full_ms = ms(t.elapsed());

    let t = Instant::now();
    let listing = fw
        .nft()
        .list()?
        .ok_or("the table is missing after the apply")?;
    let list_ms = ms(t.elapsed());
    let t = Instant::now();
    let counters = fw.rule_counters()?.ok_or("no rules after the apply")?;
    let counters_ms = ms(t.elapsed());
    if counters.len() < FORWARDS {
        return Err(format!("the rule dump found {} counted rules", counters.len()).into());
    }
    if let Some(out) = opt(args, "--listing-out") {
        std::fs::write(out, normalize_listing(&listing).to_string())?;
    }

    let (mut noop_ms, mut noop_apply_ms) = (Vec::new(), Vec::new());
    for _ in 0..noops {
        let t = Instant::now();
        let rs = render(&cfg);
        let rendered = Instant::now();
        if fw.apply(&rs)? {
            return Err("netd rewrote the table for an unchanged config".into());
        }
        noop_apply_ms.push(ms(rendered.elapsed()));
        noop_ms.push(ms(t.elapsed()));
    }

    let cfg2 = load(plus)?;
    let t = Instant::now();
    let rs2 = render(&cfg2);
    let rendered = Instant::now();
    if !fw.apply(&rs2)? {
        return Err("netd did not apply the added forward".into());
    }
    let one_apply_ms = ms(rendered.elapsed());
    let one_ms = ms(t.elapsed());

    // z1-ssh's port changes: that rule alone is deleted and inserted by its handle
    let chain_rules = |fw: &Firewall<NftCli>| -> Res<Vec<u64>> {
        Ok(fw
            .nft()
            .rules(Some("input_z1"))?
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.handle)
            .collect())
    };
    let handles_before = chain_rules(&fw)?;
    let cfg3 = load(rule)?;
    let t = Instant::now();
    if !fw.apply(&render(&cfg3))? {
        return Err("netd did not apply the changed rule".into());
    }
    let one_rule_ms = ms(t.elapsed());
    let handles_after = chain_rules(&fw)?;
    let kept = handles_before
        .iter()
        .filter(|h| handles_after.contains(h))
        .count();
    if kept + 1 != handles_before.len() {
        return Err(format!(
            "one changed rule should leave the other rules of input_z1 alone: {handles_before:?} -> {handles_after:?}"
        )
        .into());
    }
    // its state writer finishes the last record first
    drop(fw);
    let _ = std::fs::remove_dir_all(&state_dir);

    // nft's own peak is measured by `nft-file --json`: a child of this big process would
    // report the memory it inherited at fork as its peak
    let (rss, _) = peak_rss()?;
    println!(
        "{}",
        json!({
            "load_ms": load_ms, "render_ms": render_ms, "full_ms": full_ms,
            "list_ms": list_ms, "counters_ms": counters_ms, "noop_ms": noop_ms,
            "one_forward_ms": one_ms, "one_rule_ms": one_rule_ms,
            "noop_apply_ms": noop_apply_ms, "one_forward_apply_ms": one_apply_ms,
            "rss_kib": rss,
            "json_bytes": rs.to_json().len(),
        })
    );
    Ok(())
}

/// Inside a fresh namespace: `nft -f` of the ruleset text.
fn child_nft_file(args: &[String]) -> Res<()> {
    let file = opt(args, "--file").ok_or("nft-file needs --file")?;
    let mut argv = vec!["-f", file];
    if args.iter().any(|a| a == "--json") {
        argv.insert(0, "-j");
    }
    let t = Instant::now();
    let status = Command::new("nft").args(&argv).status()?;
    let nft_ms = ms(t.elapsed());
    if !status.success() {
        return Err(format!("nft {} failed: {status}", argv.join(" ")).into());
    }
    let (_, nft_rss) = peak_rss()?;
    if let Some(out) = opt(args, "--listing-out") {
        let listing = NftCli::new().list()?.ok_or("nft -f left no table")?;
        std::fs::write(out, normalize_listing(&listing).to_string())?;
    }
    println!("{}", json!({ "nft_ms": nft_ms, "nft_rss_kib": nft_rss }));
    Ok(())
}

fn require(argv: &[&str], package: &str) -> Res<()> {
    let ok = Command::new(argv.first().copied().unwrap_or_default())
        .args(argv.get(1..).unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` does not work: install Debian's {package}",
            argv.join(" ")
        )
        .into())
    }
}

fn run(cmd: &mut Command) -> Res<String> {
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", out.status).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Res<Self> {
        // a leftover of an interrupted run
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self(name))
    }

    fn exec(&self, argv: &[&str]) -> Res<Value> {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv))?;
        Ok(serde_json::from_str(out.trim())?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Nearest-rank percentile of a sample.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).max(1);
    s.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn nums(rows: &[Value], key: &str) -> Vec<f64> {
    rows.iter()
        .flat_map(|r| match r.get(key) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_f64).collect(),
            Some(v) => v.as_f64().into_iter().collect(),
            None => Vec::new(),
        })
        .collect()
}

fn line(what: &str, v: &[f64]) {
    println!(
        "    {what:<36} median {:>9.1} ms   p90 {:>9.1} ms   (n={})",
        pct(v, 0.5),
        pct(v, 0.9),
        v.len()
    );
}

/// `netd serve` (the binary at `netd`) in a namespace of its own with the router's eight
/// links, over a store of its own: each request goes the way applianced sends it
/// (POST /v1/apply on the control socket), so the figures include loading the generation
/// from the store, the whole transaction and the record of the apply (applied.json,
/// written and fsynced when the generation changes).
struct Served {
    ns: Netns,
    dir: PathBuf,
    store: appliance::store::Store,
    client: appliance::control::ControlClient,
    rt: tokio::runtime::Runtime,
    child: std::process::Child,
}

impl Served {
    fn start(netd: &str, dir: PathBuf, base: &str, ns: Netns) -> Res<Self> {
        for i in 0..ZONES {
            run(Command::new("ip").args([
                "-n",
                &ns.0,
                "link",
                "add",
                &format!("eth{i}"),
                "type",
                "veth",
                "peer",
                "name",
                &format!("peer{i}"),
            ]))?;
            run(Command::new("ip").args(["-n", &ns.0, "link", "set", &format!("peer{i}"), "up"]))?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let store = appliance::store::Store::open(dir.join("config"))?;
        let first = store.commit(&std::fs::read_to_string(base)?, "bench")?;
        store.activate(first)?;
        let socket = dir.join("netd.sock");
        let log = std::fs::File::create(dir.join("netd.log"))?;
        // The box's /run is a tmpfs (netd's records go there); a build machine's may be
        // the root disk, where every record's fsync would be timed as a disk write.
        let run_dir = run_dir();
        std::fs::create_dir_all(&run_dir)?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
            .arg(&run_dir))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, netd, "serve", "--socket"])
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("config"))
            // tmpfs, as /run/netd is on the box; applied.json goes beside it
            .arg("--firewall-state")
            .arg(run_dir.join("firewall.json"))
            .arg("--dhcp-dir")
            .arg(dir.join("dhcp"))
            .arg("--wan-dns-file")
            .arg(dir.join("wan-dns"))
            .arg("--wireguard-dir")
            .arg(dir.join("wireguard"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = appliance::control::ControlClient::new(&socket);
        let mut served = Self {
            ns,
            dir,
            store,
            client,
            rt,
            child,
        };
        // The first apply (the whole table) runs before the socket answers.
        let started = Instant::now();
        loop {
            if let Some(status) = served.child.try_wait()? {
                return Err(format!("netd serve exited with {status}: {}", served.log()).into());
            }
            if let Ok(s) = served.rt.block_on(served.client.get_json("/v1/status"))
                && s.get("generation").and_then(Value::as_u64) == Some(first)
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!(
                    "netd serve did not apply generation {first}: {}",
                    served.log()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(served)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("netd.log")).unwrap_or_default()
    }

    /// Commits `text` as a new generation (as `applctl apply` does) and applies it through
    /// the socket: the milliseconds of the request and the actions netd reports.
    fn apply(&self, text: &str) -> Res<(f64, usize)> {
        let n = self.store.commit(text, "bench")?;
        let t = Instant::now();
        let reply = self
            .rt
            .block_on(
                self.client
                    .post_json("/v1/apply", &json!({ "generation": n })),
            )
            .map_err(|e| format!("{e}\n{}", self.log()))?;
        let took = ms(t.elapsed());
        let actions = reply
            .get("actions")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Ok((took, actions))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg(run_dir()).status();
        let _ = std::fs::remove_dir_all(run_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.ns;
    }
}

/// Where `netd serve` keeps its records, as /run/netd on the box: a tmpfs of its own.
fn run_dir() -> PathBuf {
    PathBuf::from(format!("/run/netd-bench-serve-{}", std::process::id()))
}

/// The daemon path: `reps` no-op applies (the config in force as a new generation) and
/// `reps` one-forward changes (each followed by an unmeasured apply back to the base).
fn daemon_path(
    netd: &str,
    dir: &std::path::Path,
    base: &str,
    plus: &str,
    reps: usize,
) -> Res<(Vec<f64>, Vec<f64>)> {
    let ns = Netns::new(format!("netd-bench-{}-serve", std::process::id()))?;
    let served = Served::start(netd, dir.join("serve"), base, ns)?;
    let (base_text, plus_text) = (
        std::fs::read_to_string(base)?,
        std::fs::read_to_string(plus)?,
    );
    let (mut noop, mut one) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let (noop_ms, actions) = served.apply(&base_text)?;
        if actions != 0 {
            return Err(
                format!("the no-op apply through netd serve took {actions} actions").into(),
            );
        }
        let (one_ms, actions) = served.apply(&plus_text)?;
        if actions == 0 {
            return Err("netd serve did not apply the added forward".into());
        }
        let (back_ms, _) = served.apply(&base_text)?;
        println!(
            "    rep {rep}: no-op {noop_ms:.1} ms, one forward added {one_ms:.1} ms, removed {back_ms:.1} ms"
        );
        noop.push(noop_ms);
        one.push(one_ms);
    }
    // netd's own breakdown of each apply (its log goes with the namespace).
    println!("    netd's steps, apply by apply (load, then the transaction):");
    for l in served.log().lines().filter(|l| {
        l.contains("generation loaded") || l.contains("same bytes") || l.contains("took=")
    }) {
        println!(
            "      {}",
            l.split_once("netd::daemon: ").map_or(l, |(_, r)| r)
        );
    }
    Ok((noop, one))
}

fn parent(args: &[String]) -> Res<()> {
    let dir = PathBuf::from(opt(args, "--dir").ok_or("usage: bench_net --dir DIR [--reps N]")?);
    let reps: usize = opt(args, "--reps").unwrap_or("5").parse()?;
    if reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("the net bench needs root (network namespaces and nft)".into());
    }
    require(&["ip", "netns", "list"], "iproute2")?;
    require(&["nft", "--version"], "nftables")?;
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().ok_or("the bench's path is not UTF-8")?;
    let path = |name: &str| -> Res<String> {
        Ok(dir
            .join(name)
            .to_str()
            .ok_or("the bench directory is not UTF-8")?
            .to_owned())
    };
    let (base, plus) = (path("appliance.toml")?, path("appliance-plus1.toml")?);
    let rule = path("appliance-plus1-rule.toml")?;
    std::fs::write(&base, router_config(false, 22, false))?;
    std::fs::write(&plus, router_config(true, 22, false))?;
    std::fs::write(&rule, router_config(true, 2222, false))?;
    let (base_p, plus_p) = (
        path("appliance-prefixes.toml")?,
        path("appliance-prefixes-plus1.toml")?,
    );
    std::fs::write(&base_p, router_config(false, 22, true))?;
    std::fs::write(&plus_p, router_config(true, 22, true))?;
    println!(
        "==> config: {ZONES} zones, {FORWARDS} port forwards, a {BLOCKLIST}-address blocklist rule ({} bytes) in {}",
        std::fs::metadata(&base)?.len(),
        dir.display()
    );

    let pid = std::process::id();
    let text = path("ruleset.nft")?;
    let batch = path("ruleset.json")?;
    let (netd_listing, nft_listing) = (path("listing-netd.json")?, path("listing-nft.json")?);
    {
        // the raw nft side's input: the table netd writes, as `nft list` prints it
        let ns = Netns::new(format!("netd-bench-{pid}-text"))?;
        let rs = render(&load(&base)?);
        std::fs::write(&batch, rs.to_json())?;
        Firewall::new(NftCli::in_netns(&ns.0)).apply(&rs)?;
        let listed = run(Command::new("ip").args([
            "netns",
            "exec",
            &ns.0,
            "nft",
            "list",
            "table",
            "inet",
            "appliance",
        ]))?;
        std::fs::write(&text, listed)?;
    }
    let mut netd_rows = Vec::new();
    println!(
        "==> netd: full apply, 5 no-op applies, one forward added, one rule changed; {reps} fresh namespaces"
    );
    for rep in 0..reps {
        let ns = Netns::new(format!("netd-bench-{pid}-{rep}"))?;
        let mut argv = vec![
            exe,
            "apply",
            "--config",
            &base,
            "--config-plus",
            &plus,
            "--config-rule",
            &rule,
        ];
        if rep == 0 {
            argv.extend(["--listing-out", &netd_listing]);
        }
        let row = ns.exec(&argv)?;
        println!(
            "    rep {rep}: full {:.1} ms, no-op {} ms, one forward {:.1} ms, one rule {:.1} ms",
            row.get("full_ms")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN),
            nums(std::slice::from_ref(&row), "noop_ms")
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join("/"),
            row.get("one_forward_ms")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN),
            row.get("one_rule_ms")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN),
        );
        netd_rows.push(row);
    }

    println!(
        "==> nft -f of the same table as text ({} bytes), and nft -j -f of netd's batch ({} bytes); {reps} fresh namespaces each",
        std::fs::metadata(&text)?.len(),
        std::fs::metadata(&batch)?.len()
    );
    let mut nft_rows = Vec::new();
    for rep in 0..reps {
        let ns = Netns::new(format!("netd-bench-{pid}-nft{rep}"))?;
        let mut argv = vec![exe, "nft-file", "--file", &text];
        if rep == 0 {
            argv.extend(["--listing-out", &nft_listing]);
        }
        nft_rows.push(ns.exec(&argv)?);
    }
    let mut json_rows = Vec::new();
    for rep in 0..reps {
        let ns = Netns::new(format!("netd-bench-{pid}-json{rep}"))?;
        json_rows.push(ns.exec(&[exe, "nft-file", "--json", "--file", &batch])?);
    }
    let (serve_noop, serve_one, serve_one_p) = match opt(args, "--netd") {
        Some(netd) => {
            println!(
                "==> netd serve ({netd}): POST /v1/apply of a new generation, {reps} no-op applies and {reps} one-forward changes"
            );
            let (noop, one) = daemon_path(netd, &dir, &base, &plus, reps)?;
            println!(
                "==> netd serve, the blocklist as {BLOCKLIST} /25 prefixes (an interval set): {reps} no-op applies and {reps} one-forward changes"
            );
            let (_, one_p) = daemon_path(netd, &dir, &base_p, &plus_p, reps)?;
            (noop, one, one_p)
        }
        None => {
            println!("==> netd serve: left out (no --netd)");
            (Vec::new(), Vec::new(), Vec::new())
        }
    };
    let same = std::fs::read(&netd_listing)? == std::fs::read(&nft_listing)?;
    println!(
        "    the table nft -f built {} the one netd built (normalized listings)",
        if same { "equals" } else { "DIFFERS FROM" }
    );

    let full = nums(&netd_rows, "full_ms");
    let raw = nums(&nft_rows, "nft_ms");
    let noop = nums(&netd_rows, "noop_ms");
    let one = nums(&netd_rows, "one_forward_ms");
    println!("==> results");
    line(
        "config load (parse, validate)",
        &nums(&netd_rows, "load_ms"),
    );
    line("netd render", &nums(&netd_rows, "render_ms"));
    line("netd full apply (render..record)", &full);
    line(
        "nft -j list of the table (before: /metrics)",
        &nums(&netd_rows, "list_ms"),
    );
    line(
        "rule counters by rule dump (/metrics)",
        &nums(&netd_rows, "counters_ms"),
    );
    line("nft -f (text)", &raw);
    line(
        "nft -j -f (netd's JSON batch alone)",
        &nums(&json_rows, "nft_ms"),
    );
    line("netd serve no-op apply (/v1/apply)", &serve_noop);
    line("netd serve one forward added (/v1/apply)", &serve_one);
    line(
        "  the same beside 100k /25 prefixes (/v1/apply)",
        &serve_one_p,
    );
    line("netd no-op apply (render..plan)", &noop);
    line(
        "  of which observe and plan",
        &nums(&netd_rows, "noop_apply_ms"),
    );
    line("netd one forward added (render..record)", &one);
    line(
        "  of which observe, plan, nft, record",
        &nums(&netd_rows, "one_forward_apply_ms"),
    );
    line(
        "netd one rule changed (render..record)",
        &nums(&netd_rows, "one_rule_ms"),
    );
    let max = |rows: &[Value], k: &str| nums(rows, k).into_iter().fold(0.0, f64::max) / 1024.0;
    println!(
        "    peak RSS: netd apply process {:.1} MiB; nft -j -f of its batch {:.1} MiB; nft -f of the text {:.1} MiB",
        max(&netd_rows, "rss_kib"),
        max(&json_rows, "nft_rss_kib"),
        max(&nft_rows, "nft_rss_kib")
    );
    let ratio = pct(&full, 0.5) / pct(&raw, 0.5);
    // The goals are the daemon's figures (the request through netd serve), the ones the
    // bench lines report, not the firewall step's alone.
    println!(
        "    goals (reported, not asserted): full apply <= 1.2x nft: {}; no-op < 50 ms: {}; one forward < 30 ms: {}",
        verdict(ratio <= 1.2),
        verdict(pct(&serve_noop, 0.5) < 50.0),
        verdict(pct(&serve_one, 0.5) < 30.0)
    );
    let mut lines = vec![
        format!("bench: noop_apply = {:.1} ms", pct(&serve_noop, 0.5)),
        format!("bench: one_forward_change = {:.1} ms", pct(&serve_one, 0.5)),
        format!(
            "bench: one_forward_change_prefixes = {:.1} ms",
            pct(&serve_one_p, 0.5)
        ),
    ];
    lines.push(format!("bench: full_apply_vs_nft = {ratio:.2} x"));
    lines.push(format!("bench: full_apply = {:.1} ms", pct(&full, 0.5)));
    lines.push(format!("bench: nft_f = {:.1} ms", pct(&raw, 0.5)));
    lines.push(format!(
        "bench: noop_apply_firewall = {:.1} ms",
        pct(&noop, 0.5)
    ));
    lines.push(format!(
        "bench: one_forward_change_firewall = {:.1} ms",
        pct(&one, 0.5)
    ));
    lines.push(format!(
        "bench: one_rule_change = {:.1} ms",
        pct(&nums(&netd_rows, "one_rule_ms"), 0.5)
    ));
    lines.push(format!(
        "bench: metrics_rule_counters = {:.1} ms",
        pct(&nums(&netd_rows, "counters_ms"), 0.5)
    ));
    lines.push(format!(
        "bench: metrics_listing_before = {:.1} ms",
        pct(&nums(&netd_rows, "list_ms"), 0.5)
    ));
    lines.push(format!(
        "bench: netd_apply_peak_rss = {:.1} MiB",
        max(&netd_rows, "rss_kib")
    ));
    lines.push(format!(
        "bench: nft_json_peak_rss = {:.1} MiB",
        max(&json_rows, "nft_rss_kib")
    ));
    lines.push(format!(
        "bench: nft_text_peak_rss = {:.1} MiB",
        max(&nft_rows, "nft_rss_kib")
    ));
    println!();
    for l in &lines {
        println!("{l}");
    }
    if let Some(out) = opt(args, "--lines-out") {
        std::fs::write(out, lines.join("\n") + "\n")?;
    }
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}
