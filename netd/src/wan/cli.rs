//! `netd wan-dhcp`: the DHCPv4 client of every link with `ipv4 = "dhcp"`, until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use appliance::model::{Addressed, Ipv4Mode};

use super::client::{Paths, run_all};

/// The DNS file dnsd reads the WAN's servers from.
pub const DNS_FILE: &str = "/run/appliance/wan-dns.json";

#[derive(Debug, clap::Args)]
pub struct WanArgs {
    /// The appliance.toml naming the links.
    #[arg(long)]
    pub config: PathBuf,
    /// Where `wan-<link>.json` (the lease kept across restarts) lives.
    #[arg(long, default_value = "/data/dhcp")]
    pub state_dir: PathBuf,
    /// The DNS servers learned, for dnsd.
    #[arg(long, default_value = DNS_FILE)]
    pub dns_file: PathBuf,
}

/// The links of `cfg` whose IPv4 address comes from DHCP, by their kernel names.
pub fn dhcp_links(cfg: &appliance::Config) -> Vec<String> {
    let mut links = Vec::new();
    let mut add = |name: &dyn std::fmt::Display, a: &dyn Addressed| {
        if a.ipv4_mode() == Ipv4Mode::Dhcp {
            links.push(name.to_string());
        }
    };
    cfg.interfaces.iter().for_each(|(n, i)| add(n, i));
    cfg.vlans.iter().for_each(|(n, v)| add(n, v));
    cfg.bridges.iter().for_each(|(n, b)| add(n, b));
    links
}

pub fn run(args: WanArgs) -> ExitCode {
    let cfg = match crate::cli::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let links = dhcp_links(&cfg);
    if links.is_empty() {
        tracing::info!("no link has ipv4 = \"dhcp\"; nothing to do");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let paths = Paths {
        state_dir: args.state_dir,
        dns_file: args.dns_file,
        changes: None,
    };
    let clients = {
        let stop = stop.clone();
        std::thread::spawn(move || run_all(&links, &paths, stop))
    };
    let runtime = match crate::cli::current_thread_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    stop.store(true, Ordering::SeqCst);
    match clients.join() {
        Ok(errors) if errors.is_empty() => ExitCode::SUCCESS,
        Ok(errors) => {
            errors.iter().for_each(|e| tracing::error!("{e}"));
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(1),
    }
}
