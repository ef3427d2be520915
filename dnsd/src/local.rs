//! Names of DHCP clients: A/AAAA and PTR answers built from netd's lease file
//! ([`appliance::leases`]), swapped whole whenever the file or the set of live leases
//! changes.
//!
//! The file is watched by polling its metadata every [`POLL_INTERVAL`] rather than with
//! inotify: netd replaces it by rename, so inotify would have to watch the directory, which
//! may not exist before the first lease, and re-arm after every rename; one `stat` every
//! two seconds costs nothing, works on any filesystem, and a new client's name showing up
//! within two seconds is soon enough. Leases also run out while the file stays the same,
//! so the table is rebuilt when its earliest lease expires.
//!
//! The config's own records (and the router's name) are looked up before this table, so
//! they win over any name or address a client claims.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance::leases::{self, Lease};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::answer::{Answer, soa};

/// How often the lease file's metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// TTL of answers for lease names: short, since a client may leave or change address.
pub const LEASE_TTL: u32 = 60;

/// The DNS label for a client-supplied hostname, or `None` if it cannot be one.
///
/// Clients send anything in DHCP option 12: spaces, apostrophes, underscores, whole domain
/// names. The first dot-separated part is kept when it is a valid host label (letters,
/// digits and inner hyphens, at most 63 bytes), lowercased; anything else names nothing,
/// rather than a mangled name that some other client might also end up with.
pub fn host_label(hostname: &str) -> Option<String> {
    let label = hostname.trim().split('.').next()?;
    let valid = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    valid.then(|| label.to_ascii_lowercase())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The names of the live leases, ready for lookups.
#[derive(Debug, Default, Clone)]
pub struct LeaseZone {
    /// Lowercase FQDN → its addresses: at most one IPv4 and one IPv6 (a client with a
    /// DHCPv4 and a DHCPv6 lease under one hostname has both).
    names: HashMap<Name, Vec<IpAddr>>,
    /// Reverse name (`4.1.168.192.in-addr.arpa.`) → FQDN.
    ptrs: HashMap<Name, Name>,
    /// When the first of the leases taken runs out, in Unix seconds.
    next_expiry: Option<u64>,
}

/// Later expiry wins; a static lease (no expiry) beats any dynamic one.
fn newer(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a > b,
    }
}

impl LeaseZone {
    /// Builds the table from `leases` as of `now`: expired leases and unusable hostnames
    /// are left out, names are qualified with `domain` when there is one. When two clients
    /// claim one name, or one address appears twice, the lease that runs longest wins.
    pub fn build(leases: &[Lease], domain: Option<&str>, now: u64) -> Self {
        let domain = domain
            .map(|d| d.trim_matches('.'))
            .filter(|d| !d.is_empty());
        // One winner per name and address family: the IPv4 and the IPv6 lease of one
        // client both answer its name.
        let mut by_name: HashMap<(Name, bool), &Lease> = HashMap::new();
        for lease in leases.iter().filter(|l| l.is_active(now)) {
            let Some(label) = lease.hostname.as_deref().and_then(host_label) else {
                continue;
            };
            let fqdn = match domain {
                Some(d) => format!("{label}.{d}."),
                None => format!("{label}."),
            };
            let Ok(name) = Name::from_ascii(&fqdn) else {
                tracing::debug!(name = fqdn, "lease name is not a DNS name");
                continue;
            };
            match by_name.entry((name.to_lowercase(), lease.ip.is_ipv4())) {
                Entry::Vacant(v) => {
                    v.insert(lease);
                }
                Entry::Occupied(mut o) => {
                    if newer(lease.expires, o.get().expires) {
                        o.insert(lease);
                    }
                }
            }
        }
        let mut by_ip: HashMap<IpAddr, (&Name, &Lease)> = HashMap::new();
        for ((name, _), lease) in &by_name {
            match by_ip.entry(lease.ip) {
                Entry::Vacant(v) => {
                    v.insert((name, lease));
                }
                Entry::Occupied(mut o) => {
                    if newer(lease.expires, o.get().1.expires) {
                        o.insert((name, lease));
                    }
                }
            }
        }
        let mut zone = Self::default();
        for (ip, (name, lease)) in by_ip {
            let ips = zone.names.entry(name.clone()).or_default();
            ips.push(ip);
            // A first, then AAAA, whatever the order of the map.
            ips.sort_by_key(|ip| ip.is_ipv6());
            zone.ptrs.insert(Name::from(ip), name.clone());
            if let Some(t) = lease.expires {
                zone.next_expiry = Some(zone.next_expiry.map_or(t, |n: u64| n.min(t)));
            }
        }
        zone
    }

