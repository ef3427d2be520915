//! The client's decisions, pure: what the kernel and the files should hold for a lease,
//! and which phase a bound lease is in at a given time. smoltcp's socket sends the
//! packets; this part decides what a lease event or the clock means for the router.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::links::{Action, Route};

/// `rtm_protocol` of the default route learned by DHCP (`RTPROT_DHCP`, `proto dhcp` in
/// `ip route`): the links code never removes routes of this protocol.
pub const PROTO_DHCP: u8 = 16;

/// What one ACK gave, as applied to the kernel and persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Address with the prefix length of the subnet mask.
    pub address: Ipv4Net,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Server identifier of the server that granted it.
    pub server: Ipv4Addr,
    /// Unix seconds of the ACK.
    pub acquired: u64,
    /// Lease time, T1 and T2 in seconds from `acquired`.
    pub lease_secs: u64,
    pub t1_secs: u64,
    pub t2_secs: u64,
}

impl Lease {
    /// T1 and T2 the way RFC 2131 defaults them when the server sends none.
    pub fn default_timers(lease_secs: u64) -> (u64, u64) {
        (lease_secs / 2, lease_secs.saturating_mul(7) / 8)
    }

    pub fn expires(&self) -> u64 {
        self.acquired.saturating_add(self.lease_secs)
    }
}

/// Where a bound lease stands at `now` (RFC 2131 4.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before T1: nothing to send.
    Bound,
    /// From T1: renew by unicast with the granting server.
    Renewing,
    /// From T2: rebind by broadcast with any server.
    Rebinding,
    /// At the lease's end: the address must go.
    Expired,
}

pub fn phase(lease: &Lease, now: u64) -> Phase {
    let since = now.saturating_sub(lease.acquired);
    if since >= lease.lease_secs {
        Phase::Expired
    } else if since >= lease.t2_secs {
        Phase::Rebinding
    } else if since >= lease.t1_secs {
        Phase::Renewing
    } else {
        Phase::Bound
    }
}

/// What happened to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An ACK: a new lease, a renewal, or a different address after a NAK.
    Acked(Lease),
    /// The lease is gone: expired without renewal, or the server said NAK (the socket
    /// restarts discovery by itself).
    Lost,
    /// netd stops: like OpenWrt's udhcpc with `-R`, the lease is released and the address
    /// removed, so that the box does not keep using an address it no longer defends.
    Stop,
}

/// One thing to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Kernel(Action),
    /// Replace `wan-dns.json` with these servers (empty: no servers known).
    WriteDns(Vec<Ipv4Addr>),
    /// Persist the lease so that a restart asks for the same address.
    Persist(Lease),
    /// Send a DHCPRELEASE for this lease.
    Release(Lease),
}

fn default_route(link: &str, router: Ipv4Addr) -> Route {
    Route {
        dst: IpNet::V4(Ipv4Net::default()),
        gateway: Some(router.into()),
        dev: Some(link.to_string()),
        metric: 0,
        protocol: PROTO_DHCP,
    }
}

/// Steps that take the kernel from `applied` (what netd put there for this link) to what
/// `event` calls for. An unchanged renewal only persists the new times.
pub fn decide(link: &str, applied: Option<&Lease>, event: &Event) -> Vec<Step> {
    let mut steps = Vec::new();
    let remove = |l: &Lease, steps: &mut Vec<Step>| {
        if let Some(r) = l.router {
            steps.push(Step::Kernel(Action::RemoveRoute(default_route(link, r))));
        }
        steps.push(Step::Kernel(Action::RemoveAddress {
            link: link.to_string(),
            net: IpNet::V4(l.address),
        }));
    };
    match event {
        Event::Acked(new) => {
            let same_address = applied.is_some_and(|a| a.address == new.address);
            let same_router = same_address && applied.is_some_and(|a| a.router == new.router);
            if let Some(old) = applied {
                if !same_router && let Some(r) = old.router {
                    steps.push(Step::Kernel(Action::RemoveRoute(default_route(link, r))));
                }
                if !same_address {
                    steps.push(Step::Kernel(Action::RemoveAddress {
                        link: link.to_string(),
                        net: IpNet::V4(old.address),
                    }));
                }
            }
            if !same_address {
                steps.push(Step::Kernel(Action::AddAddress {
                    link: link.to_string(),
                    net: IpNet::V4(new.address),
                }));
            }
            if !same_router && let Some(r) = new.router {
                steps.push(Step::Kernel(Action::AddRoute(default_route(link, r))));
            }
            if applied.map(|a| &a.dns) != Some(&new.dns) {
                steps.push(Step::WriteDns(new.dns.clone()));
            }
            steps.push(Step::Persist(new.clone()));
        }
        Event::Lost => {
            if let Some(old) = applied {
                remove(old, &mut steps);
                steps.push(Step::WriteDns(Vec::new()));
            }
        }
        Event::Stop => {
            if let Some(old) = applied {
                steps.push(Step::Release(old.clone()));
                remove(old, &mut steps);
                steps.push(Step::WriteDns(Vec::new()));
            }
        }
    }
    steps
}

/// The address to ask for at start: the stored lease's, unless the config's link is
/// another one. An expired stored lease still names a good candidate (servers usually
/// keep an expired client's address for it).
pub fn requested_at_start(stored: Option<&Lease>) -> Option<Ipv4Addr> {
    stored.map(|l| l.address.addr())
}
