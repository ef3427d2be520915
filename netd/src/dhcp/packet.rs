//! One DHCP message in, at most one reply out, against a [`Pool`]; no I/O.
//!
//! Messages are decoded and encoded with `dhcproto` (RFC 2131/2132 option types, fuzzed
//! upstream) rather than by hand; smoltcp's DHCP wire types are client-oriented and lack
//! most server options.

use std::net::Ipv4Addr;

use dhcproto::v4::{
    DhcpOption, DhcpOptions, Flags, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable as _, Decoder, Encodable as _, Encoder};

use super::pool::Offer;
use super::{Pool, mac_from_chaddr, sanitize_hostname};

/// Where a reply goes (RFC 2131 4.1; relays are not served).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68, out of the link the request came in on: the client has no
    /// address yet (or is being NAKed).
    Broadcast,
    /// The client's configured address (`ciaddr`), port 68.
    Unicast(Ipv4Addr),
}

/// A reply to send, and whether the lease table changed (the lease file must be written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Option<(Message, Destination)>,
    pub changed: bool,
    /// The reply ACKs a new binding: send it only once the lease file holds it, so that a
    /// crash cannot forget an address the client was told it has.
    pub durable: bool,
    /// No reply yet: the table is unknown and this address must be probed first; report
    /// the result with [`Pool::probed`] and handle the request again.
    pub probe: Option<Ipv4Addr>,
}

impl Reply {
    fn none(changed: bool) -> Self {
        Self {
            message: None,
            changed,
            durable: false,
            probe: None,
        }
    }
}

/// Decodes a datagram; `None` (logged at debug) for anything that is not a DHCP request.
pub fn decode(bytes: &[u8]) -> Option<Message> {
    match Message::decode(&mut Decoder::new(bytes)) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::debug!(error = %e, len = bytes.len(), "undecodable DHCP datagram dropped");
            None
        }
    }
}

/// Encodes a reply, padded to the 300 bytes that BOOTP-era clients expect.
pub fn encode(m: &Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut buf = Vec::with_capacity(576);
    m.encode(&mut Encoder::new(&mut buf))?;
    if buf.len() < dhcproto::v4::MIN_PACKET_SIZE {
        buf.resize(dhcproto::v4::MIN_PACKET_SIZE, 0);
    }
    Ok(buf)
}

/// Answers one request at time `now` (seconds since the Unix epoch).
pub fn handle(pool: &mut Pool, req: &Message, now: u64) -> Reply {
    if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth || req.hlen() != 6 {
        return Reply::none(false);
    }
    if !req.giaddr().is_unspecified() {
        tracing::debug!(giaddr = %req.giaddr(), "relayed DHCP request ignored: relays are not served");
        return Reply::none(false);
    }
    let Some(mac) = mac_from_chaddr(req.chaddr()) else {
        return Reply::none(false);
    };
    let opts = req.opts();
    let Some(kind) = opts.msg_type() else {
        return Reply::none(false); // BOOTP
    };
    let server = pool.scope().server;
    let requested = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(a)) => Some(*a),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => sanitize_hostname(h),
        _ => None,
    };
    let link = &pool.scope().link;
    tracing::debug!(%link, %mac, ?kind, ?requested, ciaddr = %req.ciaddr(), "DHCP request");
    match kind {
        MessageType::Discover => match pool.offer_or_probe(mac, requested, hostname, now) {
            Offer::Address(ip) => {
                let lease = pool.scope().lease_secs;
                reply(pool, req, MessageType::Offer, ip, Some(lease), false)
            }
            Offer::Probe(ip) => Reply {
                probe: Some(ip),
                ..Reply::none(false)
            },
            Offer::Nothing => Reply::none(false),
        },
        MessageType::Request => {
            if server_id.is_some_and(|s| s != server) {
                // The client took another server's offer: our held offer lapses by itself.
                return Reply::none(false);
            }
            let ip = requested.unwrap_or(req.ciaddr());
            if ip.is_unspecified() {
                return Reply::none(false);
            }
            match pool.request(mac, ip, hostname, now) {
                Ok(g) => {
                    tracing::info!(link = %pool.scope().link, %mac, ip = %g.ip, "DHCPACK");
                    let mut r = reply(pool, req, MessageType::Ack, g.ip, Some(g.lease_secs), true);
                    r.durable = g.new;
                    r
                }
                Err(why) => {
                    tracing::info!(link = %pool.scope().link, %mac, %ip, "DHCPNAK: {why}");
                    nak(pool, req, &why.to_string())
                }
            }
        }
        MessageType::Release if server_id.is_none_or(|s| s == server) => {
            Reply::none(pool.release(mac, req.ciaddr(), now))
        }
        MessageType::Decline if server_id.is_none_or(|s| s == server) => match requested {
            Some(ip) => Reply::none(pool.decline(mac, ip, now)),
            None => Reply::none(false),
        },
        MessageType::Inform if !req.ciaddr().is_unspecified() => {
            // Configuration only: no address, no lease time (RFC 2131 3.4).
            reply(
                pool,
                req,
                MessageType::Ack,
                Ipv4Addr::UNSPECIFIED,
                None,
                false,
            )
        }
        _ => Reply::none(false),
    }
}

