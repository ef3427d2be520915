//! applianced: runs config changes as transactions over the daemons' control sockets,
//! with commit-confirm (see `appliance::txn` and docs/control.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use appliance::control::{ControlClient, server};
use appliance::store::Store;
use appliance::txn::{ControlDaemon, Daemon, Engine, StateDir, http};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "applianced",
    version,
    about = "The appliance's control plane: config transactions with commit-confirm"
)]
struct Args {
    /// The control socket (root only, mode 0600).
    #[arg(long, default_value = http::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Where the pending change (with its confirm deadline) is kept.
    #[arg(long, env = "APPLIANCED_STATE_DIR", default_value = "/data/applianced")]
    state_dir: PathBuf,
    /// Where config generations are kept.
    #[arg(long, env = "APPLIANCE_CONFIG_DIR", default_value = appliance::store::DEFAULT_DIR)]
    data_dir: PathBuf,
    #[arg(long, default_value = "/run/appliance/netd.sock")]
    netd_socket: PathBuf,
    #[arg(long, default_value = "/run/appliance/dnsd.sock")]
    dnsd_socket: PathBuf,
    #[arg(long, default_value = "/run/appliance/stored.sock")]
    stored_socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Store(#[from] appliance::store::StoreError),
    #[error(transparent)]
    State(#[from] appliance::txn::StateError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error(transparent)]
    Txn(#[from] appliance::txn::TxnError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Fatal> {
    // Apply order: links and firewall first, then DNS that listens on them, then storage.
    let daemons: Vec<Arc<dyn Daemon>> = vec![
        Arc::new(ControlDaemon::new(
            "netd",
            ControlClient::new(&args.netd_socket),
        )),
        Arc::new(ControlDaemon::new(
            "dnsd",
            ControlClient::new(&args.dnsd_socket),
        )),
        Arc::new(ControlDaemon::new(
            "stored",
            ControlClient::new(&args.stored_socket),
        )),
    ];
    let engine = Arc::new(Engine::new(
        Store::open(&args.data_dir)?,
        StateDir::open(&args.state_dir)?,
        daemons,
    ));
    // A change left unconfirmed across a restart (or a reboot) is decided before anything
    // else: its deadline is wall-clock time.
    if let Some(r) = engine.recover(SystemTime::now()).await? {
        tracing::warn!(
            generation = r.from,
            active = r.active,
            revert_ms = r.revert_ms,
            "the pending change expired while applianced was down: reverted"
        );
    }
    let timer = tokio::spawn(Arc::clone(&engine).run_timer());
    let e = Arc::clone(&engine);
    let serving = server::serve(&args.socket, 0o600, move |req| {
        http::route(Arc::clone(&e), req)
    })
    .await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT: stopping"); }
    }
    serving.abort();
    timer.abort();
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
