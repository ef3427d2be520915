//! netd: see README.md for what this crate owns.
//!
//! Built so far: the nftables firewall ([`firewall`]). Links, DHCP and WireGuard follow.

pub mod command;
pub mod firewall;

pub use command::CommandFailure;
