//! The conflict probe (RFC 2131 4.4.1): an ICMP echo to an address before it is offered,
//! as ISC dhcpd and dnsmasq do. Used while the lease table is unknown (see
//! [`super::pool`]): a host that answers holds the address though no lease says so.
//!
//! A raw ICMP socket (CAP_NET_RAW, which netd has) bound to the served link: the
//! unprivileged ICMP datagram socket depends on `net.ipv4.ping_group_range`. Blocking, with
//! a deadline: the server runs it on tokio's blocking pool so that no link waits for it.
//! A host that drops echo requests (a firewall) looks free: the probe lowers the risk of a
//! duplicate address, it cannot rule one out; the client's own ARP check and DECLINE remain.

use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// How long to wait for an echo reply. Clients retransmit a DISCOVER after 1-4 s.
pub const TIMEOUT: Duration = Duration::from_millis(500);

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// Whether a host answers an ICMP echo at `ip` out of `link` within `timeout`.
pub fn answers(link: &str, ip: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    static SEQ: AtomicU16 = AtomicU16::new(0);
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    if !link.is_empty() {
        s.bind_device(Some(link.as_bytes()))?;
    }
    // The raw socket sees every echo reply of the host: ours carry this id and sequence.
    #[allow(clippy::cast_possible_truncation)]
    let id = std::process::id() as u16;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut packet = [0u8; 16];
    packet[0] = ECHO_REQUEST;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&seq.to_be_bytes());
    packet[8..].copy_from_slice(b"netdDHCP");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    s.send_to(&packet, &SocketAddrV4::new(ip, 0).into())?;

    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        s.set_read_timeout(Some(left))?;
        let n = match (&s).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if is_our_reply(buf.get(..n).unwrap_or_default(), ip, id, seq) {
            return Ok(true);
        }
    }
}

/// Whether `datagram` (IPv4 header and ICMP, as a raw socket reads them) is the echo
/// reply from `from` to the request `id`/`seq`.
fn is_our_reply(datagram: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some(&first) = datagram.first() else {
        return false;
    };
    let header = usize::from(first & 0x0f) * 4;
    let src = datagram
        .get(12..16)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(Ipv4Addr::from);
    let Some(icmp) = datagram.get(header..) else {
        return false;
    };
    src == Some(from)
        && icmp.first() == Some(&ECHO_REPLY)
        && icmp.get(4..6) == Some(&id.to_be_bytes())
        && icmp.get(6..8) == Some(&seq.to_be_bytes())
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| {
            let hi = c.first().copied().unwrap_or(0);
            u32::from(u16::from_be_bytes([hi, c.get(1).copied().unwrap_or(0)]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[allow(clippy::cast_possible_truncation)]
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc_1071() {
        // The example of RFC 1071 section 3: the sum is ddf2, the checksum its complement.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        let mut p = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
    }

    #[test]
    fn only_our_echo_reply_counts() {
        let ip = Ipv4Addr::new(192, 168, 1, 7);
        let mut d = vec![
            0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 192, 168, 1, 7, 192, 168, 1, 1,
        ];
        d.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 5]);
        assert!(is_our_reply(&d, ip, 0x1234, 5));
        assert!(!is_our_reply(&d, ip, 0x1234, 6), "another probe's");
        assert!(!is_our_reply(&d, Ipv4Addr::new(192, 168, 1, 8), 0x1234, 5));
        d[20] = ECHO_REQUEST;
        assert!(!is_our_reply(&d, ip, 0x1234, 5), "not a reply");
        assert!(!is_our_reply(&d[..22], ip, 0x1234, 5));
        assert!(!is_our_reply(&[], ip, 0x1234, 5));
    }

    /// Needs root (a raw socket), as netd has; fails without.
    #[test]
    fn the_host_itself_answers_on_loopback() {
        assert!(
            answers("lo", Ipv4Addr::LOCALHOST, Duration::from_secs(2))
                .expect("a raw ICMP socket needs root (CAP_NET_RAW)")
        );
    }
}
