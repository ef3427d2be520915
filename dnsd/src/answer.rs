//! Answers dnsd makes up itself: blocked names and local names. Pure functions from a
//! question to the records of a response, so the server only has to send them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use appliance::model::{BlockMode, Config};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of blocked answers: short, so that an unblocked name works again soon on clients
/// that cache, yet long enough to spare dnsd the repeats of chatty trackers.
pub const BLOCK_TTL: u32 = 60;

/// Alias chains in local records longer than this are cut, so a loop cannot hang a query.
const MAX_CNAME_CHAIN: usize = 8;

/// The records of a made-up response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA of negative answers, so that clients cache them (RFC 2308).
    pub authorities: Vec<Record>,
}

impl Answer {
    fn records(answers: Vec<Record>) -> Self {
        Self {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
        }
    }

    fn negative(rcode: ResponseCode, zone: &Name, ttl: u32) -> Self {
        Self {
            rcode,
            answers: Vec::new(),
            authorities: vec![soa(zone, ttl)],
        }
    }
}

/// An SOA for names dnsd answers itself; its minimum is the negative-caching TTL.
pub fn soa(zone: &Name, ttl: u32) -> Record {
    let name = |s: &str| Name::from_ascii(s).unwrap_or_else(|_| Name::root());
    Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(
            name("dnsd.invalid."),
            name("hostmaster.dnsd.invalid."),
            1,
            3600,
            600,
            86400,
            ttl,
        )),
    )
}

fn address_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, data)
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_))
    )
}

/// The answer for a blocked `qname`.
pub fn blocked(qname: &Name, qtype: RecordType, mode: BlockMode, custom: &[IpAddr]) -> Answer {
    let null = [
        IpAddr::from([0u8, 0, 0, 0]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let addresses: &[IpAddr] = match mode {
        BlockMode::Nxdomain => return Answer::negative(ResponseCode::NXDomain, qname, BLOCK_TTL),
        BlockMode::Nodata => return Answer::negative(ResponseCode::NoError, qname, BLOCK_TTL),
        BlockMode::Null => &null,
        // Validation requires addresses for custom; if there are none, null is the
        // harmless fallback.
        BlockMode::Custom if custom.is_empty() => &null,
        BlockMode::Custom => custom,
    };
    let answers: Vec<Record> = addresses
        .iter()
        .filter(|ip| wants(qtype, ip))
        .map(|ip| address_record(qname, BLOCK_TTL, *ip))
        .collect();
    if answers.is_empty() {
        Answer::negative(ResponseCode::NoError, qname, BLOCK_TTL)
    } else {
        Answer::records(answers)
    }
}

/// Names served from the config: `dns.records`, their PTRs, and the router's own name.
#[derive(Debug, Default, Clone)]
pub struct LocalZone {
    /// Keyed by lowercase name; `Name` compares without case, lowercase keeps it cheap.
    names: HashMap<Name, Vec<Record>>,
    /// The names that are the router's own rather than `dns.records`' (a record of the
    /// same name wins), so that `/check` can say which answers a name.
    own: HashSet<Name>,
}

/// What in the config answers a local name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalSource {
    Record,
    RouterName,
}

impl LocalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::RouterName => "router name",
        }
    }
}

