//! The allocation core of one link's server: which address a client gets, with the lease
//! table and the clock (seconds since the Unix epoch) as parameters. No sockets, no files.
//!
//! An address is never held by two clients: an address is taken while it has a bound lease
//! that has not expired, an offer that is still held ([`OFFER_HOLD_SECS`]), is a static
//! lease of another client, or was declined less than [`QUARANTINE_SECS`] ago. Expired
//! leases stay in the table so that a returning client gets its old address back; another
//! client gets one only when the pool has no never-used address left.
//!
//! After a start without the stored table (the lease file was unreadable, see
//! [`super::server`]) the table is *unknown* for one lease time ([`Pool::set_unknown_until`]):
//! addresses may be held by clients the table does not know. Until then an address is
//! offered to a client only if it is that client's own (static, or in the table for it) or
//! a conflict probe found it free ([`Pool::probed`]); [`Pool::offer_or_probe`] says which
//! address to probe. REQUESTs are answered as always (the server is authoritative), so
//! clients that hold an address and renew or reboot put their leases back in the table.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use appliance::leases::Lease;
use appliance::types::MacAddr;

use super::Scope;

/// How long an offered address is kept for the client it was offered to.
pub const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address (the client found it in use) is not handed out.
pub const QUARANTINE_SECS: u64 = 600;

/// A fixed address for one MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Static {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mac: MacAddr,
    hostname: Option<String>,
    expires: u64,
    /// An ACKed lease; `false` for an offer that is only held.
    bound: bool,
}

/// How long a probe's "free" answer stands: long enough for the offer that follows it.
pub const PROBED_FREE_SECS: u64 = 10;

/// A granted lease: the address and how long it holds from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub ip: Ipv4Addr,
    pub lease_secs: u32,
    /// A new binding (not a renewal of the client's unexpired lease on this address): the
    /// server writes it to disk before it ACKs.
    pub new: bool,
}

/// What to answer a DISCOVER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Offer this address (held for the client for [`OFFER_HOLD_SECS`]).
    Address(Ipv4Addr),
    /// The table is unknown and this is the address to offer if a conflict probe finds it
    /// free; report the probe with [`Pool::probed`] and ask again.
    Probe(Ipv4Addr),
    /// Nothing to offer (the pool is exhausted; logged).
    Nothing,
}

/// Why a REQUEST is refused with a NAK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{ip} is outside this link's subnet")]
    WrongSubnet { ip: Ipv4Addr },
    #[error("{mac} has the static address {fixed}, not {ip}")]
    NotItsStatic {
        mac: MacAddr,
        ip: Ipv4Addr,
        fixed: Ipv4Addr,
    },
    #[error("{ip} is outside the pool")]
    OutsidePool { ip: Ipv4Addr },
    #[error("{ip} is in use by another client")]
    Taken { ip: Ipv4Addr },
    #[error("{ip} was declined by a client and is quarantined")]
    Quarantined { ip: Ipv4Addr },
}

/// One link's lease table.
#[derive(Debug, Clone)]
pub struct Pool {
    scope: Scope,
    entries: BTreeMap<Ipv4Addr, Entry>,
    declined: BTreeMap<Ipv4Addr, u64>,
    /// Until when the table may miss leases that clients hold (0: it is complete).
    unknown_until: u64,
    /// Addresses a conflict probe found free, until when that answer stands.
    probed_free: BTreeMap<Ipv4Addr, u64>,
    /// Addresses a conflict probe found in use, until when they are not offered.
    probed_busy: BTreeMap<Ipv4Addr, u64>,
}

