//! The nftables ruleset generation id (`NFT_MSG_GETGEN`), read over nfnetlink.
//!
//! The kernel bumps the id of a network namespace with every committed nftables
//! transaction, whoever sends it. Comparing it with the id netd saw right after its own
//! last write tells, in one small netlink round trip, whether the table can still be
//! what netd wrote; `nft list` would fetch every set element to answer the same.

use std::fs::File;
use std::io::Read as _;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum GenIdError {
    #[error("cannot enter network namespace {netns:?} to read the nftables generation: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error("nfnetlink socket for the nftables generation: {0} (is nf_tables available?)")]
    Io(#[from] std::io::Error),
    #[error("the kernel refused NFT_MSG_GETGEN: errno {0}")]
    Refused(i32),
    #[error("the kernel's answer to NFT_MSG_GETGEN has no generation id")]
    Malformed,
}

/// Reads the generation id of this process's network namespace, or of the named one.
pub fn read(netns: Option<&str>) -> Result<u32, GenIdError> {
    in_netns(netns, query).map_err(|source| GenIdError::Netns {
        netns: netns.unwrap_or_default().to_owned(),
        source,
    })?
}

/// Runs `f` in this process's network namespace, or on a thread of its own inside the
/// named one (`/run/netns/<name>`, as `ip netns` makes them): a netlink socket stays in
/// the namespace it was made in, the process does not move. The error is entering it.
pub(crate) fn in_netns<T: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    let Some(name) = netns else {
        return Ok(f());
    };
    let file = File::open(format!("/run/netns/{name}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

fn query() -> Result<u32, GenIdError> {
    let sock = Socket::new(
        Domain::from(AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(NETLINK_NETFILTER)),
    )?;
    sock.send(&request())?;
    let mut buf = vec![0u8; 8192];
    let n = (&sock).read(&mut buf)?;
    parse(buf.get(..n).ok_or(GenIdError::Malformed)?)
}

fn request() -> Vec<u8> {
    let len = (NLMSG_HDRLEN + NFGENMSG_LEN) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0
    m.extend_from_slice(&[0, 0, 0, 0]);
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<[u8; 4]> {
    b.get(at..at + 4)?.try_into().ok()
}

/// The first message of the answer: NEWGEN with its NFTA_GEN_ID (big endian), or an error.
fn parse(msg: &[u8]) -> Result<u32, GenIdError> {
    let len = u32_at(msg, 0)
        .map(u32::from_ne_bytes)
        .ok_or(GenIdError::Malformed)? as usize;
    let kind = u16_at(msg, 4).ok_or(GenIdError::Malformed)?;
    let msg = msg.get(..len).ok_or(GenIdError::Malformed)?;
    if kind == NLMSG_ERROR {
        let errno = u32_at(msg, NLMSG_HDRLEN)
            .map(i32::from_ne_bytes)
            .ok_or(GenIdError::Malformed)?;
        return Err(GenIdError::Refused(-errno));
    }
    if kind != NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN {
        return Err(GenIdError::Malformed);
    }
    let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
    while let (Some(alen), Some(atype)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
        let alen = usize::from(alen);
        if alen < 4 {
            break;
        }
        // the top bits are the nested and byte-order flags
        if atype & 0x3fff == NFTA_GEN_ID {
            return u32_at(msg, at + 4)
                .map(u32::from_be_bytes)
                .ok_or(GenIdError::Malformed);
        }
        at += (alen + 3) & !3;
    }
    Err(GenIdError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newgen(id: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 0, 0]);
        // NFTA_GEN_PROC_PID first, to check that attributes are walked
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&77u32.to_be_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        m.extend_from_slice(&id.to_be_bytes());
        m
    }

    #[test]
    fn parses_the_generation_and_errors() {
        assert_eq!(parse(&newgen(0x0102_0304)).unwrap(), 0x0102_0304);
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-1i32).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        assert!(matches!(parse(&err), Err(GenIdError::Refused(1))));
        assert!(matches!(parse(&[1, 2, 3]), Err(GenIdError::Malformed)));
        assert!(matches!(
            parse(&newgen(1)[..28]),
            Err(GenIdError::Malformed)
        ));
    }

    #[test]
    fn request_is_a_getgen_of_twenty_bytes() {
        let r = request();
        assert_eq!(r.len(), 20);
        assert_eq!(u16_at(&r, 4), Some(0x0a10));
    }
}
