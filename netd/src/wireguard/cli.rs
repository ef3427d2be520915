//! `netd wg apply | status | watch`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use appliance::Config;
use clap::Subcommand;
use serde_json::{Value, json};

use super::{
    KernelWg, Observed, PublicKey, SystemResolver, WgKernel as _, Wireguard, desired, resolve_due,
};

/// The WireGuard subcommands.
#[derive(Debug, Subcommand)]
pub enum WgCommand {
    /// Bring the kernel's WireGuard tunnels to the config's [wireguard] section: creates
    /// tunnels, generates missing keys, adds, changes and removes peers in place.
    Apply {
        /// The appliance.toml to apply.
        #[arg(long)]
        config: PathBuf,
        /// Where generated private keys are kept (<ifname>.key, mode 0600).
        #[arg(long, default_value = "/data/wireguard")]
        state_dir: PathBuf,
        /// Print the plan without applying it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Peers of netd's tunnels with their last handshake and bytes.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Name peers as this config does (they are keyed by public key otherwise).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply, then keep re-resolving the DNS endpoints of peers that have had no handshake
    /// for over 2 minutes, until stopped.
    Watch {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "/data/wireguard")]
        state_dir: PathBuf,
        /// Seconds between two checks.
        #[arg(long, default_value_t = 30)]
        interval: u64,
    },
}

/// Runs a WireGuard subcommand. Exit codes: 2 for bad input (config, key file, a name
/// taken), 1 for a kernel failure.
pub fn run(command: WgCommand) -> ExitCode {
    match command {
        WgCommand::Apply {
            config,
            state_dir,
            dry_run,
        } => match apply(&config, &state_dir, dry_run, &|_, _| true) {
            Ok(_) => ExitCode::SUCCESS,
            Err(code) => code,
        },
        WgCommand::Status { json, config } => status(json, config.as_deref()),
        WgCommand::Watch {
            config,
            state_dir,
            interval,
        } => watch(&config, &state_dir, Duration::from_secs(interval.max(1))),
    }
}

fn kernel() -> Result<Wireguard<KernelWg>, ExitCode> {
    KernelWg::new().map(Wireguard::new).map_err(|e| {
        tracing::error!("{e}");
        ExitCode::from(1)
    })
}

