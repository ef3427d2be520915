//! netd: see README.md for what this crate owns.
//!
//! Built so far: the nftables firewall ([`firewall`]) and links, addresses and routes
//! through rtnetlink ([`links`]), the LAN DHCP server ([`dhcp`]), WireGuard tunnels ([`wireguard`]),
//! and `netd serve` ([`daemon`]), which applies each generation as one transaction over
//! them and the services it runs ([`services`]).

pub mod applied;
pub mod cli;
pub mod command;
pub mod daemon;
pub mod dhcp;
pub mod firewall;
pub mod ipv6;
pub mod links;
pub mod metrics;
pub mod services;
pub mod wan;
pub mod wireguard;

pub use command::CommandFailure;
