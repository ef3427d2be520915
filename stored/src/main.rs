//! stored: the storage side of appliance.toml.
//!
//! - `stored serve`: the daemon: applies the active config generation at start (imports
//!   the pools), serves the control socket and runs the scheduler (snapshots, pruning,
//!   scrubs). The other subcommands are for a shell and the VM tests.
//! - `stored plan --config FILE`: what `apply` would do to pools and datasets.
//! - `stored apply --config FILE`: create or import the declared pools, create the
//!   datasets, set their properties back (never destroys or reshapes anything).
//! - `stored snapshot run --config FILE [--now T] [--dry-run]`: one pass of every snapshot
//!   policy: take what is due, prune what the retention no longer keeps.
//! - `stored share plan|apply --config FILE`: NFS exports, SMB shares and Samba users.
//!
//! Exit codes: 0 success, 2 a config with mistakes, 1 anything else (ZFS not loaded, a
//! refused plan, a failed step).

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use appliance::Config;
use clap::{Parser, Subcommand};
use stored::pools;
use stored::shares;
use stored::snapshots::run_policy;
use stored::time::UtcTime;
use stored::zfs::RealZfs;

#[derive(Debug, Parser)]
#[command(
    name = "stored",
    version,
    about = "ZFS pools, datasets and snapshots from appliance.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run as the daemon (systemd Type=notify): apply the active config generation from
    /// CONFIG_DIR (pools imported, datasets, shares), answer the control socket SOCKET
    /// (/v1/status, /v1/plan, /v1/apply, /v1/snapshots, /v1/prune, /v1/replicate,
    /// /metrics), every minute take due snapshots, prune, start due scrubs, and run the
    /// replication jobs that are due; with storage.replication_listener set, receive too.
    /// Writes: ZFS, the socket, /run/appliance/shares/ (exports and Samba include), Samba's
    /// password database. Reads: CONFIG_DIR, /dev/zfs, the users' SMB password files.
    Serve {
        /// The control socket (mode 0660).
        #[arg(long, default_value = stored::daemon::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The config store the generations come from.
        #[arg(long, default_value = appliance::store::DEFAULT_DIR)]
        config_dir: PathBuf,
    },
    /// Show what `apply` would change in pools and datasets.
    Plan {
        #[arg(long)]
        config: PathBuf,
    },
    /// Create or import the declared pools and create and set the declared datasets.
    Apply {
        #[arg(long)]
        config: PathBuf,
    },
    /// Snapshot policies.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// NFS exports, SMB shares and their users.
    #[command(subcommand)]
    Share(ShareCommand),
    #[command(flatten)]
    Replication(stored::replication::cli::Command),
}

