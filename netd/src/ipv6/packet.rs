//! Router solicitations and advertisements (RFC 4861 §4.1, §4.2) with the options netd
//! sends and reads: source link-layer address, MTU, prefix information and RDNSS
//! (RFC 8106). The ICMPv6 checksum is left zero: the kernel fills it for raw ICMPv6
//! sockets, and checks it on the way in.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

pub const ROUTER_SOLICIT: u8 = 133;
pub const ROUTER_ADVERT: u8 = 134;
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;

/// Why a packet was not taken; it is dropped, and logged at debug level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0} bytes is too short for ICMPv6 message type {1}")]
    Short(usize, u8),
    #[error("ICMPv6 type {0} code {1} is not a router solicitation/advertisement")]
    NotOurs(u8, u8),
    #[error("option at offset {0} has length 0 or runs past the end")]
    BadOption(usize),
    #[error("option type {kind} at offset {at} has a malformed body")]
    BadOptionBody { kind: u8, at: usize },
}

/// A prefix information option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixInfo {
    pub prefix: Ipv6Net,
    /// L: the prefix is on this link.
    pub on_link: bool,
    /// A: hosts make SLAAC addresses in it (only meaningful for a /64).
    pub autonomous: bool,
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
}

/// Recursive DNS servers (RFC 8106).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rdnss {
    pub lifetime: u32,
    pub servers: Vec<Ipv6Addr>,
}

/// A router advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouterAdvert {
    pub cur_hop_limit: u8,
    /// M: addresses by DHCPv6.
    pub managed: bool,
    /// O: other configuration by DHCPv6.
    pub other: bool,
    /// Seconds hosts may use this router as default; 0: not a default router.
    pub router_lifetime: u16,
    pub reachable_time: u32,
    pub retrans_timer: u32,
    pub source_mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub prefixes: Vec<PrefixInfo>,
    pub rdnss: Option<Rdnss>,
}

/// A router solicitation: only the sender's link-layer address is of interest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouterSolicit {
    pub source_mac: Option<[u8; 6]>,
}

impl RouterAdvert {
    /// The ICMPv6 message, checksum zero.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![ROUTER_ADVERT, 0, 0, 0, self.cur_hop_limit];
        b.push(u8::from(self.managed) << 7 | u8::from(self.other) << 6);
        b.extend(self.router_lifetime.to_be_bytes());
        b.extend(self.reachable_time.to_be_bytes());
        b.extend(self.retrans_timer.to_be_bytes());
        if let Some(mac) = self.source_mac {
            b.extend([OPT_SOURCE_LLADDR, 1]);
            b.extend(mac);
        }
        if let Some(mtu) = self.mtu {
            b.extend([OPT_MTU, 1, 0, 0]);
            b.extend(mtu.to_be_bytes());
        }
        for p in &self.prefixes {
            b.extend([OPT_PREFIX_INFO, 4, p.prefix.prefix_len()]);
            b.push(u8::from(p.on_link) << 7 | u8::from(p.autonomous) << 6);
            b.extend(p.valid_lifetime.to_be_bytes());
            b.extend(p.preferred_lifetime.to_be_bytes());
            b.extend([0; 4]);
            b.extend(p.prefix.trunc().network().octets());
        }
        if let Some(r) = self.rdnss.as_ref().filter(|r| !r.servers.is_empty()) {
            // Units of 8 octets: the 8-byte header and 16 bytes per server.
            let len = 1 + 2 * r.servers.len();
            b.extend([OPT_RDNSS, u8::try_from(len).unwrap_or(u8::MAX), 0, 0]);
            b.extend(r.lifetime.to_be_bytes());
            for s in r.servers.iter().take(127) {
                b.extend(s.octets());
            }
        }
        b
    }

    /// Reads an advertisement; unknown options are skipped, as RFC 4861 asks.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let body: [u8; 12] = header(bytes, ROUTER_ADVERT, 16)?
            .get(..12)
            .and_then(|b| b.try_into().ok())
            .ok_or(ParseError::Short(bytes.len(), ROUTER_ADVERT))?;
        let mut ra = Self {
            cur_hop_limit: body[0],
            managed: body[1] & 0x80 != 0,
            other: body[1] & 0x40 != 0,
            router_lifetime: u16::from_be_bytes([body[2], body[3]]),
            reachable_time: be32(&body[4..8]),
            retrans_timer: be32(&body[8..12]),
            ..Self::default()
        };
        for (kind, at, data) in options(bytes, 16)? {
            let bad = ParseError::BadOptionBody { kind, at };
            match kind {
                OPT_SOURCE_LLADDR => ra.source_mac = Some(mac(data).ok_or(bad)?),
                OPT_MTU => ra.mtu = Some(be32(data.get(2..6).ok_or(bad)?)),
                OPT_PREFIX_INFO => {
                    let d: [u8; 30] = data
                        .get(..30)
                        .and_then(|d| d.try_into().ok())
                        .ok_or(bad.clone())?;
                    let addr: [u8; 16] = d[14..30].try_into().map_err(|_| bad.clone())?;
                    // Bits past the prefix length are ignored (RFC 4861 §4.6.2).
                    let prefix = Ipv6Net::new(Ipv6Addr::from(addr), d[0])
                        .map_err(|_| bad)?
                        .trunc();
                    ra.prefixes.push(PrefixInfo {
                        prefix,
                        on_link: d[1] & 0x80 != 0,
                        autonomous: d[1] & 0x40 != 0,
                        valid_lifetime: be32(&d[2..6]),
                        preferred_lifetime: be32(&d[6..10]),
                    });
                }
                OPT_RDNSS => {
                    let lifetime = be32(data.get(2..6).ok_or(bad.clone())?);
                    let rest = data.get(6..).unwrap_or_default();
                    if rest.is_empty() || rest.len() % 16 != 0 {
                        return Err(bad);
                    }
                    let servers = rest
                        .chunks_exact(16)
                        .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(Ipv6Addr::from))
                        .collect();
                    ra.rdnss = Some(Rdnss { lifetime, servers });
                }
                _ => {}
            }
        }
        Ok(ra)
    }
}

