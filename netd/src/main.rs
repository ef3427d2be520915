//! `netd`: the network daemon. `netd serve` is what the image runs (netd.service): links,
//! firewall, the WAN DHCP client and the LAN DHCP server of the applied generation, and the
//! control socket. The other subcommands run one part alone, for tests and by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "netd", about = "The appliance's network daemon")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DHCPv4 on every link with a [dhcp.<link>] section until SIGTERM.
    DhcpServer {
        /// The appliance.toml to serve from.
        #[arg(long)]
        config: PathBuf,
        /// Where the lease file (leases.json) lives; dnsd reads it there.
        #[arg(long, default_value = "/data/dhcp")]
        state_dir: PathBuf,
    },
    /// Serve the control socket (plan and apply of each generation) until SIGTERM.
    Serve(netd::daemon::cli::ServeArgs),
    /// What `netd serve` would do with a config: render, plan against the running
    /// kernel, dry-run the table with `nft -c`; changes nothing. Exit 0 valid, 2 refused.
    Check(netd::daemon::cli::CheckArgs),
    /// WireGuard tunnels: apply the config's [wireguard] section, status, watch endpoints.
    Wg {
        #[command(subcommand)]
        command: netd::wireguard::cli::WgCommand,
    },
    /// DHCPv4 client of every link with ipv4 = "dhcp" (the WAN), until SIGTERM.
    WanDhcp(netd::wan::cli::WanArgs),
    /// IPv6 router advertisements on LAN links with a static global prefix, until SIGTERM.
    Ra(netd::ipv6::cli::RaArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::Serve(serve) = &args.command {
        // The daemon logs as its generation's [logging] says, to Loki too; the helper
        // commands log to stderr only.
        appliance::loki::init_daemon("netd", "info", &serve.data_dir);
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .init();
    }
    match args.command {
        Command::DhcpServer { config, state_dir } => dhcp_server(&config, &state_dir),
        Command::Wg { command } => netd::wireguard::cli::run(command),
        Command::Serve(args) => netd::daemon::cli::serve(args),
        Command::Check(args) => netd::daemon::cli::check(args),
        Command::WanDhcp(args) => netd::wan::cli::run(args),
        Command::Ra(args) => netd::ipv6::cli::run(args),
    }
}

fn dhcp_server(config: &std::path::Path, state_dir: &std::path::Path) -> ExitCode {
    let cfg = match netd::cli::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match netd::cli::current_thread_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let served = runtime.block_on(async {
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
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
        };
        netd::dhcp::run(&cfg, state_dir, appliance::sd::ready, shutdown).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
    }
}