/// Loads, plans and applies; returns the number of steps.
fn apply(
    config: &Path,
    state_dir: &Path,
    dry_run: bool,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
) -> Result<usize, ExitCode> {
    let cfg = crate::cli::load_config(config)?;
    // Keys and names are checked before anything touches the kernel.
    let wanted = desired(&cfg, state_dir, &SystemResolver, resolve_name).map_err(|e| {
        tracing::error!("{e}; nothing was applied");
        ExitCode::from(2)
    })?;
    let mut wg = kernel()?;
    let planned = Instant::now();
    let actions = wg.plan(&wanted).map_err(|e| {
        tracing::error!("{e}; nothing was applied");
        match e {
            super::ApplyError::Plan(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    })?;
    let plan_ms = planned.elapsed().as_secs_f64() * 1000.0;
    // Thousands of peers would drown the terminal; the count says it all.
    for a in actions.iter().take(50) {
        println!("  {a}");
    }
    if actions.len() > 50 {
        println!("  ... and {} more", actions.len() - 50);
    }
    println!("wg: planned {} actions in {plan_ms:.1} ms", actions.len());
    if dry_run || actions.is_empty() {
        return Ok(actions.len());
    }
    let started = Instant::now();
    wg.apply(&actions).map_err(|e| {
        tracing::error!("{e}");
        ExitCode::from(1)
    })?;
    println!(
        "wg: applied {} actions in {:.1} ms",
        actions.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(actions.len())
}

fn watch(config: &Path, state_dir: &Path, interval: Duration) -> ExitCode {
    if let Err(code) = apply(config, state_dir, false, &|_, _| true) {
        return code;
    }
    loop {
        std::thread::sleep(interval);
        // Only peers due for it are looked up again: a live session keeps its endpoint.
        let observed = match kernel().and_then(|mut wg| {
            wg.kernel.observe().map_err(|e| {
                tracing::error!("{e}");
                ExitCode::from(1)
            })
        }) {
            Ok(o) => o,
            Err(_) => continue,
        };
        let now = SystemTime::now();
        let due = |ifname: &str, key: &PublicKey| {
            observed
                .device(ifname)
                .and_then(|d| d.peer(key))
                .is_none_or(|p| resolve_due(p.last_handshake, now))
        };
        match apply(config, state_dir, false, &due) {
            Ok(0) => {}
            Ok(n) => tracing::info!(actions = n, "re-applied WireGuard"),
            Err(_) => tracing::warn!("WireGuard re-apply failed; trying again later"),
        }
    }
}

/// One WireGuard reconcile of `netd serve`: the tunnels of `cfg` applied (keys, peers),
/// with endpoint names looked up only where `resolve_name` says so. Returns the number of
/// steps; the error says what failed (a failed apply is undone).
pub fn reconcile(
    cfg: &Config,
    state_dir: &Path,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
) -> Result<usize, String> {
    let wanted = desired(cfg, state_dir, &SystemResolver, resolve_name)
        .map_err(|e| format!("{e}; nothing was applied"))?;
    let mut wg = KernelWg::new()
        .map(Wireguard::new)
        .map_err(|e| e.to_string())?;
    let actions = wg
        .plan(&wanted)
        .map_err(|e| format!("{e}; nothing was applied"))?;
    if !actions.is_empty() {
        wg.apply(&actions).map_err(|e| e.to_string())?;
    }
    Ok(actions.len())
}

/// Peers due for a new endpoint lookup (no handshake for over 2 minutes, or not in the
/// kernel yet), as the kernel has them now.
pub fn due_now() -> impl Fn(&str, &PublicKey) -> bool {
    let observed = KernelWg::new().and_then(|mut k| k.observe()).ok();
    let now = SystemTime::now();
    move |ifname: &str, key: &PublicKey| {
        observed
            .as_ref()
            .and_then(|o| o.device(ifname))
            .and_then(|d| d.peer(key))
            .is_none_or(|p| resolve_due(p.last_handshake, now))
    }
}

fn peer_names(config: Option<&Path>) -> BTreeMap<(String, PublicKey), String> {
    match config.and_then(|p| crate::cli::load_config(p).ok()) {
        Some(cfg) => peer_names_of(&cfg),
        None => BTreeMap::new(),
    }
}

/// The config's name of each peer, by tunnel and public key.
pub fn peer_names_of(cfg: &Config) -> BTreeMap<(String, PublicKey), String> {
    let mut names = BTreeMap::new();
    for (ifname, w) in &cfg.wireguard {
        for (name, p) in &w.peers {
            names.insert(
                (ifname.to_string(), PublicKey(*p.public_key.bytes())),
                name.to_string(),
            );
        }
    }
    names
}

/// The status as JSON: the shape `applctl status net` will show.
pub fn status_json(
    observed: &Observed,
    names: &BTreeMap<(String, PublicKey), String>,
    now: SystemTime,
) -> Value {
    let interfaces: Vec<Value> = observed
        .devices
        .iter()
        .map(|d| {
            let peers: Vec<Value> = d
                .peers
                .iter()
                .map(|p| {
                    let key = p.peer.public_key;
                    let (unix, ago) = match p.last_handshake {
                        Some(t) => (
                            t.duration_since(SystemTime::UNIX_EPOCH)
                                .ok()
                                .map(|d| d.as_secs()),
                            now.duration_since(t).ok().map(|d| d.as_secs()),
                        ),
                        None => (None, None),
                    };
                    json!({
                        "name": names.get(&(d.name.clone(), key)),
                        "public_key": key.to_string(),
                        "endpoint": p.peer.endpoint.map(|e| e.to_string()),
                        "allowed_ips": p.peer.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "persistent_keepalive": p.peer.keepalive,
                        "last_handshake": unix,
                        "last_handshake_seconds_ago": ago,
                        "rx_bytes": p.rx_bytes,
                        "tx_bytes": p.tx_bytes,
                    })
                })
                .collect();
            json!({
                "name": d.name,
                "public_key": d.public_key.map(|k| k.to_string()),
                "listen_port": d.listen_port,
                "mtu": d.mtu,
                "up": d.up,
                "addresses": d.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "peers": peers,
            })
        })
        .collect();
    json!({ "interfaces": interfaces })
}

fn status(as_json: bool, config: Option<&Path>) -> ExitCode {
    let observed = match kernel().and_then(|mut wg| {
        wg.kernel.observe().map_err(|e| {
            tracing::error!("{e}");
            ExitCode::from(1)
        })
    }) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let names = peer_names(config);
    let now = SystemTime::now();
    if as_json {
        println!("{:#}", status_json(&observed, &names, now));
        return ExitCode::SUCCESS;
    }
    for d in &observed.devices {
        println!(
            "interface {}: public key {}, port {}, {}",
            d.name,
            d.public_key
                .map(|k| k.to_string())
                .unwrap_or_else(|| "(none)".into()),
            d.listen_port,
            if d.up { "up" } else { "down" }
        );
        for p in &d.peers {
            let key = p.peer.public_key;
            let handshake = match p.last_handshake.map(|t| now.duration_since(t)) {
                Some(Ok(age)) => format!("{} s ago", age.as_secs()),
                Some(Err(_)) => "just now".to_owned(),
                None => "never".to_owned(),
            };
            println!(
                "  peer {key}{}: endpoint {}, handshake {handshake}, rx {} B, tx {} B",
                names
                    .get(&(d.name.clone(), key))
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                p.peer
                    .endpoint
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "(none)".into()),
                p.rx_bytes,
                p.tx_bytes,
            );
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::wireguard::{ObservedDevice, ObservedPeer, Peer};

    #[test]
    fn status_json_names_peers_and_reports_handshake_age_and_bytes() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let key = PublicKey([1; 32]);
        let observed = Observed {
            devices: vec![ObservedDevice {
                name: "wg0".into(),
                mtu: 1420,
                up: true,
                addresses: vec!["10.8.0.1/24".parse().unwrap()],
                private_key: None,
                public_key: Some(PublicKey([2; 32])),
                listen_port: 51820,
                peers: vec![ObservedPeer {
                    peer: Peer {
                        public_key: key,
                        preshared_key: None,
                        endpoint: Some("192.0.2.2:40000".parse().unwrap()),
                        keepalive: 0,
                        allowed_ips: vec!["10.8.0.2/32".parse().unwrap()],
                    },
                    last_handshake: Some(t),
                    rx_bytes: 1234,
                    tx_bytes: 5678,
                }],
            }],
            foreign: vec![],
        };
        let names = BTreeMap::from([(("wg0".to_string(), key), "laptop".to_string())]);
        let v = status_json(&observed, &names, t + Duration::from_secs(42));
        let p = &v["interfaces"][0]["peers"][0];
        assert_eq!(p["name"], "laptop");
        assert_eq!(p["last_handshake_seconds_ago"], 42);
        assert_eq!(p["rx_bytes"], 1234);
        assert_eq!(p["tx_bytes"], 5678);
        assert_eq!(p["endpoint"], "192.0.2.2:40000");
        assert_eq!(v["interfaces"][0]["listen_port"], 51820);
    }
}