fn base(pool: &Pool, req: &Message, kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(req.chaddr().get(..6).unwrap_or_default());
    let mut opts = DhcpOptions::new();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(pool.scope().server));
    m.set_opts(opts);
    m
}

fn reply(
    pool: &Pool,
    req: &Message,
    kind: MessageType,
    yiaddr: Ipv4Addr,
    lease: Option<u32>,
    changed: bool,
) -> Reply {
    let s = pool.scope();
    let mut m = base(pool, req, kind);
    m.set_yiaddr(yiaddr).set_ciaddr(req.ciaddr());
    let o = m.opts_mut();
    if let Some(secs) = lease {
        o.insert(DhcpOption::AddressLeaseTime(secs));
        o.insert(DhcpOption::Renewal(secs / 2));
        o.insert(DhcpOption::Rebinding(
            u32::try_from(u64::from(secs) * 7 / 8).unwrap_or(u32::MAX),
        ));
    }
    o.insert(DhcpOption::SubnetMask(s.subnet.netmask()));
    o.insert(DhcpOption::BroadcastAddr(s.subnet.broadcast()));
    if !s.routers.is_empty() {
        o.insert(DhcpOption::Router(s.routers.clone()));
    }
    if !s.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(s.dns.clone()));
    }
    if let Some(d) = &s.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    let to = if req.ciaddr().is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Unicast(req.ciaddr())
    };
    Reply {
        message: Some((m, to)),
        ..Reply::none(changed)
    }
}

