//! The dnsd daemon: reads the `dns` section of the active config, blocks from the compiled
//! lists stored under /data at once, serves DNS, and keeps the lists fresh in the
//! background, swapping the policy whole after each change.
//!
//! Exit codes: 0 on a clean stop, 2 when the config is invalid, 1 on any other failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use appliance::Config;
use clap::Parser;
use dnsd::control::{Daemon, Listeners};
use dnsd::fetch::{ListStore, http_client};
use dnsd::local::LeaseWatcher;
use dnsd::policy::Policy;
use dnsd::refresh::Refresher;
use dnsd::server::{Resolver, Server};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dnsd",
    version,
    about = "The appliance's blocking DNS resolver"
)]
struct Args {
    /// Read the config from this file instead of the active generation.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where config generations are kept.
    #[arg(long, default_value = appliance::store::DEFAULT_DIR)]
    config_dir: PathBuf,
    /// Where compiled block lists are kept.
    #[arg(long, default_value = dnsd::fetch::DEFAULT_DIR)]
    lists_dir: PathBuf,
    /// Listen here instead of where the config says (repeatable; port 0 picks a free one).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// The control socket (HTTP/JSON, for applctl dns).
    #[arg(long, default_value = dnsd::control::DEFAULT_SOCKET)]
    control: PathBuf,
    /// The query log ring, its size dns.query_log_size [default: `querylog` beside the
    /// lists directory, /data/dns/querylog].
    #[arg(long)]
    query_log: Option<PathBuf>,
    /// Where the certificate and key of the DoT/DoH listeners are (made if absent).
    #[arg(long, default_value = dnsd::tls::DEFAULT_DIR)]
    tls_dir: PathBuf,
    /// netd's DHCP lease file, for the names of clients.
    #[arg(long, default_value = appliance::leases::DEFAULT_PATH)]
    leases: PathBuf,
    /// The resolvers netd's WAN DHCP client learned, used as fallback upstreams.
    #[arg(long, default_value = dnsd::wan::DEFAULT_PATH)]
    wan_dns: PathBuf,
}

/// Why dnsd stopped.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

fn main() -> ExitCode {
    let args = Args::parse();
    appliance::loki::init_daemon("dnsd", "info,hickory_server=warn", &args.config_dir);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Config(e)) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
        Err(Fatal::Other(e)) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The config to serve: a given file, else the active generation, else the built-in default.
fn load_config(args: &Args) -> Result<Config, Fatal> {
    let (text, name) = match &args.config {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Fatal::Other(format!("reading {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        None => {
            let current = appliance::store::Store::open(&args.config_dir)
                .and_then(|s| s.current())
                .map_err(|e| Fatal::Other(e.to_string()))?
                .0;
            match current {
                Some(g) => (g.text, format!("generation {}", g.info.number)),
                None => (
                    appliance::DEFAULT_CONFIG.to_owned(),
                    "the built-in default".into(),
                ),
            }
        }
    };
    appliance::load_str(&text).map_err(|d| {
        Fatal::Config(format!(
            "{name} is invalid:\n{}",
            d.render(&text, &name, false)
        ))
    })
}

/// Adds the DoT and DoH listeners the config asks for, on the addresses of plain DNS, with
/// the stored certificate (made when there is none, reissued when dnsd's own no longer
/// covers the router's names and addresses).
async fn listen_encrypted(
    server: &mut Server,
    cfg: &Config,
    tls_dir: PathBuf,
    listen: &[SocketAddr],
) -> Result<(), Fatal> {
    let encrypted = dnsd::tls::wanted(cfg, listen);
    if encrypted.is_empty() {
        return Ok(());
    }
    let cert = dnsd::tls::prepare(&dnsd::tls::spec_for(cfg, tls_dir, listen))
        .map_err(|e| Fatal::Other(format!("DNS over TLS/HTTPS: {e}")))?;
    server
        .rebind_all(listen, &encrypted, Some(cert))
        .await
        .map_err(|e| Fatal::Other(e.to_string()))
}

/// Pings systemd's watchdog at half its interval from the runtime that serves queries, so
/// a wedged runtime gets dnsd restarted (WatchdogSec= in dnsd.service).
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = appliance::sd::watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            appliance::sd::watchdog_ping();
        }
    }))
}