    /// Drops the leases whose name is one of `reserved` (the config's own names), so that
    /// a client calling itself like the router does not get the reverse name of its address.
    pub fn without(mut self, reserved: &HashSet<Name>) -> Self {
        let ptrs = &mut self.ptrs;
        self.names.retain(|name, ips| {
            let keep = !reserved.contains(name);
            if !keep {
                for ip in ips.iter() {
                    ptrs.remove(&Name::from(*ip));
                }
            }
            keep
        });
        self
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// The names answered (lowercase), reverse names included.
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.names.keys().chain(self.ptrs.keys())
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// When the table must be rebuilt because a lease in it runs out.
    pub fn next_expiry(&self) -> Option<u64> {
        self.next_expiry
    }

    /// The answer for `qname`/`qtype` if it is a client's name or address.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let key = qname.to_lowercase();
        let records: Vec<Record> = if let Some(ips) = self.names.get(&key) {
            ips.iter()
                .filter_map(|ip| match (qtype, ip) {
                    (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
                    (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => {
                        Some(RData::AAAA(AAAA(*v6)))
                    }
                    _ => None,
                })
                .map(|d| Record::from_rdata(qname.clone(), LEASE_TTL, d))
                .collect()
        } else {
            let target = self.ptrs.get(&key)?;
            matches!(qtype, RecordType::PTR | RecordType::ANY)
                .then(|| {
                    Record::from_rdata(qname.clone(), LEASE_TTL, RData::PTR(PTR(target.clone())))
                })
                .into_iter()
                .collect()
        };
        Some(if records.is_empty() {
            // The name exists with another type: NODATA, with an SOA for negative caching.
            Answer {
                rcode: ResponseCode::NoError,
                answers: Vec::new(),
                authorities: vec![soa(qname, LEASE_TTL)],
            }
        } else {
            Answer {
                rcode: ResponseCode::NoError,
                answers: records,
                authorities: Vec::new(),
            }
        })
    }
}

/// What identifies one version of the lease file: a rename gives a new inode, a rewrite in
/// place a new mtime or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.modified().ok(),
    })
}

/// Keeps a [`LeaseZone`] in step with the lease file.
#[derive(Debug)]
pub struct LeaseWatcher {
    path: PathBuf,
    domain: Option<String>,
    reserved: HashSet<Name>,
    seen: Option<Option<Stamp>>,
    next_expiry: Option<u64>,
    /// The leases of the last good read, to rename them when the domain changes without
    /// reading a file that may be damaged by then.
    leases: Vec<Lease>,
}

/// A watcher shared by its polling task and the apply, which renames the clients when
/// `system.domain` or the config's names change; one lock, so a poll never swaps in a
/// table of the old names after the apply swapped in the new ones.
pub type SharedLeaseWatcher = Arc<Mutex<LeaseWatcher>>;

impl LeaseWatcher {
    pub fn new(path: impl Into<PathBuf>, domain: Option<String>) -> Self {
        Self {
            path: path.into(),
            domain,
            reserved: HashSet::new(),
            seen: None,
            next_expiry: None,
            leases: Vec::new(),
        }
    }

    /// Takes a new domain and new reserved names (an apply); the table of the last good
    /// read under the new names, or `None` when neither changed.
    pub fn rename(
        &mut self,
        domain: Option<String>,
        reserved: impl IntoIterator<Item = Name>,
        now: u64,
    ) -> Option<LeaseZone> {
        let reserved: HashSet<Name> = reserved.into_iter().map(|n| n.to_lowercase()).collect();
        if domain == self.domain && reserved == self.reserved {
            return None;
        }
        self.domain = domain;
        self.reserved = reserved;
        Some(self.build(now))
    }

    fn build(&mut self, now: u64) -> LeaseZone {
        let zone =
            LeaseZone::build(&self.leases, self.domain.as_deref(), now).without(&self.reserved);
        self.next_expiry = zone.next_expiry();
        zone
    }

