//! The desired tunnels from the config: keys loaded (or generated), endpoints resolved.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::Config;
use appliance::types::Host;

use super::keys::{self, KeyError};
use super::state::{DEFAULT_MTU, DesiredDevice, Peer, PublicKey};

/// Turns `host:port` into addresses. The real one asks the system resolver.
pub trait Resolve {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (getaddrinfo: /etc/hosts, then dnsd).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// A DNS endpoint of a peer: the name and the port.
pub type EndpointName = (String, u16);

/// The answers of [`resolve_all`], served without blocking: a name missing from it (or that
/// failed or timed out) fails, which leaves the kernel's endpoint as it is.
#[derive(Debug, Default)]
pub struct Resolved(BTreeMap<EndpointName, Result<Vec<SocketAddr>, String>>);

impl Resolve for Resolved {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self.0.get(&(host.to_owned(), port)) {
            Some(Ok(addrs)) => Ok(addrs.clone()),
            Some(Err(e)) => Err(std::io::Error::other(e.clone())),
            None => Err(std::io::Error::other("not looked up in this pass")),
        }
    }
}

/// Looks up `names`, each in its own thread, and waits at most `timeout` for all of them:
/// getaddrinfo cannot be cancelled, so a lookup that hangs (dnsd down, an upstream that
/// never answers) is left to finish in its thread and counts as failed. Called with no
/// lock held, so that the daemon keeps answering while names are looked up.
pub fn resolve_all(
    resolver: &Arc<dyn Resolve + Send + Sync>,
    names: Vec<EndpointName>,
    timeout: Duration,
) -> Resolved {
    let mut names = names;
    names.sort();
    names.dedup();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut out = BTreeMap::new();
    for name in names {
        let (tx, resolver) = (tx.clone(), Arc::clone(resolver));
        let spawned = std::thread::Builder::new()
            .name("wg-resolve".into())
            .spawn(move || {
                let answer = resolver.resolve(&name.0, name.1).map_err(|e| e.to_string());
                // The receiver is gone when the wait timed out: the answer is late, dropped.
                let _ = tx.send((name, answer));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to resolve a WireGuard endpoint");
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((name, answer)) => {
                out.insert(name, answer);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    seconds = timeout.as_secs(),
                    "a WireGuard endpoint name got no answer in time; will retry"
                );
                break;
            }
        }
    }
    Resolved(out)
}

/// The DNS endpoints of `cfg`'s enabled peers for which `resolve_name(interface, peer key)`
/// holds: what [`desired`] would look up.
pub fn endpoint_names(
    cfg: &Config,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
) -> Vec<EndpointName> {
    let mut out = Vec::new();
    for (ifname, w) in &cfg.wireguard {
        for p in w.peers.values().filter(|p| p.enabled) {
            if let Some(e) = &p.endpoint
                && let Host::Name(host) = &e.host
                && resolve_name(ifname.as_str(), &PublicKey(*p.public_key.bytes()))
            {
                out.push((host.as_str().to_owned(), e.port.get()));
            }
        }
    }
    out
}

/// The tunnels of `cfg`. `resolve_name(interface, peer key)` says whether a peer's DNS
/// endpoint is looked up now; a name left unresolved (or that does not resolve) leaves the
/// kernel's endpoint as it is.
pub fn desired(
    cfg: &Config,
    state_dir: &Path,
    resolver: &dyn Resolve,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
) -> Result<Vec<DesiredDevice>, KeyError> {
    desired_with(cfg, state_dir, resolver, resolve_name, true)
}

/// [`desired`]; with `write_keys` false a key still to be generated is not written (see
/// [`keys::private_key_with`]): for plans and checks, which change nothing.
pub fn desired_with(
    cfg: &Config,
    state_dir: &Path,
    resolver: &dyn Resolve,
    resolve_name: &dyn Fn(&str, &PublicKey) -> bool,
    write_keys: bool,
) -> Result<Vec<DesiredDevice>, KeyError> {
    let mut out = Vec::new();
    for (ifname, w) in &cfg.wireguard {
        let name = ifname.as_str();
        let configured = w.private_key_file.as_ref().map(|p| Path::new(p.as_str()));
        let private_key = keys::private_key_with(name, configured, state_dir, write_keys)?;
        let mut peers = Vec::new();
        for (peer_name, p) in &w.peers {
            if !p.enabled {
                continue;
            }
            let public_key = PublicKey(*p.public_key.bytes());
            let preshared_key = match &p.preshared_key_file {
                Some(f) => Some(keys::read_key(
                    Path::new(f.as_str()),
                    &format!("wireguard.{name}.peers.{peer_name}.preshared_key_file"),
                )?),
                None => None,
            };
            let endpoint = match &p.endpoint {
                None => None,
                Some(e) => match &e.host {
                    Host::Ip(ip) => Some(SocketAddr::new(*ip, e.port.get())),
                    Host::Name(host) if resolve_name(name, &public_key) => {
                        match resolver.resolve(host.as_str(), e.port.get()) {
                            Ok(addrs) if !addrs.is_empty() => {
                                // IPv4 first: most home uplinks have no IPv6 route.
                                addrs
                                    .iter()
                                    .find(|a| a.is_ipv4())
                                    .or(addrs.first())
                                    .copied()
                            }
                            Ok(_) => {
                                tracing::warn!(interface = name, peer = %peer_name, endpoint = %e, "the endpoint's name has no address; will retry");
                                None
                            }
                            Err(err) => {
                                tracing::warn!(interface = name, peer = %peer_name, endpoint = %e, error = %err, "cannot resolve the endpoint; will retry");
                                None
                            }
                        }
                    }
                    Host::Name(_) => None,
                },
            };
            let mut allowed_ips: Vec<_> = p.allowed_ips.iter().map(|c| c.network()).collect();
            allowed_ips.sort();
            allowed_ips.dedup();
            peers.push(Peer {
                public_key,
                preshared_key,
                endpoint,
                keepalive: p
                    .persistent_keepalive
                    .map(|d| u16::try_from(d.as_secs()).unwrap_or(u16::MAX))
                    .unwrap_or(0),
                allowed_ips,
            });
        }
        peers.sort_by_key(|p| p.public_key);
        out.push(DesiredDevice {
            name: name.to_owned(),
            private_key,
            listen_port: w.listen_port.map(|p| p.get()),
            mtu: w.mtu.map(|m| u32::from(m.get())).unwrap_or(DEFAULT_MTU),
            addresses: w.addresses.iter().map(|c| c.net()).collect(),
            peers,
        });
    }
    Ok(out)
}
