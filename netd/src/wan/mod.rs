//! The WAN DHCPv4 client: smoltcp's DHCPv4 socket over an `AF_PACKET` socket per link with
//! `ipv4 = "dhcp"`. The lease's address and default route go to the kernel through the
//! links adapter ([`crate::links::Netlink`]); the DNS servers go to
//! `/run/appliance/wan-dns.json` for dnsd; the lease is kept in
//! `<state dir>/wan-<link>.json` so that a restart asks for the same address.
//!
//! - [`decide`] is pure: lease events to kernel and file steps, and the lease phases
//!   (T1, T2, expiry) at a given time.
//! - [`client`] drives smoltcp and runs the steps.

pub mod cli;
pub mod client;
pub mod decide;
pub mod files;

pub use client::{AddressChange, Client, ClientError, Paths, Running, start_all};
pub use decide::{Event, Lease, PROTO_DHCP, Phase, Step, decide, phase};

#[cfg(test)]
mod tests;
