//! `applctl wg add-peer`: a key pair for a new WireGuard client, its wg-quick config (also
//! as a QR code for the mobile apps), and the peer entry to add to appliance.toml.
//!
//! It does not edit the config: the entry is printed for the admin (or, later, applianced
//! through the API) to add, so that the change goes through validation and commit-confirm
//! like any other.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use appliance::Config;
use appliance::model::WireguardInterface;
use appliance::types::{Cidr, Endpoint, Host, IfName, Name};
use clap::Subcommand;
use ipnet::IpNet;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use wireguard_control::Key;

use super::{Cli, CliError};

/// Where netd keeps the private key of a tunnel whose config names no key file.
const KEY_DIR: &str = "/data/wireguard";

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
            let out = add_peer(&cfg, &request, &Key::generate_private())?;
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

struct Request<'a> {
    name: &'a str,
    interface: &'a str,
    allowed_ips: &'a [String],
    endpoint: &'a str,
    dns: Option<IpAddr>,
    routes: &'a [String],
    key_file: Option<PathBuf>,
}

#[derive(Debug)]
struct NewPeer {
    client_config: String,
    toml_entry: String,
}

fn invalid(msg: String) -> CliError {
    CliError::Invalid(msg)
}

fn cidrs(list: &[String], what: &str) -> Result<Vec<Cidr>, CliError> {
    list.iter()
        .map(|s| {
            Cidr::parse(s).map_err(|e| invalid(format!("{what} {s:?}: {}; {}", e.message, e.hint)))
        })
        .collect()
}

/// The next address of the tunnel's first subnet that is neither the tunnel's own nor
/// routed to a peer.
fn next_free(w: &WireguardInterface) -> Option<Cidr> {
    let used: Vec<IpNet> = w
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter().map(Cidr::network))
        .collect();
    let own: BTreeSet<IpAddr> = w.addresses.iter().map(Cidr::addr).collect();
    let subnet = w.addresses.first()?.network();
    let free = subnet
        .hosts()
        .find(|ip| !own.contains(ip) && !used.iter().any(|n| n.contains(ip)))?;
    let host = IpNet::from(free);
    Cidr::parse(&host.to_string()).ok()
}