async fn run(args: Args) -> Result<(), Fatal> {
    let cfg = Arc::new(load_config(&args)?);
    // A disabled dnsd still runs, without listeners: under Type=notify it must say READY
    // (appliance-healthy.target requires dnsd.service), and applianced must reach its
    // control socket to apply later generations.
    let enabled = cfg.dns.enabled;
    let listen = if !enabled {
        tracing::info!("dns.enabled is false: no DNS served, the control socket only");
        Vec::new()
    } else if args.listen.is_empty() {
        dnsd::listen::addresses(&cfg)
    } else {
        args.listen.clone()
    };
    if enabled && listen.is_empty() {
        return Err(Fatal::Config(dnsd::control::NOWHERE.into()));
    }

    dnsd::reclaim::start();
    let client = http_client().map_err(|e| Fatal::Other(e.to_string()))?;
    let refresher = Refresher::new(ListStore::new(&args.lists_dir), client.clone(), &cfg.dns);
    tracing::info!(
        lists = refresher.lists().len(),
        "compiled lists loaded from the store"
    );
    let policy = Policy::build(&cfg, refresher.lists()).map_err(Fatal::Config)?;
    // A log that cannot be opened costs the log, not DNS.
    let log_path = args.query_log.clone().unwrap_or_else(|| {
        args.lists_dir
            .parent()
            .unwrap_or(&args.lists_dir)
            .join("querylog")
    });
    let log = dnsd::querylog::QueryLog::open(&log_path, cfg.dns.query_log_size.bytes())
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "query log off");
            None
        });
    let recorder = dnsd::stats::Recorder::start(log)
        .map_err(|e| Fatal::Other(format!("cannot start the query log writer: {e}")))?;
    // An apply may turn a log that is off now on.
    recorder.set_log_path(log_path);
    let resolver =
        Arc::new(Resolver::new(&cfg, Arc::new(policy)).with_recorder(Arc::new(recorder)));
    let own_names = dnsd::answer::LocalZone::from_config(&cfg);
    let mut leases = LeaseWatcher::new(&args.leases, Some(cfg.system.domain.as_str().to_owned()))
        .reserving(own_names.names().cloned());
    if let Some(zone) = leases.poll(dnsd::local::unix_now()) {
        resolver.swap_leases(Arc::new(zone));
    }
    let leases = Arc::new(std::sync::Mutex::new(leases));
    let mut server = Server::bind(Arc::clone(&resolver), listen.clone())
        .await
        .map_err(|e| Fatal::Other(format!("cannot listen: {e}")))?;
    if enabled {
        listen_encrypted(&mut server, &cfg, args.tls_dir.clone(), &listen).await?;
    }
    let watchdog = start_watchdog();
    let lease_resolver = Arc::clone(&resolver);
    let lease_names = tokio::spawn(LeaseWatcher::run(Arc::clone(&leases), move |zone| {
        lease_resolver.swap_leases(zone)
    }));
    let wan_resolver = Arc::clone(&resolver);
    let wan_dns = tokio::spawn(
        dnsd::wan::WanDnsWatcher::new(&args.wan_dns).run(move |servers| {
            wan_resolver.set_learned_upstreams(
                servers
                    .into_iter()
                    .map(|ip| std::net::SocketAddr::new(ip, 53))
                    .collect(),
            );
        }),
    );

    let reload_args = args.clone();
    let daemon = Daemon::new(
        Arc::clone(&resolver),
        Arc::clone(&cfg),
        refresher.lists().clone(),
        args.lists_dir.clone(),
        client,
        Box::new(move || {
            load_config(&reload_args).map_err(|(Fatal::Config(e) | Fatal::Other(e))| e)
        }),
        Some(
            if args.listen.is_empty() {
                Listeners::from_config(server)
            } else {
                Listeners::fixed(server, args.listen.clone())
            }
            .with_tls_dir(args.tls_dir.clone()),
        ),
    );
    daemon.set_config_dir(args.config_dir.clone());
    daemon.set_lease_watcher(leases);
    // Lists are fetched for a DNS that is served; an apply that enables it starts them.
    if enabled {
        daemon.start_refresher(refresher);
    }
    // Without its control socket dnsd still answers DNS, which matters more to the house.
    let control = match dnsd::control::serve(&args.control, Arc::clone(&daemon)).await {
        Ok(task) => Some(task),
        Err(e) => {
            tracing::error!(error = %e, "no control socket: DNS is served, but applctl dns cannot reach this dnsd");
            None
        }
    };
    let stop = wait_for_stop();
    // Ready once applianced can reach the control socket too: it applies right after.
    appliance::sd::ready();
    if !enabled {
        appliance::sd::status("DNS disabled");
    }

    stop.await;
    tracing::info!("stopping");
    appliance::sd::stopping();
    if let Some(task) = watchdog {
        task.abort();
    }
    daemon.stop();
    if let Some(task) = control {
        task.abort();
        let _ = std::fs::remove_file(&args.control);
    }
    lease_names.abort();
    wan_dns.abort();
    match daemon.take_server().await {
        Some(server) => server
            .shutdown()
            .await
            .map_err(|e| Fatal::Other(format!("shutdown: {e}"))),
        None => Ok(()),
    }
}

/// Installs the SIGTERM handler now, so that a stop sent right after READY is not the
/// default action (death by signal, a failed unit), and returns the wait for it.
fn wait_for_stop() -> impl std::future::Future<Output = ()> {
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        wait_for_signals(sigterm).await;
    }
}

async fn wait_for_signals(sigterm: std::io::Result<tokio::signal::unix::Signal>) {
    let term = async {
        match sigterm {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