impl Pool {
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            entries: BTreeMap::new(),
            declined: BTreeMap::new(),
            unknown_until: 0,
            probed_free: BTreeMap::new(),
            probed_busy: BTreeMap::new(),
        }
    }

    /// The table may miss leases until `until` (seconds since the Unix epoch): until then
    /// addresses that are not the client's own are offered only after a conflict probe.
    pub fn set_unknown_until(&mut self, until: u64) {
        self.unknown_until = until;
    }

    /// Until when the table is unknown (0 or a past time: it is complete).
    pub fn unknown_until(&self) -> u64 {
        self.unknown_until
    }

    /// The answer of a conflict probe of `ip`: free, or in use by a host the table does not
    /// know (not offered for [`QUARANTINE_SECS`]). Probes are not persisted.
    pub fn probed(&mut self, ip: Ipv4Addr, in_use: bool, now: u64) {
        if in_use {
            tracing::warn!(link = %self.scope.link, %ip,
                "conflict probe: {ip} answers though no lease is known for it; \
                 not offered for {QUARANTINE_SECS} s");
            self.probed_free.remove(&ip);
            // Kept from offers only: the host that answered may be the client that holds
            // it, and its renewal is ACKed.
            self.probed_busy
                .insert(ip, now.saturating_add(QUARANTINE_SECS));
        } else {
            self.probed_free
                .insert(ip, now.saturating_add(PROBED_FREE_SECS));
        }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Takes the leases of this link's subnet from a lease file read at start. Leases that
    /// no longer fit the config (outside the pool, on another client's static address, a
    /// client whose static address moved) are dropped.
    pub fn load(&mut self, leases: &[Lease], now: u64) {
        for l in leases {
            let IpAddr::V4(ip) = l.ip else { continue };
            if !self.scope.subnet.contains(&ip) {
                continue;
            }
            let fits = match self.static_of(&l.mac) {
                Some(s) => s.ip == ip,
                None => self.in_pool(ip) && self.static_at(ip).is_none(),
            };
            if !fits {
                tracing::info!(link = %self.scope.link, mac = %l.mac, %ip,
                    "dropping a stored lease that the config no longer allows");
                continue;
            }
            let expires = l.expires.unwrap_or(now);
            // One client per address (a damaged or hand-edited file may name two): the
            // later lease wins, whichever comes first in the file.
            if let Some(e) = self.entries.get(&ip)
                && e.mac != l.mac
            {
                if e.expires >= expires {
                    continue;
                }
                self.entries.remove(&ip);
            }
            // One address per client: the later lease wins.
            if let Some((&old, e)) = self.entry_of(&l.mac) {
                if e.expires >= expires {
                    continue;
                }
                self.entries.remove(&old);
            }
            self.entries.insert(
                ip,
                Entry {
                    mac: l.mac,
                    hostname: l.hostname.clone(),
                    expires,
                    bound: true,
                },
            );
        }
    }

    /// The bound leases, for the lease file: expired ones too (a returning client gets its
    /// address back after a restart); readers check `expires`. Static leases have none.
    pub fn leases(&self) -> Vec<Lease> {
        self.entries
            .iter()
            .filter(|(_, e)| e.bound)
            .map(|(ip, e)| {
                let fixed = self.static_of(&e.mac).is_some_and(|s| s.ip == *ip);
                Lease {
                    mac: e.mac,
                    ip: IpAddr::V4(*ip),
                    hostname: e.hostname.clone(),
                    expires: (!fixed).then_some(e.expires),
                }
            })
            .collect()
    }

    /// The address to offer a DISCOVER from `mac`, held for it for [`OFFER_HOLD_SECS`];
    /// `None` when the pool is exhausted (logged) or while the table is unknown and the
    /// address would need a probe ([`Pool::offer_or_probe`] tells).
    pub fn offer(
        &mut self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        hostname: Option<String>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        match self.offer_or_probe(mac, requested, hostname, now) {
            Offer::Address(ip) => Some(ip),
            Offer::Probe(_) | Offer::Nothing => None,
        }
    }

    /// What to answer a DISCOVER from `mac`: an address (then held for it for
    /// [`OFFER_HOLD_SECS`]), the address to probe first while the table is unknown, or
    /// nothing when the pool is exhausted (logged).
    pub fn offer_or_probe(
        &mut self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        hostname: Option<String>,
        now: u64,
    ) -> Offer {
        self.prune(now);
        let Some(ip) = self.choose(mac, requested, now) else {
            return Offer::Nothing;
        };
        if self.needs_probe(mac, ip, now) {
            return Offer::Probe(ip);
        }
        let keep = self
            .entries
            .get(&ip)
            .is_some_and(|e| e.mac == mac && e.bound && e.expires > now);
        if !keep {
            let hostname =
                hostname.or_else(|| self.entries.get(&ip).and_then(|e| e.hostname.clone()));
            self.entries.insert(
                ip,
                Entry {
                    mac,
                    hostname,
                    expires: now.saturating_add(OFFER_HOLD_SECS),
                    bound: false,
                },
            );
        }
        Offer::Address(ip)
    }

    /// Whether `ip` may be someone's the table does not know: the table is unknown, the
    /// address is not `mac`'s own, and no recent probe found it free.
    fn needs_probe(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        now < self.unknown_until
            && self.static_of(&mac).is_none_or(|s| s.ip != ip)
            && self.entries.get(&ip).is_none_or(|e| e.mac != mac)
            && self.probed_free.get(&ip).is_none_or(|&until| until <= now)
    }

    fn choose(&self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(s) = self.static_of(&mac) {
            return Some(s.ip);
        }
        let usable = |ip: Ipv4Addr| {
            self.in_pool(ip)
                && self.check(mac, ip, now).is_ok()
                && self.probed_busy.get(&ip).is_none_or(|&until| until <= now)
        };
        if let Some((&ip, _)) = self
            .entries
            .iter()
            .filter(|(_, e)| e.mac == mac)
            .max_by_key(|(_, e)| (e.bound, e.expires))
            && usable(ip)
        {
            return Some(ip);
        }
        if let Some(ip) = requested.filter(|&ip| usable(ip)) {
            return Some(ip);
        }
        let never_used = self
            .range()
            .find(|ip| !self.entries.contains_key(ip) && usable(*ip));
        if never_used.is_some() {
            return never_used;
        }
        // Reclaim the address whose lease ended longest ago.
        let reclaimed = self
            .entries
            .iter()
            .filter(|(ip, e)| e.expires <= now && usable(**ip))
            .min_by_key(|(_, e)| e.expires)
            .map(|(ip, _)| *ip);
        if reclaimed.is_none() {
            tracing::warn!(link = %self.scope.link, %mac,
                "DHCP pool {}-{} is exhausted: no address to offer",
                self.scope.start, self.scope.end);
        }
        reclaimed
    }

    /// Binds `ip` to `mac` for a REQUEST (any state: selecting, init-reboot, renewing,
    /// rebinding), or says why not. The server is authoritative for its link: a request
    /// for an address this client may not have is refused, so that the client starts over.
    pub fn request(
        &mut self,
        mac: MacAddr,
        ip: Ipv4Addr,
        hostname: Option<String>,
        now: u64,
    ) -> Result<Grant, Refusal> {
        self.prune(now);
        if !self.scope.subnet.contains(&ip) {
            return Err(Refusal::WrongSubnet { ip });
        }
        match self.static_of(&mac) {
            Some(s) if s.ip != ip => {
                return Err(Refusal::NotItsStatic {
                    mac,
                    ip,
                    fixed: s.ip,
                });
            }
            Some(_) => {}
            None if !self.in_pool(ip) => return Err(Refusal::OutsidePool { ip }),
            None => self.check(mac, ip, now)?,
        }
        let new = self
            .entries
            .get(&ip)
            .is_none_or(|e| e.mac != mac || !e.bound || e.expires <= now);
        let hostname = hostname
            .or_else(|| {
                self.entries
                    .get(&ip)
                    .filter(|e| e.mac == mac)
                    .and_then(|e| e.hostname.clone())
            })
            .or_else(|| self.static_of(&mac).and_then(|s| s.hostname.clone()));
        self.entries.retain(|a, e| e.mac != mac || *a == ip);
        self.entries.insert(
            ip,
            Entry {
                mac,
                hostname,
                expires: now.saturating_add(u64::from(self.scope.lease_secs)),
                bound: true,
            },
        );
        Ok(Grant {
            ip,
            lease_secs: self.scope.lease_secs,
            new,
        })
    }

    /// A client gives its lease back; the address stays remembered for it. Returns whether
    /// the table changed.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        match self.entries.get_mut(&ip) {
            Some(e) if e.mac == mac && e.expires > now => {
                e.expires = now;
                true
            }
            _ => false,
        }
    }

    /// A client found `ip` in use by someone else: forget its lease and keep the address
    /// out of the pool for [`QUARANTINE_SECS`]. Returns whether the table changed.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        if self.entries.get(&ip).is_none_or(|e| e.mac != mac) {
            return false;
        }
        let was_bound = self.entries.remove(&ip).is_some_and(|e| e.bound);
        tracing::warn!(link = %self.scope.link, %mac, %ip,
            "client declined the address (in use by another host); quarantined for {QUARANTINE_SECS} s");
        self.declined
            .insert(ip, now.saturating_add(QUARANTINE_SECS));
        was_bound
    }

    /// Whether `mac` may take `ip` now, ignoring pool bounds and its own static lease.
    fn check(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<(), Refusal> {
        if ip == self.scope.server
            || ip == self.scope.subnet.network()
            || ip == self.scope.subnet.broadcast()
        {
            return Err(Refusal::Taken { ip });
        }
        if self.static_at(ip).is_some_and(|s| s.mac != mac) {
            return Err(Refusal::Taken { ip });
        }
        if self.declined.get(&ip).is_some_and(|&until| until > now) {
            return Err(Refusal::Quarantined { ip });
        }
        if self
            .entries
            .get(&ip)
            .is_some_and(|e| e.mac != mac && e.expires > now)
        {
            return Err(Refusal::Taken { ip });
        }
        Ok(())
    }

    /// Drops lapsed offers and quarantines; bound leases stay (remembered).
    fn prune(&mut self, now: u64) {
        self.entries.retain(|_, e| e.bound || e.expires > now);
        self.declined.retain(|_, until| *until > now);
        self.probed_free.retain(|_, until| *until > now);
        self.probed_busy.retain(|_, until| *until > now);
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.scope.start..=self.scope.end).contains(&ip)
    }

    fn range(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (u32::from(self.scope.start)..=u32::from(self.scope.end)).map(Ipv4Addr::from)
    }

    fn static_of(&self, mac: &MacAddr) -> Option<&Static> {
        self.scope.statics.iter().find(|s| s.mac == *mac)
    }

    fn static_at(&self, ip: Ipv4Addr) -> Option<&Static> {
        self.scope.statics.iter().find(|s| s.ip == ip)
    }

    fn entry_of(&self, mac: &MacAddr) -> Option<(&Ipv4Addr, &Entry)> {
        self.entries.iter().find(|(_, e)| e.mac == *mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::types::IfName;

    const T0: u64 = 1_800_000_000;

    fn mac(n: u8) -> MacAddr {
        MacAddr::parse(&format!("52:54:00:00:00:{n:02x}")).unwrap()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 1, last)
    }

    fn scope(start: u8, end: u8) -> Scope {
        Scope {
            link: IfName::parse("lan").unwrap(),
            server: ip(1),
            subnet: "192.168.1.0/24".parse().unwrap(),
            start: ip(start),
            end: ip(end),
            lease_secs: 3600,
            routers: vec![ip(1)],
            dns: vec![ip(1)],
            domain: Some("lan".into()),
            statics: vec![Static {
                mac: mac(0x99),
                ip: ip(5),
                hostname: Some("nas".into()),
            }],
        }
    }

    fn bind(p: &mut Pool, m: MacAddr, now: u64) -> Ipv4Addr {
        let o = p.offer(m, None, None, now).unwrap();
        p.request(m, o, None, now).unwrap().ip
    }

    #[test]
    fn allocates_from_the_range_in_order() {
        let mut p = Pool::new(scope(100, 110));
        assert_eq!(bind(&mut p, mac(1), T0), ip(100));
        assert_eq!(bind(&mut p, mac(2), T0), ip(101));
        assert_eq!(p.leases().len(), 2);
        assert_eq!(p.leases()[0].expires, Some(T0 + 3600));
    }

    #[test]
    fn a_requested_free_address_is_honoured() {
        let mut p = Pool::new(scope(100, 110));
        assert_eq!(p.offer(mac(1), Some(ip(107)), None, T0), Some(ip(107)));
        // Outside the pool or someone's: the next free one instead.
        assert_eq!(p.offer(mac(2), Some(ip(107)), None, T0), Some(ip(100)));
        assert_eq!(p.offer(mac(3), Some(ip(50)), None, T0), Some(ip(101)));
    }

    #[test]
    fn static_leases_always_get_their_address_and_nobody_else_does() {
        // The static address 192.168.1.5 is inside this pool.
        let mut p = Pool::new(scope(5, 6));
        assert_eq!(bind(&mut p, mac(1), T0), ip(6));
        assert_eq!(p.offer(mac(2), Some(ip(5)), None, T0), None, "exhausted");
        assert_eq!(
            p.request(mac(2), ip(5), None, T0),
            Err(Refusal::Taken { ip: ip(5) })
        );
        assert_eq!(bind(&mut p, mac(0x99), T0), ip(5));
        let l = p.leases();
        let nas = l.iter().find(|l| l.mac == mac(0x99)).unwrap();
        assert_eq!(nas.hostname.as_deref(), Some("nas"));
        assert_eq!(nas.expires, None);
        // Asking for another address moves it back to its own.
        assert!(matches!(
            p.request(mac(0x99), ip(6), None, T0),
            Err(Refusal::NotItsStatic { .. })
        ));
    }

    #[test]
    fn renewals_keep_the_address() {
        let mut p = Pool::new(scope(100, 110));
        let a = bind(&mut p, mac(1), T0);
        bind(&mut p, mac(2), T0);
        let g = p.request(mac(1), a, None, T0 + 1800).unwrap();
        assert_eq!(g.ip, a);
        assert_eq!(p.leases()[0].expires, Some(T0 + 1800 + 3600));
        // A rediscover after the lease ended still finds the old address.
        assert_eq!(p.offer(mac(1), None, None, T0 + 100_000), Some(a));
    }

    #[test]
    fn expiry_frees_the_address_but_never_used_ones_go_first() {
        let mut p = Pool::new(scope(100, 101));
        let a = bind(&mut p, mac(1), T0);
        let b = bind(&mut p, mac(2), T0);
        assert_eq!(p.offer(mac(3), None, None, T0 + 10), None);
        // mac(1)'s lease ended; mac(2)'s was renewed.
        p.request(mac(2), b, None, T0 + 3000).unwrap();
        let later = T0 + 3601;
        assert_eq!(p.offer(mac(3), None, None, later), Some(a));
        assert_eq!(p.request(mac(3), a, None, later).unwrap().ip, a);
        // mac(1) comes back: nothing left for it, and its old address is refused.
        assert_eq!(p.offer(mac(1), None, None, later), None);
        assert_eq!(
            p.request(mac(1), a, None, later),
            Err(Refusal::Taken { ip: a })
        );
    }

    #[test]
    fn offers_are_held_then_lapse() {
        let mut p = Pool::new(scope(100, 100));
        assert_eq!(p.offer(mac(1), None, None, T0), Some(ip(100)));
        assert_eq!(p.offer(mac(2), None, None, T0 + 1), None, "held for mac 1");
        assert!(p.leases().is_empty(), "an offer is not a lease");
        assert_eq!(
            p.offer(mac(2), None, None, T0 + OFFER_HOLD_SECS),
            Some(ip(100))
        );
        assert_eq!(
            p.request(mac(1), ip(100), None, T0 + OFFER_HOLD_SECS),
            Err(Refusal::Taken { ip: ip(100) })
        );
    }

    #[test]
    fn declined_addresses_are_quarantined() {
        let mut p = Pool::new(scope(100, 101));
        let a = bind(&mut p, mac(1), T0);
        assert!(p.decline(mac(1), a, T0));
        assert!(p.leases().is_empty());
        assert_eq!(p.offer(mac(1), None, None, T0), Some(ip(101)));
        assert_eq!(
            p.request(mac(2), a, None, T0),
            Err(Refusal::Quarantined { ip: a })
        );
        assert!(!p.decline(mac(2), ip(101), T0), "not its address");
        assert_eq!(
            p.offer(mac(2), None, None, T0 + QUARANTINE_SECS),
            Some(a),
            "back after the quarantine"
        );
    }

    #[test]
    fn release_frees_the_address_and_remembers_the_client() {
        let mut p = Pool::new(scope(100, 101));
        let a = bind(&mut p, mac(1), T0);
        assert!(p.release(mac(1), a, T0 + 5));
        assert!(!p.release(mac(2), a, T0 + 5));
        assert_eq!(p.leases()[0].expires, Some(T0 + 5));
        assert_eq!(p.offer(mac(1), None, None, T0 + 6), Some(a));
    }

    #[test]
    fn requests_outside_the_subnet_or_pool_are_refused() {
        let mut p = Pool::new(scope(100, 110));
        let other = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(
            p.request(mac(1), other, None, T0),
            Err(Refusal::WrongSubnet { ip: other })
        );
        assert_eq!(
            p.request(mac(1), ip(50), None, T0),
            Err(Refusal::OutsidePool { ip: ip(50) })
        );
        assert_eq!(
            p.request(mac(1), ip(1), None, T0),
            Err(Refusal::OutsidePool { ip: ip(1) })
        );
        // An init-reboot with a free pool address is granted (authoritative server).
        assert_eq!(p.request(mac(1), ip(105), None, T0).unwrap().ip, ip(105));
    }

    #[test]
    fn a_restart_keeps_the_leases() {
        let mut p = Pool::new(scope(100, 110));
        let a = bind(&mut p, mac(1), T0);
        p.request(mac(1), a, Some("laptop".into()), T0).unwrap();
        let b = bind(&mut p, mac(2), T0);
        p.release(mac(2), b, T0);
        bind(&mut p, mac(0x99), T0);
        let stored = p.leases();

        let mut q = Pool::new(scope(100, 110));
        q.load(&stored, T0 + 10);
        assert_eq!(q.leases(), stored);
        assert_eq!(q.offer(mac(1), None, None, T0 + 10), Some(a));
        assert_eq!(q.offer(mac(2), None, None, T0 + 10), Some(b));
        assert_eq!(q.offer(mac(3), None, None, T0 + 10), Some(ip(102)));
        let laptop = q.leases().into_iter().find(|l| l.mac == mac(1)).unwrap();
        assert_eq!(laptop.hostname.as_deref(), Some("laptop"));
    }

    #[test]
    fn stored_leases_that_the_config_forbids_are_dropped() {
        let lease = |m: u8, last: u8| Lease {
            mac: mac(m),
            ip: IpAddr::V4(ip(last)),
            hostname: None,
            expires: Some(T0 + 100),
        };
        let mut p = Pool::new(scope(100, 110));
        p.load(
            &[
                lease(1, 50),   // outside the pool now
                lease(2, 5),    // on the static address of another MAC
                lease(0x99, 7), // a static client somewhere else
                lease(3, 104),
                Lease {
                    ip: "10.0.0.1".parse().unwrap(), // another link's
                    ..lease(4, 0)
                },
            ],
            T0,
        );
        let l = p.leases();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].mac, mac(3));
    }

    #[test]
    fn an_unknown_table_probes_all_but_the_clients_own() {
        let mut p = Pool::new(scope(5, 110));
        p.set_unknown_until(T0 + 3600);
        // A static client and one the table knows again (it renewed) need no probe.
        assert_eq!(
            p.offer_or_probe(mac(0x99), None, None, T0),
            Offer::Address(ip(5))
        );
        assert!(p.request(mac(1), ip(50), None, T0).unwrap().new);
        assert!(
            !p.request(mac(1), ip(50), None, T0 + 1).unwrap().new,
            "a renewal"
        );
        assert_eq!(
            p.offer_or_probe(mac(1), None, None, T0 + 2),
            Offer::Address(ip(50))
        );
        // Anyone else: the candidate is probed first, even the address it asks for.
        assert_eq!(
            p.offer_or_probe(mac(2), Some(ip(60)), None, T0),
            Offer::Probe(ip(60))
        );
        assert_eq!(p.offer(mac(2), Some(ip(60)), None, T0), None);
        p.probed(ip(60), true, T0);
        assert_eq!(
            p.offer_or_probe(mac(2), Some(ip(60)), None, T0),
            Offer::Probe(ip(6))
        );
        // An address that answered is not offered, but its holder's renewal is ACKed.
        assert_eq!(p.request(mac(3), ip(60), None, T0).unwrap().ip, ip(60));
        p.probed(ip(6), false, T0);
        assert_eq!(
            p.offer_or_probe(mac(2), None, None, T0),
            Offer::Address(ip(6))
        );
        // The probe's word lapses; the window ends.
        assert_eq!(
            p.offer_or_probe(mac(4), Some(ip(7)), None, T0 + PROBED_FREE_SECS),
            Offer::Probe(ip(7))
        );
        assert_eq!(
            p.offer_or_probe(mac(4), Some(ip(7)), None, T0 + 3600),
            Offer::Address(ip(7))
        );
    }

    #[test]
    fn a_stored_address_named_twice_goes_to_the_later_lease() {
        let lease = |m: u8, expires: u64| Lease {
            mac: mac(m),
            ip: IpAddr::V4(ip(100)),
            hostname: None,
            expires: Some(expires),
        };
        for order in [
            [lease(1, T0 + 50), lease(2, T0 + 90)],
            [lease(2, T0 + 90), lease(1, T0 + 50)],
        ] {
            let mut p = Pool::new(scope(100, 110));
            p.load(&order, T0);
            let l = p.leases();
            assert_eq!(l.len(), 1, "{l:?}");
            assert_eq!(l[0].mac, mac(2));
        }
    }

    #[test]
    fn two_clients_never_share_an_address() {
        // A small pool under a deterministic storm of every operation: at every step no
        // address is held (bound and unexpired, or offered) by two MACs.
        let mut p = Pool::new(scope(100, 105));
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut now = T0;
        let mut granted: BTreeMap<Ipv4Addr, (MacAddr, u64)> = BTreeMap::new();
        for _ in 0..20_000 {
            now += next() % 200;
            let m = mac(u8::try_from(next() % 12).unwrap());
            let want = ip(u8::try_from(95 + next() % 14).unwrap());
            match next() % 5 {
                0 | 1 => {
                    if let Some(o) = p.offer(m, Some(want), None, now)
                        && let Some((holder, until)) = granted.get(&o)
                    {
                        assert!(
                            *holder == m || *until <= now,
                            "offered {o} held by {holder}"
                        );
                    }
                }
                2 => {
                    if let Ok(g) = p.request(m, want, None, now) {
                        if let Some((holder, until)) = granted.get(&g.ip) {
                            assert!(*holder == m || *until <= now, "{} granted twice", g.ip);
                        }
                        granted.retain(|_, (h, _)| *h != m);
                        granted.insert(g.ip, (m, now + u64::from(g.lease_secs)));
                    }
                }
                3 => {
                    if p.release(m, want, now) {
                        granted.remove(&want);
                    }
                }
                _ => {
                    if p.decline(m, want, now) {
                        granted.remove(&want);
                    }
                }
            }
            let mut holders = BTreeMap::new();
            for l in p.leases() {
                if l.is_active(now) {
                    assert!(holders.insert(l.ip, l.mac).is_none());
                }
            }
        }
    }
}