fn add_peer(cfg: &Config, req: &Request<'_>, client_key: &Key) -> Result<NewPeer, CliError> {
    let peer_name = Name::parse(req.name).map_err(|e| {
        invalid(format!(
            "peer name {:?}: {}; {}",
            req.name, e.message, e.hint
        ))
    })?;
    let ifname = IfName::parse(req.interface).map_err(|e| {
        invalid(format!(
            "interface {:?}: {}; {}",
            req.interface, e.message, e.hint
        ))
    })?;
    let w = cfg.wireguard.get(&ifname).ok_or_else(|| {
        invalid(format!(
            "the config has no [wireguard.{ifname}]; tunnels: {}",
            cfg.wireguard
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if w.peers.contains_key(&peer_name) {
        return Err(invalid(format!(
            "wireguard.{ifname}.peers.{peer_name} already exists; pick another name"
        )));
    }
    let allowed = if req.allowed_ips.is_empty() {
        vec![next_free(w).ok_or_else(|| {
            invalid(format!(
                "wireguard.{ifname} has no free address left; pass --allowed-ip"
            ))
        })?]
    } else {
        cidrs(req.allowed_ips, "--allowed-ip")?
    };
    let routes = if req.routes.is_empty() {
        w.addresses.iter().map(|c| c.network()).collect::<Vec<_>>()
    } else {
        cidrs(req.routes, "--route")?
            .iter()
            .map(Cidr::network)
            .collect()
    };
    let endpoint = match Endpoint::parse(req.endpoint) {
        Ok(e) => e,
        Err(_) => {
            let host = Host::parse(req.endpoint).map_err(|e| {
                invalid(format!(
                    "--endpoint {:?}: {}; {}",
                    req.endpoint, e.message, e.hint
                ))
            })?;
            let port = w.listen_port.ok_or_else(|| {
                invalid(format!(
                    "wireguard.{ifname} has no listen_port: give the port in --endpoint host:port"
                ))
            })?;
            Endpoint { host, port }
        }
    };
    let key_file = req
        .key_file
        .clone()
        .unwrap_or_else(|| match &w.private_key_file {
            Some(p) => PathBuf::from(p.as_str()),
            None => PathBuf::from(KEY_DIR).join(format!("{ifname}.key")),
        });
    let server_private = std::fs::read_to_string(&key_file).map_err(|e| {
        CliError::Failed(format!(
            "cannot read the tunnel's key {}: {e}; `netd wg apply` makes it on first use",
            key_file.display()
        ))
    })?;
    let server_public = Key::from_base64(server_private.trim())
        .map_err(|_| {
            invalid(format!(
                "{} does not hold a WireGuard key (44 characters of base64)",
                key_file.display()
            ))
        })?
        .get_public();
    let dns = req.dns.or_else(|| w.addresses.first().map(Cidr::addr));

    let join = |v: &[String]| v.join(", ");
    let allowed_text: Vec<String> = allowed.iter().map(ToString::to_string).collect();
    let route_text: Vec<String> = routes.iter().map(ToString::to_string).collect();
    let mut client = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        client,
        "[Interface]\nPrivateKey = {}\nAddress = {}",
        client_key.to_base64(),
        join(&allowed_text)
    );
    if let Some(dns) = dns {
        let _ = writeln!(client, "DNS = {dns}");
    }
    let _ = writeln!(
        client,
        "\n[Peer]\nPublicKey = {}\nEndpoint = {endpoint}\nAllowedIPs = {}",
        server_public.to_base64(),
        join(&route_text)
    );
    let quoted: Vec<String> = allowed_text.iter().map(|s| format!("{s:?}")).collect();
    let toml_entry = format!(
        "[wireguard.{ifname}.peers.{peer_name}]\npublic_key = \"{}\"\nallowed_ips = [{}]\n",
        client_key.get_public().to_base64(),
        quoted.join(", ")
    );
    Ok(NewPeer {
        client_config: client,
        toml_entry,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const CONFIG: &str = r#"
version = 1
[wireguard.wg0]
listen_port = 51820
addresses = ["10.8.0.1/24"]

[wireguard.wg0.peers.phone]
public_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
allowed_ips = ["10.8.0.2/32"]
"#;

    fn request<'a>(dir: &tempfile::TempDir, name: &'a str, endpoint: &'a str) -> Request<'a> {
        let key_file = dir.path().join("wg0.key");
        std::fs::write(&key_file, Key([5; 32]).to_base64()).unwrap();
        Request {
            name,
            interface: "wg0",
            allowed_ips: &[],
            endpoint,
            dns: None,
            routes: &[],
            key_file: Some(key_file),
        }
    }

    #[test]
    fn a_new_peer_gets_the_next_free_address_and_a_wg_quick_config() {
        let cfg = appliance::load_str(CONFIG).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = Key([9; 32]);
        let out = add_peer(&cfg, &request(&dir, "laptop", "vpn.example.net"), &client).unwrap();
        let server_public = Key([5; 32]).get_public().to_base64();
        assert_eq!(
            out.client_config,
            format!(
                "[Interface]\nPrivateKey = {}\nAddress = 10.8.0.3/32\nDNS = 10.8.0.1\n\n[Peer]\nPublicKey = {server_public}\nEndpoint = vpn.example.net:51820\nAllowedIPs = 10.8.0.0/24\n",
                client.to_base64()
            )
        );
        assert_eq!(
            out.toml_entry,
            format!(
                "[wireguard.wg0.peers.laptop]\npublic_key = \"{}\"\nallowed_ips = [\"10.8.0.3/32\"]\n",
                client.get_public().to_base64()
            )
        );
        // The entry makes a valid config.
        appliance::load_str(&format!("{CONFIG}\n{}", out.toml_entry)).unwrap();
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_do() {
        let cfg = appliance::load_str(CONFIG).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = Key([9; 32]);
        let err = |r: Request<'_>| add_peer(&cfg, &r, &key).unwrap_err().to_string();
        assert!(err(request(&dir, "phone", "h:1")).contains("already exists"));
        let mut r = request(&dir, "x", "h:1");
        r.interface = "wg9";
        assert!(err(r).contains("tunnels: wg0"));
        let mut r = request(&dir, "x", "h:1");
        r.key_file = Some(dir.path().join("absent.key"));
        assert!(err(r).contains("netd wg apply"));
        std::fs::write(dir.path().join("bad.key"), "nope").unwrap();
        let mut r = request(&dir, "x", "h:1");
        r.key_file = Some(dir.path().join("bad.key"));
        assert!(err(r).contains("bad.key does not hold a WireGuard key"));
    }
}
