//! applianced: runs config changes as transactions over the daemons' control sockets,
//! with commit-confirm (see `appliance::txn` and docs/control.md), and serves the REST API
//! over HTTPS (see `appliance::api` and docs/api.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use appliance::accounts::{Accounts, SystemClock};
use appliance::api::{self, AppState, listen, tls};
use appliance::control::{ControlClient, server};
use appliance::metrics::Gatherer;
use appliance::store::Store;
use appliance::txn::backend::EngineBackend;
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
    /// The API's accounts state, audit log and TLS certificate.
    #[arg(long, default_value = "/data/api")]
    api_dir: PathBuf,
    /// Where the API listens (repeatable), instead of the addresses the active config
    /// gives (LAN side by default).
    #[arg(long)]
    api_listen: Vec<SocketAddr>,
    /// Where the certificate's SHA-256 fingerprint is written for the console and applctl.
    #[arg(long, default_value = "/run/appliance/api-fingerprint")]
    fingerprint_file: PathBuf,
    /// The agetty issue snippet with the API's addresses and fingerprint, for the console
    /// (/etc/issue.d/appliance-api.issue links to it).
    #[arg(long, default_value = "/run/appliance/issue/api.issue")]
    issue_file: PathBuf,
    /// The mounted ESP with the A/B boot state, for the API's update endpoints.
    #[arg(long, env = "APPLIANCE_ESP", default_value = "/boot/efi")]
    esp: PathBuf,
    /// Where the slot devices are (rootA, rootB).
    #[arg(long, default_value = "/dev/disk/by-partlabel")]
    slot_dir: PathBuf,
    /// The updater's state on the data partition.
    #[arg(long, default_value = "/data/update")]
    update_state_dir: PathBuf,
    /// The running release's VERSION=, SECURITY_VERSION= and COMPATIBLE= (the image's;
    /// another for tests and development).
    #[arg(long, default_value = "/usr/lib/appliance/release")]
    update_release: PathBuf,
    /// The keyring of trusted update keys (the image's built-in one by default).
    #[arg(long, default_value = "/usr/share/appliance/update-keys")]
    update_keyring: PathBuf,
    /// Where `appliance.slot=A|B` is read (the kernel command line GRUB passed).
    #[arg(long, default_value = "/proc/cmdline")]
    update_cmdline: PathBuf,
    /// Where netd keeps the keys of tunnels whose config names no private_key_file (the
    /// API's WireGuard peer add reads the tunnel's public key from there).
    #[arg(long, default_value = appliance::api::wireguard::KEY_DIR)]
    wireguard_key_dir: PathBuf,
    /// Filesystems whose size and free space /metrics reports (repeatable).
    #[arg(long, default_value = "/data")]
    metrics_filesystem: Vec<PathBuf>,
}