#[derive(Debug, Subcommand)]
enum ShareCommand {
    /// Show what `apply` would change.
    Plan {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the exports and the Samba include, set Samba passwords, reload both servers.
    Apply {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// One pass of every policy: take what is due, then prune.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// The time of the pass (RFC 3339, UTC, e.g. 2026-11-25T19:00:00Z); default now.
        #[arg(long)]
        now: Option<String>,
        /// Print what would be taken and destroyed, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Roll a dataset back to its newest snapshot (`pool/fs@snap`); later changes are lost.
    Rollback { snapshot: String },
    /// Keep a snapshot's place as a bookmark (`pool/fs@snap pool/fs#mark`), an incremental
    /// send base that survives the snapshot's destroy.
    Bookmark { snapshot: String, bookmark: String },
}

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: String) -> Self {
        Self { code: 2, message }
    }
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve { config_dir, .. } = &cli.command {
        // The daemon logs as its generation's [logging] says, to Loki too; the one-shot
        // commands log to stderr only.
        appliance::loki::init_daemon("stored", "info", config_dir);
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("stored: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    appliance::load_str(&src).map_err(|d| {
        Failure::usage(format!(
            "{} has mistakes, nothing was changed:\n{}",
            path.display(),
            d.render(
                &src,
                &path.display().to_string(),
                std::io::stderr().is_terminal()
            )
        ))
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve { socket, config_dir } => serve(&socket, &config_dir),
        Command::Plan { config } => {
            let config = load(&config)?;
            let zfs = RealZfs::open()?;
            let observed = pools::observe(&zfs, &config.storage)?;
            let plan = pools::plan(&config.storage, &observed).map_err(refused)?;
            if plan.actions.is_empty() {
                println!("nothing to do");
            }
            for action in &plan.actions {
                println!("{action}");
            }
            for pool in &plan.unmanaged_pools {
                println!("left alone: pool {pool} (not in the config)");
            }
            Ok(())
        }
        Command::Apply { config } => {
            let config = load(&config)?;
            let mut zfs = RealZfs::open()?;
            let applied = pools::converge(&mut zfs, &config.storage)?;
            if applied.is_empty() {
                println!("nothing to do");
            }
            for action in &applied {
                println!("done: {action}");
            }
            Ok(())
        }
        Command::Snapshot(SnapshotCommand::Run {
            config,
            now,
            dry_run,
        }) => {
            let config = load(&config)?;
            let now = match now {
                Some(t) => UtcTime::parse_rfc3339(&t).ok_or_else(|| {
                    Failure::usage(format!(
                        "--now {t}: not an RFC 3339 UTC time like 2026-11-25T19:00:00Z"
                    ))
                })?,
                None => UtcTime::now(),
            };
            let mut zfs = RealZfs::open()?;
            // Replication is not there yet, so no snapshot is needed by it.
            let needed = BTreeSet::new();
            for (name, policy) in &config.snapshots {
                let run = run_policy(&mut zfs, policy, now, &needed, dry_run)?;
                tracing::info!(
                    policy = %name,
                    taken = run.taken.len(),
                    destroyed = run.destroyed.len(),
                    dry_run,
                    "snapshot policy run"
                );
                let verb = if dry_run { "would take" } else { "took" };
                for t in &run.taken {
                    println!("{verb}: {t}");
                }
                if dry_run {
                    for d in run.plans.iter().flat_map(|p| &p.destroy) {
                        println!("would destroy: {d}");
                    }
                }
                for d in &run.destroyed {
                    println!("destroyed: {d}");
                }
            }
            Ok(())
        }
        Command::Share(command) => share(command),
        Command::Replication(command) => stored::replication::cli::run(command, load),
        Command::Snapshot(SnapshotCommand::Rollback { snapshot }) => {
            let Some((fs, _)) = snapshot.split_once('@') else {
                return Err(Failure::usage(format!(
                    "{snapshot}: not a snapshot name (pool/fs@snapshot)"
                )));
            };
            let zfs = RealZfs::open()?;
            zfs.lzc().rollback_to(fs, &snapshot)?;
            tracing::info!(%snapshot, "rolled back");
            Ok(())
        }
        Command::Snapshot(SnapshotCommand::Bookmark { snapshot, bookmark }) => {
            if !snapshot.contains('@') || !bookmark.contains('#') {
                return Err(Failure::usage(format!(
                    "{snapshot} {bookmark}: expected pool/fs@snapshot pool/fs#bookmark"
                )));
            }
            let zfs = RealZfs::open()?;
            zfs.lzc()
                .bookmark(&[(bookmark.clone(), snapshot.clone())])?;
            tracing::info!(%snapshot, %bookmark, "bookmarked");
            Ok(())
        }
    }
}

fn share(command: ShareCommand) -> Result<(), Failure> {
    let (config, apply) = match command {
        ShareCommand::Plan { config } => (config, false),
        ShareCommand::Apply { config } => (config, true),
    };
    let config = load(&config)?;
    let mut os = shares::RealShareOs;
    // Samba needs the users' Unix accounts: made first on apply, only shown on plan.
    let accounts = stored::accounts::Accounts::system();
    let nas_users = accounts.names_with(&config.storage.users)?;
    let account_actions = if apply {
        accounts.converge(&config.storage.users)?
    } else {
        accounts.plan(&config.storage.users)?
    };
    let mut created = BTreeSet::new();
    for action in &account_actions {
        if apply {
            println!("done: {action}");
        } else {
            println!("{action}");
            if let stored::accounts::AccountAction::Create { user, .. } = action {
                created.insert(user.clone());
            }
        }
    }
    // A refused plan or a failed share step takes the account changes back too.
    let undo_accounts = |e: shares::ShareError| {
        if apply {
            let not_undone = accounts.undo(&account_actions);
            if !not_undone.is_empty() {
                tracing::error!(?not_undone, "NAS account changes not undone");
            }
        }
        e
    };
    let plan = shares::plan_after_accounts(
        &os,
        &config.shares,
        &config.storage.users,
        &created,
        &nas_users,
    )
    .map_err(undo_accounts)?;
    for user in &plan.unmanaged_smb_users {
        println!("left alone: SMB user {user} (not in the config)");
    }
    if plan.actions.is_empty() {
        println!("nothing to do");
    }
    if !apply {
        for action in &plan.actions {
            println!("{action}");
        }
        return Ok(());
    }
    let done = shares::apply(&mut os, &plan).map_err(|e| undo_accounts(e.into()))?;
    for action in done {
        println!("done: {action}");
    }
    Ok(())
}

fn serve(socket: &Path, config_dir: &Path) -> Result<(), Failure> {
    use stored::daemon::{
        RealReplicator, StoredDaemon, SystemClock, run_replication, run_scheduler, run_watchdog,
    };
    let store = appliance::store::Store::open(config_dir)?;
    let zfs = RealZfs::open()?;
    let daemon = StoredDaemon::new(
        store,
        zfs,
        shares::RealShareOs,
        Box::new(SystemClock),
        Box::new(RealReplicator::open()?),
    );
    daemon.keep_job_state(stored::daemon::replicate::STATE_FILE);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Pools are imported before the socket answers: a plan from applianced then sees
        // them.
        let d = std::sync::Arc::clone(&daemon);
        tokio::task::spawn_blocking(move || d.apply_active())
            .await
            .map_err(|e| Failure {
                code: 1,
                message: format!("the start-up apply ended: {e}"),
            })?;
        // The apply started the replication listener if the generation declares one;
        // later applies update its settings in place (StoredDaemon::sync_receiver).
        let router = {
            let d = std::sync::Arc::clone(&daemon);
            move |req| std::sync::Arc::clone(&d).route(req)
        };
        let server =
            appliance::control::server::serve(socket, stored::daemon::SOCKET_MODE, router).await?;
        let scheduler = tokio::spawn(run_scheduler(std::sync::Arc::clone(&daemon)));
        let replication = tokio::spawn(run_replication(std::sync::Arc::clone(&daemon)));
        let watchdog = appliance::sd::watchdog_interval()
            .map(|every| tokio::spawn(run_watchdog(std::sync::Arc::clone(&daemon), every / 2)));
        appliance::sd::ready();
        tracing::info!(socket = %socket.display(), "stored serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        appliance::sd::stopping();
        tracing::info!("stopping");
        server.abort();
        scheduler.abort();
        replication.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        daemon.wait_idle();
        let _ = std::fs::remove_file(socket);
        Ok(())
    })
}

fn refused(errors: Vec<pools::PlanError>) -> Failure {
    Failure {
        code: 1,
        message: errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}
