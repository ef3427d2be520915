//! Helper of `cargo xtask bench dns`: dnsd's start and list-reload path in one process, with
//! the reload forced at a chosen moment.
//!
//! The daemon re-reads a list only when its `update_interval` (at least 5 minutes) is due
//! and has no way to be told to reload from outside, so a benchmark that wants a reload
//! under load at a known time runs the same pieces itself: `Refresher` over the stored
//! lists, `Policy::build`, `Resolver`, `Server`, and after `--reload-after-ms` a refresh on
//! the same runtime that recompiles every list and swaps the policy, as the daemon's
//! refresher task does. It prints `ready ADDR` once it serves and `swapped MS` after the
//! swap, and exits after `--exit-after-ms`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use dnsd::fetch::{ListMeta, ListStore, http_client};
use dnsd::policy::Policy;
use dnsd::refresh::Refresher;
use dnsd::server::{Resolver, Server};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    lists_dir: PathBuf,
    #[arg(long)]
    listen: SocketAddr,
    /// Force the reload this long after serving.
    #[arg(long)]
    reload_after_ms: u64,
    /// Exit this long after serving.
    #[arg(long)]
    exit_after_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // The daemon's runtime, so that a pinned helper has the daemon's single worker.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench_reload: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_reload: {e}");
            ExitCode::from(1)
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Makes every list due and unknown to the store, so the next refresh recompiles it even
/// when the file did not change.
fn force_due(lists_dir: &std::path::Path, names: &[String]) -> Result<(), String> {
    for name in names {
        let path = lists_dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut meta: ListMeta =
            serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
        meta.checked_at = 0;
        meta.sha256.clear();
        let text = serde_json::to_vec(&meta).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading {}: {e}", args.config.display()))?;
    let cfg = Arc::new(
        appliance::load_str(&text)
            .map_err(|d| d.render(&text, &args.config.display().to_string(), false))?,
    );
    dnsd::reclaim::start();
    let client = http_client().map_err(|e| e.to_string())?;
    let mut refresher = Refresher::new(ListStore::new(&args.lists_dir), client, &cfg.dns);
    if refresher.lists().is_empty() {
        refresher.run_due().await;
    }
    let policy = Policy::build(&cfg, refresher.lists())?;
    let resolver = Arc::new(Resolver::new(&cfg, Arc::new(policy)));
    let server = Server::bind(Arc::clone(&resolver), vec![args.listen])
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let serving = Instant::now();
    let addr = server
        .addresses()
        .first()
        .map_or_else(|| args.listen.to_string(), ToString::to_string);
    say(&format!("ready {addr}"));

    tokio::time::sleep(Duration::from_millis(args.reload_after_ms)).await;
    let names: Vec<String> = cfg
        .dns
        .lists
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect();
    force_due(&args.lists_dir, &names)?;
    tracing::debug!("forced refresh");
    let started = Instant::now();
    let (swap_cfg, swap_resolver) = (Arc::clone(&cfg), Arc::clone(&resolver));
    // A task on the serving runtime, like the daemon's refresher; the recompile itself runs
    // on the store's nice-19 thread, which the pinned core serves only when the listeners
    // leave it idle.
    let swapped = tokio::spawn(async move {
        if !refresher.run_due().await {
            return Err("the forced refresh changed nothing".to_owned());
        }
        let p =
            Policy::build(&swap_cfg, refresher.lists())?.with_pauses_of(&swap_resolver.policy());
        swap_resolver.swap_policy(Arc::new(p));
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?;
    swapped?;
    say(&format!("swapped {}", started.elapsed().as_millis()));

    let exit_at = serving + Duration::from_millis(args.exit_after_ms);
    tokio::time::sleep(exit_at.saturating_duration_since(Instant::now())).await;
    server.shutdown().await.map_err(|e| e.to_string())
}