impl RouterSolicit {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        if let Some(mac) = self.source_mac {
            b.extend([OPT_SOURCE_LLADDR, 1]);
            b.extend(mac);
        }
        b
    }

    /// Reads a solicitation (RFC 4861 §6.1.1: code 0, at least 8 bytes, options of non-zero
    /// length that fit). The hop limit of 255 is the socket's to check.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        header(bytes, ROUTER_SOLICIT, 8)?;
        let mut rs = Self::default();
        for (kind, at, data) in options(bytes, 8)? {
            if kind == OPT_SOURCE_LLADDR {
                rs.source_mac = Some(mac(data).ok_or(ParseError::BadOptionBody { kind, at })?);
            }
        }
        Ok(rs)
    }
}

/// Checks type, code and length; the bytes after the 4-byte ICMPv6 header.
fn header(bytes: &[u8], kind: u8, min: usize) -> Result<&[u8], ParseError> {
    match bytes {
        [t, c, ..] if (*t, *c) != (kind, 0) => Err(ParseError::NotOurs(*t, *c)),
        _ if bytes.len() < min => Err(ParseError::Short(bytes.len(), kind)),
        _ => Ok(bytes.get(4..).unwrap_or_default()),
    }
}

/// An option: its type, its offset, and the bytes after type and length.
type RawOption<'a> = (u8, usize, &'a [u8]);

/// The options after `start`.
fn options(bytes: &[u8], start: usize) -> Result<Vec<RawOption<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut at = start;
    while at < bytes.len() {
        let (Some(&kind), Some(&len)) = (bytes.get(at), bytes.get(at + 1)) else {
            return Err(ParseError::BadOption(at));
        };
        let end = at + usize::from(len) * 8;
        if len == 0 || end > bytes.len() {
            return Err(ParseError::BadOption(at));
        }
        out.push((kind, at, bytes.get(at + 2..end).unwrap_or_default()));
        at = end;
    }
    Ok(out)
}