    /// Names no lease may take: the config's records and the router's own name.
    pub fn reserving(mut self, names: impl IntoIterator<Item = Name>) -> Self {
        self.reserved = names.into_iter().map(|n| n.to_lowercase()).collect();
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new table when the file changed or a lease in the current table ran out since the
    /// last call; `None` when nothing changed, or when the file cannot be read (the
    /// previous table stays: a damaged file must not make every client name vanish).
    pub fn poll(&mut self, now: u64) -> Option<LeaseZone> {
        let current = stamp(&self.path);
        let changed = self.seen != Some(current);
        let expired = self.next_expiry.is_some_and(|t| t <= now);
        if !changed && !expired {
            return None;
        }
        self.seen = Some(current);
        let leases = match leases::read(&self.path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "lease file not read; keeping the previous names");
                return None;
            }
        };
        self.leases = leases;
        Some(self.build(now))
    }

    /// Polls `watcher` forever, handing each new table to `on_change` under its lock.
    pub async fn run(watcher: SharedLeaseWatcher, on_change: impl Fn(Arc<LeaseZone>) + Send) {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            // A stat and, rarely, a read of a small file: short enough for a worker thread.
            let mut w = watcher.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(zone) = w.poll(unix_now()) {
                tracing::info!(names = zone.len(), "lease names updated");
                on_change(Arc::new(zone));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::types::MacAddr;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn lease(ip: &str, host: &str, expires: Option<u64>) -> Lease {
        Lease {
            mac: MacAddr::parse("52:54:00:12:34:56").unwrap(),
            ip: ip.parse().unwrap(),
            hostname: Some(host.to_owned()),
            expires,
        }
    }

    fn data(a: &Answer) -> Vec<String> {
        a.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::PTR(p) => format!("ptr {}", p.0),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn hostnames_become_labels_or_nothing() {
        assert_eq!(host_label("Laptop").as_deref(), Some("laptop"));
        assert_eq!(host_label(" nas-2 ").as_deref(), Some("nas-2"));
        assert_eq!(
            host_label("phone.example.com").as_deref(),
            Some("phone"),
            "a domain name given as hostname keeps its first label"
        );
        for bad in [
            "",
            "John's iPhone",
            "android_1234",
            "-lead",
            "trail-",
            "héllo",
            ".",
            &"x".repeat(64),
        ] {
            assert_eq!(host_label(bad), None, "{bad:?}");
        }
        assert!(host_label(&"x".repeat(63)).is_some());
    }

    #[test]
    fn live_leases_answer_a_and_ptr_in_the_local_domain() {
        let leases = [
            lease("192.168.1.50", "Laptop", Some(1000)),
            lease("192.168.1.51", "old", Some(100)),
            lease("192.168.1.52", "bad name", Some(1000)),
            lease("fd00::53", "v6host", None),
        ];
        let z = LeaseZone::build(&leases, Some("home.arpa"), 500);
        assert_eq!(z.len(), 2);
        let a = z.lookup(&n("LAPTOP.home.arpa."), RecordType::A).unwrap();
        assert_eq!(data(&a), ["192.168.1.50"]);
        assert_eq!(a.answers[0].name.to_ascii(), "LAPTOP.home.arpa.");
        assert_eq!(a.answers[0].ttl, LEASE_TTL);
        let p = z
            .lookup(&n("50.1.168.192.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(data(&p), ["ptr laptop.home.arpa."]);
        assert!(
            z.lookup(&n("old.home.arpa."), RecordType::A).is_none(),
            "expired"
        );
        assert!(
            z.lookup(&n("51.1.168.192.in-addr.arpa."), RecordType::PTR)
                .is_none()
        );
        assert!(
            z.lookup(&n("laptop."), RecordType::A).is_none(),
            "qualified"
        );
        let v6 = z.lookup(&n("v6host.home.arpa."), RecordType::AAAA).unwrap();
        assert_eq!(data(&v6), ["fd00::53"]);
        let nodata = z.lookup(&n("laptop.home.arpa."), RecordType::AAAA).unwrap();
        assert!(nodata.answers.is_empty());
        assert_eq!(nodata.rcode, ResponseCode::NoError);
        assert_eq!(nodata.authorities.len(), 1);
        assert_eq!(z.next_expiry(), Some(1000));
    }

    /// A client with an IPv4 and an IPv6 lease under one hostname (DHCPv4 and DHCPv6)
    /// has both addresses, and both reverse names point at its name.
    #[test]
    fn a_client_with_both_families_gets_a_and_aaaa_and_both_ptrs() {
        let leases = [
            lease("192.168.1.80", "Desk", Some(1000)),
            lease("fd00::80", "desk", Some(900)),
        ];
        let z = LeaseZone::build(&leases, Some("lan"), 0);
        assert_eq!(z.len(), 1);
        let a = z.lookup(&n("desk.lan."), RecordType::A).unwrap();
        assert_eq!(data(&a), ["192.168.1.80"]);
        let aaaa = z.lookup(&n("desk.lan."), RecordType::AAAA).unwrap();
        assert_eq!(data(&aaaa), ["fd00::80"]);
        let any = z.lookup(&n("desk.lan."), RecordType::ANY).unwrap();
        assert_eq!(data(&any), ["192.168.1.80", "fd00::80"]);
        let p4 = z
            .lookup(&n("80.1.168.192.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(data(&p4), ["ptr desk.lan."]);
        let p6 = z.lookup(
            &Name::from("fd00::80".parse::<IpAddr>().unwrap()),
            RecordType::PTR,
        );
        assert_eq!(data(&p6.unwrap()), ["ptr desk.lan."]);

        let z = z.without(&HashSet::from([n("desk.lan.")]));
        assert!(z.is_empty());
        assert!(
            z.lookup(
                &Name::from("fd00::80".parse::<IpAddr>().unwrap()),
                RecordType::PTR
            )
            .is_none()
        );
    }

    #[test]
    fn without_a_domain_names_are_bare() {
        let z = LeaseZone::build(&[lease("10.0.0.5", "tv", None)], None, 0);
        assert!(z.lookup(&n("tv."), RecordType::A).is_some());
        assert_eq!(z.next_expiry(), None);
    }

    #[test]
    fn the_longest_lease_wins_a_name_or_an_address() {
        let leases = [
            lease("192.168.1.60", "dup", Some(1000)),
            lease("192.168.1.61", "dup", Some(2000)),
            lease("192.168.1.70", "first", Some(1000)),
            lease("192.168.1.70", "second", Some(3000)),
        ];
        let z = LeaseZone::build(&leases, Some("lan"), 0);
        let a = z.lookup(&n("dup.lan."), RecordType::A).unwrap();
        assert_eq!(data(&a), ["192.168.1.61"]);
        let p = z
            .lookup(&n("70.1.168.192.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(data(&p), ["ptr second.lan."]);
        assert!(z.lookup(&n("first.lan."), RecordType::A).is_none());

        let z = z.without(&HashSet::from([n("dup.lan.")]));
        assert!(z.lookup(&n("dup.lan."), RecordType::A).is_none());
        assert!(
            z.lookup(&n("61.1.168.192.in-addr.arpa."), RecordType::PTR)
                .is_none()
        );
        assert_eq!(z.len(), 1);
    }

    #[test]
    fn the_watcher_rebuilds_on_change_and_on_expiry_and_keeps_names_on_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        let mut w = LeaseWatcher::new(&path, Some("lan".into()));
        let z = w.poll(100).expect("first poll builds, even without a file");
        assert!(z.is_empty());
        assert!(w.poll(100).is_none(), "nothing changed");

        leases::write(&path, &[lease("192.168.1.5", "a", Some(200))]).unwrap();
        assert_eq!(w.poll(100).unwrap().len(), 1);
        assert!(w.poll(150).is_none());
        assert!(w.poll(200).unwrap().is_empty(), "the lease ran out");
        assert!(w.poll(250).is_none());

        std::fs::write(&path, b"{ not json").unwrap();
        assert!(w.poll(250).is_none(), "a damaged file keeps the old table");
        leases::write(&path, &[lease("192.168.1.6", "b", None)]).unwrap();
        assert_eq!(w.poll(300).unwrap().len(), 1);

        // A new domain renames the clients of the last good read, even from a damaged file.
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(w.rename(Some("lan".into()), [], 300).is_none(), "unchanged");
        let z = w.rename(Some("home".into()), [], 300).unwrap();
        assert!(z.lookup(&n("b.home."), RecordType::A).is_some());
        assert!(z.lookup(&n("b.lan."), RecordType::A).is_none());
        let z = w.rename(Some("home".into()), [n("b.home.")], 300).unwrap();
        assert!(z.lookup(&n("b.home."), RecordType::A).is_none(), "reserved");
    }
}