impl LocalZone {
    pub fn from_config(cfg: &Config) -> Self {
        let mut zone = Self::default();
        for r in &cfg.dns.records {
            let Ok(name) = fqdn(r.name.as_str()) else {
                tracing::warn!(
                    name = r.name.as_str(),
                    "local record name is not a DNS name"
                );
                continue;
            };
            let ttl = u32::try_from(r.ttl.as_secs()).unwrap_or(u32::MAX);
            if let Some(target) = &r.cname {
                match fqdn(target.as_str()) {
                    Ok(t) => zone.add(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::CNAME(CNAME(t)),
                    )),
                    Err(_) => {
                        tracing::warn!(target = target.as_str(), "alias target is not a DNS name")
                    }
                }
            }
            for ip in &r.addresses {
                zone.add_host(&name, ttl, *ip);
            }
        }
        let records: HashSet<Name> = zone.names.keys().cloned().collect();
        let own = format!(
            "{}.{}",
            cfg.system.hostname.as_str(),
            cfg.system.domain.as_str()
        );
        match fqdn(&own) {
            Ok(name) => {
                for ip in lan_addresses(cfg) {
                    zone.add_host(&name, 300, ip);
                }
            }
            Err(_) => tracing::warn!(name = own, "the router's own name is not a DNS name"),
        }
        // The bare hostname too, as a client without a search domain asks it; never sent
        // upstream, where it would leak and come back NXDOMAIN. Its PTR stays the full name.
        if let Ok(bare) = fqdn(cfg.system.hostname.as_str()) {
            for ip in lan_addresses(cfg) {
                zone.add(address_record(&bare, 300, ip));
            }
        }
        zone.own = zone
            .names
            .keys()
            .filter(|n| !records.contains(*n))
            .cloned()
            .collect();
        zone
    }

    /// Which part of the config answers `qname`, if any; answered as [`Self::lookup`] does.
    pub fn source(&self, qname: &Name) -> Option<LocalSource> {
        let name = qname.to_lowercase();
        if !self.names.contains_key(&name) {
            None
        } else if self.own.contains(&name) {
            Some(LocalSource::RouterName)
        } else {
            Some(LocalSource::Record)
        }
    }

    fn add(&mut self, record: Record) {
        let records = self.names.entry(record.name.to_lowercase()).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }

    fn add_host(&mut self, name: &Name, ttl: u32, ip: IpAddr) {
        self.add(address_record(name, ttl, ip));
        self.add(Record::from_rdata(
            Name::from(ip),
            ttl,
            RData::PTR(PTR(name.clone())),
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names served (lowercase), reverse names included.
    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.names.keys()
    }

    /// The answer for `qname`/`qtype` if the name is local; `None` sends it on.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let mut name = qname.to_lowercase();
        let records = self.names.get(&name)?;
        let mut answers = Vec::new();
        let mut current = records;
        for _ in 0..MAX_CNAME_CHAIN {
            let matching: Vec<Record> = current
                .iter()
                .filter(|r| r.record_type() == qtype || qtype == RecordType::ANY)
                .map(|r| answer_record(r, qname, &name))
                .collect();
            if !matching.is_empty() {
                answers.extend(matching);
                break;
            }
            let alias = current.iter().find_map(|r| match &r.data {
                RData::CNAME(CNAME(t)) => Some((r, t.to_lowercase())),
                _ => None,
            });
            let Some((cname, target)) = alias else {
                break;
            };
            answers.push(answer_record(cname, qname, &name));
            match self.names.get(&target) {
                Some(next) => {
                    current = next;
                    name = target;
                }
                // The target is elsewhere: the client resolves it with a new query.
                None => break,
            }
        }
        if answers.is_empty() {
            let ttl = records.iter().map(|r| r.ttl).min().unwrap_or(BLOCK_TTL);
            Some(Answer::negative(ResponseCode::NoError, qname, ttl))
        } else {
            Some(Answer::records(answers))
        }
    }
}

/// Records are stored under lowercase names; answers carry the case the client asked in.
fn answer_record(r: &Record, qname: &Name, stored_as: &Name) -> Record {
    let mut r = r.clone();
    if r.name == *stored_as && *stored_as == *qname {
        r.name = qname.clone();
    }
    r
}

