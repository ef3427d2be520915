//! `applctl wg add-peer`: a key pair for a new WireGuard client, its wg-quick config (also
//! as a QR code for the mobile apps), and the peer entry to add to appliance.toml.
//!
//! It does not edit the config: the entry is printed for the admin to add, so that the
//! change goes through validation and commit-confirm like any other. The API's peer add
//! (`appliance::api::wireguard`, the same code) adds and applies it in one step.

use std::net::IpAddr;
use std::path::PathBuf;

use appliance::api::wireguard::{PeerError, Request, add_peer};
use clap::Subcommand;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use wireguard_control::Key;

use super::{Cli, CliError};

#[derive(Debug, clap::Args)]
pub struct WgArgs {
    #[command(subcommand)]
    command: WgCommand,
}

#[derive(Debug, Subcommand)]
enum WgCommand {
    /// Make a key pair for a new peer; print its wg-quick config, a QR code of it, and the
    /// [wireguard.<if>.peers.<name>] entry to add to appliance.toml.
    AddPeer {
        /// The peer's name in appliance.toml (`phone`, `laptop`).
        name: String,
        /// The tunnel the peer joins.
        #[arg(long)]
        interface: String,
        /// The config to read the tunnel from (default: the active generation).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Addresses routed to the peer (default: the next free address of the tunnel's
        /// first subnet, as a /32 or /128). The first one is the peer's tunnel address.
        #[arg(long = "allowed-ip")]
        allowed_ips: Vec<String>,
        /// How the peer reaches the appliance, `host[:port]` (port: the tunnel's
        /// listen_port).
        #[arg(long)]
        endpoint: String,
        /// DNS server for the peer (default: the tunnel's first address, where dnsd answers).
        #[arg(long)]
        dns: Option<IpAddr>,
        /// What the peer routes into the tunnel (default: the tunnel's subnets);
        /// `0.0.0.0/0` sends all its traffic through the appliance.
        #[arg(long = "route")]
        routes: Vec<String>,
        /// The tunnel's private key file (default: its private_key_file, else
        /// /data/wireguard/<if>.key, which `netd wg apply` makes).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Leave out the QR code.
        #[arg(long)]
        no_qr: bool,
    },
}

pub fn run(cli: &Cli, args: &WgArgs) -> Result<(), CliError> {
    match &args.command {
        WgCommand::AddPeer {
            name,
            interface,
            config,
            allowed_ips,
            endpoint,
            dns,
            routes,
            key_file,
            no_qr,
        } => {
            let cfg = match config {
                Some(file) => {
                    let (src, file_name) = super::read_input(file)?;
                    super::load_reporting(&src, &file_name, false, cli)?
                }
                None => super::current_or_default(cli)?.0,
            };
            let request = Request {
                name,
                interface,
                allowed_ips,
                endpoint,
                dns: *dns,
                routes,
                key_file: key_file.clone(),
            };
            let out = add_peer(&cfg, &request, &Key::generate_private()).map_err(|e| match e {
                PeerError::Invalid(m) | PeerError::NoTunnel(m) | PeerError::Exists(m) => {
                    CliError::Invalid(m)
                }
                PeerError::Failed(m) => CliError::Failed(m),
            })?;
            print!("{}", out.client_config);
            if !no_qr {
                let code = QrCode::new(out.client_config.as_bytes()).map_err(|e| {
                    CliError::Failed(format!("cannot make a QR code of the config: {e}"))
                })?;
                // Light modules on a dark terminal: what phone cameras read best.
                let qr = code
                    .render::<Dense1x2>()
                    .dark_color(Dense1x2::Light)
                    .light_color(Dense1x2::Dark)
                    .quiet_zone(true)
                    .build();
                println!("\n{qr}");
            }
            println!("\n# Add to appliance.toml, then apply it:");
            print!("{}", out.toml_entry);
            Ok(())
        }
    }
}