fn nak(pool: &Pool, req: &Message, why: &str) -> Reply {
    let mut m = base(pool, req, MessageType::Nak);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::Message(why.to_owned()));
    Reply {
        message: Some((m, Destination::Broadcast)),
        ..Reply::none(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{Scope, Static};
    use appliance::types::{IfName, MacAddr};

    const NOW: u64 = 1_800_000_000;
    const CHADDR: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    fn pool() -> Pool {
        Pool::new(Scope {
            link: IfName::parse("lan").unwrap(),
            server: Ipv4Addr::new(192, 168, 1, 1),
            subnet: "192.168.1.0/24".parse().unwrap(),
            start: Ipv4Addr::new(192, 168, 1, 100),
            end: Ipv4Addr::new(192, 168, 1, 200),
            lease_secs: 7200,
            routers: vec![Ipv4Addr::new(192, 168, 1, 254)],
            dns: vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(9, 9, 9, 9)],
            domain: Some("home.arpa".into()),
            statics: vec![Static {
                mac: MacAddr::parse("52:54:00:00:00:99").unwrap(),
                ip: Ipv4Addr::new(192, 168, 1, 9),
                hostname: None,
            }],
        })
    }

    fn request(kind: MessageType, opts: Vec<DhcpOption>, ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            0x1234_5678,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &CHADDR,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        // Through the wire format, as the server sees it.
        decode(&encode(&m).unwrap()).unwrap()
    }

    fn answer(p: &mut Pool, m: &Message) -> (Message, Destination, bool) {
        let r = handle(p, m, NOW);
        let (msg, to) = r.message.unwrap();
        let msg = decode(&encode(&msg).unwrap()).unwrap();
        (msg, to, r.changed)
    }

    fn opt(m: &Message, c: OptionCode) -> DhcpOption {
        m.opts().get(c).unwrap().clone()
    }

    #[test]
    fn discover_request_ack_with_every_option() {
        let mut p = pool();
        let none = Ipv4Addr::UNSPECIFIED;
        let (offer, to, changed) = answer(
            &mut p,
            &request(
                MessageType::Discover,
                vec![DhcpOption::Hostname("Kitchen Pi".into())],
                none,
            ),
        );
        assert_eq!((to, changed), (Destination::Broadcast, false));
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234_5678);
        assert_eq!(offer.chaddr(), CHADDR);
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(192, 168, 1, 100));

        let (ack, _, changed) = answer(
            &mut p,
            &request(
                MessageType::Request,
                vec![
                    DhcpOption::RequestedIpAddress(ip),
                    DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 1, 1)),
                ],
                none,
            ),
        );
        assert!(changed);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), ip);
        let s = Ipv4Addr::new(192, 168, 1, 1);
        assert_eq!(
            opt(&ack, OptionCode::ServerIdentifier),
            DhcpOption::ServerIdentifier(s)
        );
        assert_eq!(
            opt(&ack, OptionCode::AddressLeaseTime),
            DhcpOption::AddressLeaseTime(7200)
        );
        assert_eq!(opt(&ack, OptionCode::Renewal), DhcpOption::Renewal(3600));
        assert_eq!(
            opt(&ack, OptionCode::Rebinding),
            DhcpOption::Rebinding(6300)
        );
        assert_eq!(
            opt(&ack, OptionCode::SubnetMask),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(
            opt(&ack, OptionCode::Router),
            DhcpOption::Router(vec![Ipv4Addr::new(192, 168, 1, 254)])
        );
        assert_eq!(
            opt(&ack, OptionCode::DomainNameServer),
            DhcpOption::DomainNameServer(vec![s, Ipv4Addr::new(9, 9, 9, 9)])
        );
        assert_eq!(
            opt(&ack, OptionCode::DomainName),
            DhcpOption::DomainName("home.arpa".into())
        );
        assert_eq!(p.leases()[0].hostname.as_deref(), Some("kitchen-pi"));
    }

    #[test]
    fn renewing_is_unicast_and_keeps_the_address() {
        let mut p = pool();
        let ip = Ipv4Addr::new(192, 168, 1, 150);
        let (ack, _, _) = answer(
            &mut p,
            &request(
                MessageType::Request,
                vec![DhcpOption::RequestedIpAddress(ip)],
                Ipv4Addr::UNSPECIFIED,
            ),
        );
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack), "init-reboot");
        let (ack, to, _) = answer(&mut p, &request(MessageType::Request, vec![], ip));
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!((ack.yiaddr(), to), (ip, Destination::Unicast(ip)));
    }

    #[test]
    fn wrong_requests_get_a_broadcast_nak() {
        let mut p = pool();
        let (nak, to, changed) = answer(
            &mut p,
            &request(
                MessageType::Request,
                vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 1, 1, 1))],
                Ipv4Addr::UNSPECIFIED,
            ),
        );
        assert_eq!((to, changed), (Destination::Broadcast, false));
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(nak.flags().broadcast());
        assert!(nak.opts().get(OptionCode::AddressLeaseTime).is_none());
    }

    #[test]
    fn a_request_for_another_server_is_ignored() {
        let mut p = pool();
        let r = handle(
            &mut p,
            &request(
                MessageType::Request,
                vec![
                    DhcpOption::RequestedIpAddress(Ipv4Addr::new(192, 168, 1, 100)),
                    DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 1, 2)),
                ],
                Ipv4Addr::UNSPECIFIED,
            ),
            NOW,
        );
        assert_eq!(r, Reply::none(false));
        assert!(p.leases().is_empty());
    }

    #[test]
    fn release_decline_and_inform() {
        let mut p = pool();
        let ip = Ipv4Addr::new(192, 168, 1, 100);
        let req = request(
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(ip)],
            Ipv4Addr::UNSPECIFIED,
        );
        answer(&mut p, &req);
        let (ack, to, changed) = answer(&mut p, &request(MessageType::Inform, vec![], ip));
        assert_eq!((to, changed), (Destination::Unicast(ip), false));
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.opts().get(OptionCode::Router).is_some());

        let r = handle(&mut p, &request(MessageType::Release, vec![], ip), NOW + 1);
        assert_eq!(r, Reply::none(true));
        assert_eq!(p.leases()[0].expires, Some(NOW + 1));

        answer(&mut p, &req);
        let r = handle(
            &mut p,
            &request(
                MessageType::Decline,
                vec![DhcpOption::RequestedIpAddress(ip)],
                Ipv4Addr::UNSPECIFIED,
            ),
            NOW,
        );
        assert_eq!(r, Reply::none(true));
        let (offer, _, _) = answer(
            &mut p,
            &request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED),
        );
        assert_ne!(offer.yiaddr(), ip, "quarantined");
    }

    #[test]
    fn garbage_and_bootp_get_no_answer() {
        let mut p = pool();
        assert!(decode(&[1, 2, 3]).is_none());
        let mut m = request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED);
        m.opts_mut().remove(OptionCode::MessageType);
        assert_eq!(handle(&mut p, &m, NOW), Reply::none(false));
        let mut relayed = request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED);
        relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(handle(&mut p, &relayed, NOW), Reply::none(false));
        let mut reply = request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED);
        reply.set_opcode(Opcode::BootReply);
        assert_eq!(handle(&mut p, &reply, NOW), Reply::none(false));
    }

    #[test]
    fn replies_are_at_least_300_bytes() {
        let mut p = pool();
        let r = handle(
            &mut p,
            &request(MessageType::Discover, vec![], Ipv4Addr::UNSPECIFIED),
            NOW,
        );
        let (m, _) = r.message.unwrap();
        assert!(encode(&m).unwrap().len() >= 300);
    }
}
