//! Adding a WireGuard peer: a key pair for the client, its wg-quick config and the peer
//! entry for appliance.toml. Shared by `applctl wg add-peer` (which prints them) and the
//! API's `POST /api/v1/wireguard/{tunnel}/peers` (which adds the entry as a new generation
//! and applies it), so both make the same peer.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use wireguard_control::Key;

use crate::Config;
use crate::model::WireguardInterface;
use crate::types::{Cidr, Endpoint, Host, IfName, Name};

/// Where netd keeps the private key of a tunnel whose config names no key file.
pub const KEY_DIR: &str = "/data/wireguard";

/// A new peer, as `applctl wg add-peer` and the API ask for it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The peer's name in appliance.toml.
    pub name: &'a str,
    /// The tunnel it joins.
    pub interface: &'a str,
    /// Addresses routed to the peer; empty: the next free one of the tunnel's subnet.
    pub allowed_ips: &'a [String],
    /// How the peer reaches the appliance, `host[:port]` (port: the tunnel's listen_port).
    pub endpoint: &'a str,
    /// DNS server for the peer; None: the tunnel's first address.
    pub dns: Option<IpAddr>,
    /// What the peer routes into the tunnel; empty: the tunnel's subnets.
    pub routes: &'a [String],
    /// The tunnel's private key file; None: its private_key_file, else KEY_DIR/<if>.key.
    pub key_file: Option<PathBuf>,
}

/// What adding a peer makes.
#[derive(Debug)]
pub struct NewPeer {
    /// wg-quick config for the client, its private key included.
    pub client_config: String,
    /// The `[wireguard.<if>.peers.<name>]` table to add to appliance.toml.
    pub toml_entry: String,
    /// The client's public key (base64).
    pub public_key: String,
}

/// Why a peer cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request does not fit the config (a bad name, address or endpoint).
    #[error("{0}")]
    Invalid(String),
    /// The config has no such tunnel.
    #[error("{0}")]
    NoTunnel(String),
    /// The tunnel has a peer of that name already.
    #[error("{0}")]
    Exists(String),
    /// The tunnel's key cannot be read.
    #[error("{0}")]
    Failed(String),
}

fn invalid(msg: String) -> PeerError {
    PeerError::Invalid(msg)
}

fn cidrs(list: &[String], what: &str) -> Result<Vec<Cidr>, PeerError> {
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

pub fn add_peer(cfg: &Config, req: &Request<'_>, client_key: &Key) -> Result<NewPeer, PeerError> {
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
        PeerError::NoTunnel(format!(
            "the config has no [wireguard.{ifname}]; tunnels: {}",
            cfg.wireguard
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if w.peers.contains_key(&peer_name) {
        return Err(PeerError::Exists(format!(
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
        PeerError::Failed(format!(
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
        public_key: client_key.get_public().to_base64(),
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
        let cfg = crate::load_str(CONFIG).unwrap();
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
        crate::load_str(&format!("{CONFIG}\n{}", out.toml_entry)).unwrap();
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_do() {
        let cfg = crate::load_str(CONFIG).unwrap();
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