/// How often the API's accounts are compared with the active generation, which changes
/// behind the API's back on a commit-confirm revert or an apply over the Unix socket.
const ACCOUNTS_POLL: Duration = Duration::from_secs(2);

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
    #[error(transparent)]
    Auth(#[from] appliance::accounts::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot write the API fingerprint to {}: {source}", path.display())]
    Fingerprint {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    appliance::loki::init_daemon("applianced", "info", &args.data_dir);
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

/// How long applianced waits for stored's plan or apply (applctl waits 300 s in all).
const STORED_APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

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
        // Creating or importing a pool on real disks takes tens of seconds (32-62 s seen
        // for a mirror in the TCG guest), well past the other daemons' minute.
        Arc::new(ControlDaemon::new(
            "stored",
            ControlClient::new(&args.stored_socket).with_timeout(STORED_APPLY_TIMEOUT),
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
    let mut gatherer = Gatherer::new(vec![
        ("netd".into(), ControlClient::new(&args.netd_socket)),
        ("dnsd".into(), ControlClient::new(&args.dnsd_socket)),
        ("stored".into(), ControlClient::new(&args.stored_socket)),
    ]);
    gatherer.node.filesystems = args.metrics_filesystem.clone();
    let metrics = Arc::new(gatherer);
    let (e, m) = (Arc::clone(&engine), Arc::clone(&metrics));
    let serving = server::serve(&args.socket, 0o600, move |req| {
        http::route(Arc::clone(&e), Arc::clone(&m), req)
    })
    .await?;
    // The transactions over the Unix socket must work even when the API cannot start
    // (a broken certificate pair, an unwritable /data/api): the console stays usable.
    let tasks: Vec<Task> = match start_api(&args, &engine, metrics).await {
        Ok((api, accounts)) => api.into_iter().chain([accounts]).collect(),
        Err(e) => {
            tracing::error!("the API does not run: {e}");
            Vec::new()
        }
    };
    // Both the Unix socket and the API's listeners are bound by now: a unit ordered after
    // applianced.service (or applctl run from it) can connect.
    appliance::sd::ready();
    appliance::sd::status(&match engine.store().active() {
        Ok(Some(g)) => format!("serving; generation {g} active"),
        Ok(None) => "serving; no generation stored yet (built-in default)".to_owned(),
        Err(e) => format!("serving; the active generation is unreadable: {e}"),
    });
    let watchdog = start_watchdog(Arc::clone(&engine));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT: stopping"); }
    }
    appliance::sd::stopping();
    serving.abort();
    timer.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    tasks.iter().for_each(Task::abort);
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

type Task = tokio::task::JoinHandle<()>;

/// Pings systemd's watchdog at half its interval (WatchdogSec= in applianced.service) from
/// the runtime that serves transactions, and only while the config store answers: a wedged
/// runtime or a data partition gone bad gets applianced restarted instead of left running.
fn start_watchdog(engine: Arc<Engine>) -> Option<Task> {
    let every = appliance::sd::watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match engine.store().active() {
                Ok(_) => appliance::sd::watchdog_ping(),
                Err(e) => {
                    tracing::error!(error = %e, "config store unreadable: watchdog not pinged")
                }
            }
        }
    }))
}

/// Opens the accounts, loads (or makes) the certificate, binds the API's addresses and
/// serves it. An address that cannot be bound is logged and skipped: the transactions over
/// the Unix socket must work even when the API cannot.
async fn start_api(
    args: &Args,
    engine: &Arc<Engine>,
    metrics: Arc<Gatherer>,
) -> Result<(Option<Task>, Task), Fatal> {
    let store = engine.store();
    let text = match store.current()?.0 {
        Some(g) => g.text,
        None => appliance::DEFAULT_CONFIG.to_owned(),
    };
    let cfg = appliance::load_str(&text).map_err(|d| {
        Fatal::Io(std::io::Error::other(format!(
            "the active config does not validate with this firmware:\n{}",
            d.render(&text, "active config", false)
        )))
    })?;
    let accounts = Arc::new(Accounts::open(
        &args.api_dir,
        &cfg.api,
        Arc::new(SystemClock),
    )?);
    let backend = Arc::new(
        EngineBackend::new(
            Arc::clone(engine),
            Arc::clone(&accounts),
            &args.dnsd_socket,
            &args.stored_socket,
        )
        .with_update_paths(image::install::Paths {
            esp: args.esp.clone(),
            slot_dir: args.slot_dir.clone(),
            state_dir: args.update_state_dir.clone(),
            release: args.update_release.clone(),
            keyring: args.update_keyring.clone(),
            cmdline: args.update_cmdline.clone(),
        })
        .with_metrics(metrics)
        .with_wireguard_key_dir(&args.wireguard_key_dir),
    );
    let accounts_task = tokio::spawn(refresh_accounts(Arc::clone(engine), Arc::clone(&backend)));
    let addrs = if args.api_listen.is_empty() {
        listen::listen_addresses(&cfg)
    } else {
        args.api_listen.clone()
    };
    let ips: Vec<_> = addrs
        .iter()
        .map(SocketAddr::ip)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let identity = tls::load_or_create(&args.api_dir, &listen::cert_names(&cfg), &ips)?;
    tracing::info!(fingerprint = %identity.fingerprint, "API certificate (SHA-256)");
    write_fingerprint(&args.fingerprint_file, &identity.fingerprint)?;
    let mut listeners = Vec::new();
    for addr in &addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) => tracing::warn!(%addr, error = %e, "the API cannot listen there"),
        }
    }
    if listeners.is_empty() {
        tracing::error!(
            addresses = ?addrs,
            "the API listens nowhere: no address of [api] (or of the LAN links) could be bound"
        );
        return Ok((None, accounts_task));
    }
    let bound: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    // The console only helps: a failure costs the banner, not the API.
    if let Err(e) = write_issue(
        &args.issue_file,
        Path::new(AGETTY_RELOAD),
        &bound,
        &identity.fingerprint,
    ) {
        tracing::warn!(path = %args.issue_file.display(), error = %e, "cannot write the console's API banner");
    }
    let state = AppState { backend, accounts };
    let api_task = tokio::spawn(async move {
        if let Err(e) = api::serve(listeners, identity.config, state, std::future::pending()).await
        {
            tracing::error!(error = %e, "the API stopped");
        }
    });
    Ok((Some(api_task), accounts_task))
}

