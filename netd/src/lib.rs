//! netd: see README.md for what this crate owns.
//!
//! Built so far: the nftables firewall ([`firewall`]) and links, addresses and routes
//! through rtnetlink ([`links`]), the LAN DHCP server ([`dhcp`]). WireGuard follows.

pub mod command;
pub mod dhcp;
pub mod firewall;
pub mod links;

pub use command::CommandFailure;
