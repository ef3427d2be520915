//! IPv6 on the LAN side: router advertisements. netd advertises every LAN link that has a
//! static global IPv6 address (`ipv6 = "static"` or an IPv6 entry in `addresses`): its
//! prefixes (autonomous for a /64, so clients make SLAAC addresses), itself as default
//! router, and itself as DNS server (RDNSS, so clients ask dnsd). M and O stay off: there
//! is no DHCPv6. Uplinks never get advertisements: an interface with `gateway6` or in a
//! firewall zone with `masquerade`.
//!
//! SLAAC on the WAN is the kernel's: the links code sets `accept_ra = 2` and
//! `autoconf = 1` on `ipv6 = "slaac"` links (see [`crate::links::Ipv6Conf`]).

mod advertise;
pub mod cli;
pub mod packet;

pub use advertise::{
    AdvertLink, Ipv6Error, MAX_INTERVAL, ROUTER_LIFETIME, advert, advertised_links, run, run_links,
    start_links, with_retired,
};
pub use packet::{ParseError, PrefixInfo, Rdnss, RouterAdvert, RouterSolicit};
