//! What the WireGuard planner compares: the desired tunnels, built from the config with
//! keys loaded and endpoints resolved, and what the kernel reports.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

/// The ifalias of every WireGuard link netd created. It differs from the links code's
/// `appliance` so that each side only ever sees its own links as owned.
pub const WG_ALIAS: &str = "appliance wireguard";

/// The default MTU of a tunnel, as wg-quick picks for an IPv6 underlay.
pub const DEFAULT_MTU: u32 = 1420;

/// A peer whose last handshake is older than this has its endpoint re-resolved and
/// rewritten; a younger session keeps the endpoint WireGuard roamed to.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// A private or preshared key. Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub [u8; 32]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A public key, shown in base64 as `wg` prints it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&wireguard_control::Key(self.0).to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A peer's configuration, as set on the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub public_key: PublicKey,
    pub preshared_key: Option<Secret>,
    /// `None` leaves the kernel's endpoint alone (a peer that dials in, or a name that did
    /// not resolve).
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
    /// Sorted, so that equal sets compare equal.
    pub allowed_ips: Vec<IpNet>,
}

/// A tunnel as the config wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDevice {
    pub name: String,
    pub private_key: Secret,
    /// `None`: whatever port the kernel picked.
    pub listen_port: Option<u16>,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    /// Sorted by public key.
    pub peers: Vec<Peer>,
}

/// A peer as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPeer {
    pub peer: Peer,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A WireGuard link netd owns, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDevice {
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<IpNet>,
    pub private_key: Option<Secret>,
    pub public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub peers: Vec<ObservedPeer>,
}

impl ObservedDevice {
    pub fn peer(&self, key: &PublicKey) -> Option<&ObservedPeer> {
        self.peers.iter().find(|p| p.peer.public_key == *key)
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// WireGuard links with the alias [`WG_ALIAS`].
    pub devices: Vec<ObservedDevice>,
    /// Every other link: names netd must not take.
    pub foreign: Vec<String>,
}

impl Observed {
    pub fn device(&self, name: &str) -> Option<&ObservedDevice> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// True when a peer's endpoint is due for a fresh DNS answer: it never completed a
/// handshake, or its last one is over [`STALE_AFTER`] old.
pub fn resolve_due(last_handshake: Option<SystemTime>, now: SystemTime) -> bool {
    match last_handshake {
        None => true,
        // A handshake "in the future" (the clock stepped back) counts as fresh.
        Some(t) => now.duration_since(t).is_ok_and(|age| age > STALE_AFTER),
    }
}