async fn refresh_accounts(engine: Arc<Engine>, backend: Arc<EngineBackend>) {
    let mut seen = engine.store().active().ok().flatten();
    loop {
        tokio::time::sleep(ACCOUNTS_POLL).await;
        match engine.store().active() {
            Ok(now) if now != seen => {
                tracing::info!(generation = ?now, "active generation changed: API accounts refreshed");
                backend.refresh_accounts();
                refresh_logging(&engine, now);
                seen = now;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the active generation"),
        }
    }
}

/// Atomically, so that a reader never sees half a fingerprint.
fn write_fingerprint(path: &Path, fingerprint: &str) -> Result<(), Fatal> {
    let err = |source| Fatal::Fingerprint {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{fingerprint}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// agetty (built with its reload support, as Debian's is) redraws its prompt when this is
/// touched.
const AGETTY_RELOAD: &str = "/run/agetty.reload";

/// The agetty issue snippet: one line per API address. An unspecified address becomes
/// agetty's `\\4` or `\\6` escape, which it fills with the box's current address.
fn issue_text(addrs: &[SocketAddr], fingerprint: &str) -> String {
    let mut out = String::new();
    for addr in addrs {
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "\\4".to_owned(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[\\6]".to_owned(),
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        out.push_str(&format!("Appliance API: https://{host}:{}\n", addr.port()));
    }
    out.push_str(&format!(
        "API certificate SHA256 fingerprint: {fingerprint}\n\n"
    ));
    out
}

/// Writes the console banner atomically and asks running agettys to show it again (what
/// `agetty --reload` does: they watch /run/agetty.reload for a touch).
fn write_issue(
    path: &Path,
    reload: &Path,
    addrs: &[SocketAddr],
    fingerprint: &str,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    appliance::tlsgen::write_atomic(path, issue_text(addrs, fingerprint).as_bytes(), 0o644)?;
    let touched = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(reload)
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(error = %e, path = %reload.display(), "cannot touch agetty's reload file: the banner shows at the next prompt");
    }
    Ok(())
}

/// Points the Loki push at the `[logging]` of generation `active` (JSON in the journal
/// follows at the next start).
fn refresh_logging(engine: &Engine, active: Option<u64>) {
    let text = match active {
        Some(n) => match engine.store().get(n) {
            Ok(g) => g.text,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the active generation: logging unchanged");
                return;
            }
        },
        None => appliance::DEFAULT_CONFIG.to_owned(),
    };
    if let (Ok(cfg), Some(loki)) = (appliance::load_str(&text), appliance::loki::global()) {
        loki.configure(&cfg.logging, cfg.system.hostname.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_snippet_names_each_address_and_the_fingerprint() {
        let fp = "AB:CD:EF";
        let text = issue_text(
            &[
                "192.168.1.1:443".parse().unwrap(),
                "[fd00::1]:8443".parse().unwrap(),
            ],
            fp,
        );
        assert_eq!(
            text,
            "Appliance API: https://192.168.1.1:443\n\
             Appliance API: https://[fd00::1]:8443\n\
             API certificate SHA256 fingerprint: AB:CD:EF\n\n"
        );
    }

    #[test]
    fn an_unspecified_address_is_left_to_agetty() {
        let text = issue_text(
            &["0.0.0.0:443".parse().unwrap(), "[::]:443".parse().unwrap()],
            "AB",
        );
        assert!(
            text.starts_with("Appliance API: https://\\4:443\n"),
            "{text}"
        );
        assert!(
            text.contains("Appliance API: https://[\\6]:443\n"),
            "{text}"
        );
    }

    #[test]
    fn the_issue_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issue/api.issue");
        let reload = dir.path().join("agetty.reload");
        write_issue(&path, &reload, &["10.0.0.1:443".parse().unwrap()], "AB").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("https://10.0.0.1:443") && text.contains("fingerprint: AB"));
        assert!(reload.exists());
    }
}