fn fqdn(s: &str) -> Result<Name, hickory_proto::ProtoError> {
    let mut n = Name::from_ascii(s)?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

/// The router's addresses on its LAN side: the static addresses of every interface, VLAN
/// and bridge outside the masquerading (WAN) zones.
pub fn lan_addresses(cfg: &Config) -> Vec<IpAddr> {
    let wan: Vec<&str> = cfg
        .firewall
        .zones
        .values()
        .filter(|z| z.masquerade)
        .flat_map(|z| z.interfaces.iter().map(|i| i.as_str()))
        .collect();
    let links = cfg
        .interfaces
        .iter()
        .map(|(n, i)| (n.as_str(), &i.addresses))
        .chain(cfg.vlans.iter().map(|(n, v)| (n.as_str(), &v.addresses)))
        .chain(cfg.bridges.iter().map(|(n, b)| (n.as_str(), &b.addresses)));
    let mut out = Vec::new();
    for (name, addresses) in links {
        if wan.contains(&name) {
            continue;
        }
        for a in addresses {
            if !out.contains(&a.addr()) {
                out.push(a.addr());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn ips(a: &Answer) -> Vec<String> {
        a.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::CNAME(c) => format!("cname {}", c.0),
                RData::PTR(p) => format!("ptr {}", p.0),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn is_nodata(a: &Answer) -> bool {
        a.rcode == ResponseCode::NoError
            && a.answers.is_empty()
            && matches!(a.authorities.as_slice(), [r] if r.record_type() == RecordType::SOA)
    }

    #[test]
    fn null_mode_answers_unspecified_addresses_and_nodata_otherwise() {
        let q = n("ads.example.");
        let a = blocked(&q, RecordType::A, BlockMode::Null, &[]);
        assert_eq!(ips(&a), ["0.0.0.0"]);
        assert_eq!(a.answers[0].ttl, BLOCK_TTL);
        assert_eq!(a.answers[0].name, q);
        assert_eq!(
            ips(&blocked(&q, RecordType::AAAA, BlockMode::Null, &[])),
            ["::"]
        );
        assert!(is_nodata(&blocked(
            &q,
            RecordType::MX,
            BlockMode::Null,
            &[]
        )));
    }

    #[test]
    fn nxdomain_and_nodata_carry_an_soa_for_negative_caching() {
        let q = n("ads.example.");
        let a = blocked(&q, RecordType::A, BlockMode::Nxdomain, &[]);
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert!(a.answers.is_empty());
        match &a.authorities[0].data {
            RData::SOA(s) => assert_eq!(s.minimum, BLOCK_TTL),
            other => panic!("{other:?}"),
        }
        assert!(is_nodata(&blocked(
            &q,
            RecordType::A,
            BlockMode::Nodata,
            &[]
        )));
    }

    #[test]
    fn custom_mode_answers_by_family() {
        let q = n("ads.example.");
        let custom: Vec<IpAddr> = vec!["192.168.1.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        assert_eq!(
            ips(&blocked(&q, RecordType::A, BlockMode::Custom, &custom)),
            ["192.168.1.2"]
        );
        assert_eq!(
            ips(&blocked(&q, RecordType::AAAA, BlockMode::Custom, &custom)),
            ["fd00::2"]
        );
        let v4only: Vec<IpAddr> = vec!["192.168.1.2".parse().unwrap()];
        assert!(is_nodata(&blocked(
            &q,
            RecordType::AAAA,
            BlockMode::Custom,
            &v4only
        )));
    }

    const CFG: &str = r#"
version = 1
[system]
hostname = "gw"
domain = "home.arpa"
[interfaces.wan]
device = "eth0"
addresses = ["203.0.113.2/24"]
[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "fd00::1/64"]
[vlans.iot]
parent = "lan"
id = 20
addresses = ["192.168.20.1/24"]
[firewall.zones.wan]
interfaces = ["wan"]
masquerade = true
[firewall.zones.lan]
interfaces = ["lan", "iot"]
[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5", "fd00::5"]
ttl = "10m"
[[dns.records]]
name = "files.home.arpa"
cname = "nas.home.arpa"
[[dns.records]]
name = "web.home.arpa"
cname = "www.example.org"
"#;

    fn zone() -> LocalZone {
        LocalZone::from_config(&appliance::load_str(CFG).unwrap())
    }

    #[test]
    fn local_records_with_ptr() {
        let z = zone();
        let a = z.lookup(&n("NAS.home.arpa."), RecordType::A).unwrap();
        assert_eq!(ips(&a), ["192.168.1.5"]);
        assert_eq!(a.answers[0].ttl, 600);
        assert_eq!(a.answers[0].name.to_ascii(), "NAS.home.arpa.");
        assert_eq!(
            ips(&z.lookup(&n("nas.home.arpa."), RecordType::AAAA).unwrap()),
            ["fd00::5"]
        );
        assert!(is_nodata(
            &z.lookup(&n("nas.home.arpa."), RecordType::MX).unwrap()
        ));
        let ptr = z
            .lookup(&n("5.1.168.192.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(ips(&ptr), ["ptr nas.home.arpa."]);
        assert!(z.lookup(&n("other.home.arpa."), RecordType::A).is_none());
    }

    #[test]
    fn aliases_are_followed_locally_and_left_to_the_client_otherwise() {
        let z = zone();
        let a = z.lookup(&n("files.home.arpa."), RecordType::A).unwrap();
        assert_eq!(ips(&a), ["cname nas.home.arpa.", "192.168.1.5"]);
        let a = z.lookup(&n("web.home.arpa."), RecordType::A).unwrap();
        assert_eq!(ips(&a), ["cname www.example.org."]);
        let a = z.lookup(&n("files.home.arpa."), RecordType::CNAME).unwrap();
        assert_eq!(ips(&a), ["cname nas.home.arpa."]);
    }

    #[test]
    fn alias_loops_end() {
        let cfg = r#"
version = 1
[[dns.records]]
name = "a.lan"
cname = "b.lan"
[[dns.records]]
name = "b.lan"
cname = "a.lan"
"#;
        let z = LocalZone::from_config(&appliance::load_str(cfg).unwrap());
        let a = z.lookup(&n("a.lan."), RecordType::A).unwrap();
        assert_eq!(a.answers.len(), MAX_CNAME_CHAIN);
    }

    #[test]
    fn the_routers_own_name_maps_to_its_lan_addresses() {
        let z = zone();
        let a = z.lookup(&n("gw.home.arpa."), RecordType::A).unwrap();
        assert_eq!(ips(&a), ["192.168.1.1", "192.168.20.1"]);
        let a = z.lookup(&n("gw.home.arpa."), RecordType::AAAA).unwrap();
        assert_eq!(ips(&a), ["fd00::1"]);
        let ptr = z
            .lookup(&n("1.20.168.192.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(ips(&ptr), ["ptr gw.home.arpa."]);
        assert!(
            z.lookup(&n("2.113.0.203.in-addr.arpa."), RecordType::PTR)
                .is_none(),
            "WAN addresses are not the router's LAN name"
        );
        // The bare hostname is answered here too, and the PTR stays the full name.
        let a = z.lookup(&n("GW."), RecordType::A).unwrap();
        assert_eq!(ips(&a), ["192.168.1.1", "192.168.20.1"]);
        let ptr = z
            .lookup(&n("1.1.168.192.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(ips(&ptr), ["ptr gw.home.arpa."]);
    }
}