fn be32(b: &[u8]) -> u32 {
    b.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

/// An Ethernet address option body (6 bytes; longer link layers are not Ethernet).
fn mac(data: &[u8]) -> Option<[u8; 6]> {
    data.get(..6).and_then(|m| m.try_into().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RouterAdvert {
        RouterAdvert {
            cur_hop_limit: 64,
            managed: false,
            other: false,
            router_lifetime: 1800,
            reachable_time: 0,
            retrans_timer: 0,
            source_mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            mtu: Some(1500),
            prefixes: vec![PrefixInfo {
                prefix: "2001:db8:1::/64".parse().unwrap(),
                on_link: true,
                autonomous: true,
                valid_lifetime: 86400,
                preferred_lifetime: 14400,
            }],
            rdnss: Some(Rdnss {
                lifetime: 1800,
                servers: vec!["2001:db8:1::1".parse().unwrap()],
            }),
        }
    }

    #[test]
    fn an_advertisement_has_the_rfc_layout() {
        let b = sample().encode();
        // 16 header + 8 SLLA + 8 MTU + 32 prefix + 24 RDNSS
        assert_eq!(b.len(), 88);
        assert_eq!(&b[..8], &[134, 0, 0, 0, 64, 0, 0x07, 0x08]);
        assert_eq!(&b[16..24], &[1, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(&b[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xdc]);
        assert_eq!(&b[32..36], &[3, 4, 64, 0xc0]);
        assert_eq!(&b[36..40], &86400u32.to_be_bytes());
        assert_eq!(&b[48..56], &[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0]);
        assert_eq!(&b[64..72], &[25, 3, 0, 0, 0, 0, 0x07, 0x08]);
        assert_eq!(b[87], 1);
    }

    #[test]
    fn an_advertisement_reads_back() {
        let ra = sample();
        assert_eq!(RouterAdvert::parse(&ra.encode()).unwrap(), ra);
        let bare = RouterAdvert {
            managed: true,
            other: true,
            ..RouterAdvert::default()
        };
        assert_eq!(RouterAdvert::parse(&bare.encode()).unwrap(), bare);
    }

    #[test]
    fn a_prefix_is_sent_truncated() {
        let mut ra = sample();
        ra.prefixes[0].prefix = "2001:db8:1::1/64".parse().unwrap();
        let back = RouterAdvert::parse(&ra.encode()).unwrap();
        assert_eq!(back.prefixes[0].prefix.to_string(), "2001:db8:1::/64");
    }

    #[test]
    fn solicitations_read_with_and_without_an_address() {
        let with = RouterSolicit {
            source_mac: Some([2, 0, 0, 0, 0, 9]),
        };
        assert_eq!(RouterSolicit::parse(&with.encode()).unwrap(), with);
        assert_eq!(
            RouterSolicit::parse(&[133, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            RouterSolicit::default()
        );
        // Unknown options are skipped.
        let mut b = with.encode();
        b.extend([200, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(RouterSolicit::parse(&b).unwrap(), with);
    }

    #[test]
    fn malformed_solicitations_are_refused() {
        let cases: [(&[u8], ParseError); 6] = [
            (&[], ParseError::Short(0, 133)),
            (&[133, 0, 0, 0], ParseError::Short(4, 133)),
            (&[133, 1, 0, 0, 0, 0, 0, 0], ParseError::NotOurs(133, 1)),
            (&[128, 0, 0, 0, 0, 0, 0, 0], ParseError::NotOurs(128, 0)),
            // an option of length 0 would loop forever
            (
                &[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                ParseError::BadOption(8),
            ),
            // an option that runs past the end
            (
                &[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0],
                ParseError::BadOption(8),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(RouterSolicit::parse(bytes), Err(want), "{bytes:?}");
        }
        // A truncated option header.
        assert_eq!(
            RouterSolicit::parse(&[133, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(ParseError::BadOption(8))
        );
    }

    #[test]
    fn malformed_advertisement_options_are_refused() {
        let mut b = sample().encode();
        // RDNSS of length 2: a header and half an address.
        b.truncate(64);
        b.extend([25, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            RouterAdvert::parse(&b),
            Err(ParseError::BadOptionBody { kind: 25, at: 64 })
        );
        // A prefix option of length 1.
        let mut b = sample().encode();
        b.truncate(32);
        b.extend([3, 1, 64, 0, 0, 0, 0, 0]);
        assert_eq!(
            RouterAdvert::parse(&b),
            Err(ParseError::BadOptionBody { kind: 3, at: 32 })
        );
        // A prefix length over 128.
        let mut b = sample().encode();
        b[34] = 200;
        assert_eq!(
            RouterAdvert::parse(&b),
            Err(ParseError::BadOptionBody { kind: 3, at: 32 })
        );
    }
}
