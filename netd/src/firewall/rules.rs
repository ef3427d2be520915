//! The rules of netd's table as the kernel holds them (`NFT_MSG_GETRULE`, one nfnetlink
//! dump): chain, handle, comment and counter of each rule, in chain order.
//!
//! nft has no way to list rules without fetching every set element first (`nft -j list
//! chain` of a table with a 100k-address set takes as long as listing the table, about
//! 0.4 s), and `nft --echo --handle` of a write that holds that set fails with ENOBUFS.
//! The kernel's rule dump holds no set elements: it is what a rule change needs (the
//! handles of the rules it replaces) and what a metrics scrape needs (the counters).

use std::io::Read as _;

use socket2::{Domain, Protocol, Socket, Type};

use super::TABLE;
use super::genid::in_netns;

const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFPROTO_INET: u8 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// libnftnl's user data type for a rule's comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const ENOENT: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RuleDumpError {
    #[error("cannot enter network namespace {netns:?} to read the firewall's rules: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error("nfnetlink socket for the firewall's rules: {0} (is nf_tables available?)")]
    Io(#[from] std::io::Error),
    #[error("the kernel refused the rule dump (NFT_MSG_GETRULE): errno {0}")]
    Refused(i32),
    #[error("the kernel's rule dump was interrupted by a ruleset change; try again")]
    Interrupted,
    #[error("the kernel's rule dump does not parse")]
    Malformed,
}

/// One rule of the table as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    /// Packets and bytes of the rule's counters, summed; `None` without a counter.
    pub counter: Option<(u64, u64)>,
}

/// The rules of `inet appliance` (of one chain with `chain`) in the named namespace or
/// this one. A table or chain that does not exist is an empty list (the kernel filters
/// the dump) or, should the kernel answer ENOENT, `None`.
pub fn dump(
    netns: Option<&str>,
    chain: Option<&str>,
) -> Result<Option<Vec<KernelRule>>, RuleDumpError> {
    in_netns(netns, || query(chain)).map_err(|source| RuleDumpError::Netns {
        netns: netns.unwrap_or_default().to_owned(),
        source,
    })?
}

fn query(chain: Option<&str>) -> Result<Option<Vec<KernelRule>>, RuleDumpError> {
    let sock = Socket::new(
        Domain::from(AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(NETLINK_NETFILTER)),
    )?;
    sock.send(&request(chain))?;
    // the kernel fills each read with as many messages as fit (up to 32 KiB by default)
    let mut buf = vec![0u8; 256 * 1024];
    let mut rules = Vec::new();
    loop {
        let n = (&sock).read(&mut buf)?;
        match parse(buf.get(..n).ok_or(RuleDumpError::Malformed)?, &mut rules) {
            Ok(false) => {}
            Ok(true) => return Ok(Some(rules)),
            Err(RuleDumpError::Refused(ENOENT)) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn attr(m: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    m.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(m.len() + (4 - len % 4) % 4, 0);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn request(chain: Option<&str>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0u32.to_ne_bytes()); // length, below
    m.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
    attr(&mut m, NFTA_RULE_TABLE, &cstr(TABLE));
    if let Some(c) = chain {
        attr(&mut m, NFTA_RULE_CHAIN, &cstr(c));
    }
    let len = u32::try_from(m.len()).unwrap_or(u32::MAX).to_ne_bytes();
    m.splice(0..4, len);
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// The netlink attributes of `b`: (type without its flags, payload).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let kind = u16_at(b, at + 2)? & 0x3fff;
        let payload = b.get(at + 4..at + len)?;
        at += (len + 3) & !3;
        Some((kind, payload))
    })
}

fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(b.get(..end).unwrap_or_default()).into_owned()
}

/// libnftnl's user data: (type u8, length u8, value) records.
fn comment(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(string(value));
        }
        udata = rest.get(usize::from(*len)..)?;
    }
    None
}

fn counter(exprs: &[u8]) -> Option<(u64, u64)> {
    let mut sum: Option<(u64, u64)> = None;
    for (_, expr) in attrs(exprs).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
        let mut name = String::new();
        let mut data: &[u8] = &[];
        for (k, v) in attrs(expr) {
            match k {
                NFTA_EXPR_NAME => name = string(v),
                NFTA_EXPR_DATA => data = v,
                _ => {}
            }
        }
        if name != "counter" {
            continue;
        }
        let (mut packets, mut bytes) = (0, 0);
        for (k, v) in attrs(data) {
            match k {
                NFTA_COUNTER_PACKETS => packets = be64(v).unwrap_or(0),
                NFTA_COUNTER_BYTES => bytes = be64(v).unwrap_or(0),
                _ => {}
            }
        }
        let s = sum.get_or_insert((0, 0));
        s.0 += packets;
        s.1 += bytes;
    }
    sum
}

/// One read's worth of messages into `rules`; true once the dump is done.
fn parse(mut b: &[u8], rules: &mut Vec<KernelRule>) -> Result<bool, RuleDumpError> {
    while !b.is_empty() {
        let len = b
            .get(..4)
            .and_then(|l| l.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or(RuleDumpError::Malformed)? as usize;
        let kind = u16_at(b, 4).ok_or(RuleDumpError::Malformed)?;
        let flags = u16_at(b, 6).ok_or(RuleDumpError::Malformed)?;
        if len < NLMSG_HDRLEN {
            return Err(RuleDumpError::Malformed);
        }
        let msg = b.get(..len).ok_or(RuleDumpError::Malformed)?;
        b = b.get((len + 3) & !3..).unwrap_or_default();
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(RuleDumpError::Interrupted);
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = msg
                    .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                    .and_then(|e| e.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or(RuleDumpError::Malformed)?;
                if errno == 0 {
                    return Ok(true);
                }
                return Err(RuleDumpError::Refused(-errno));
            }
            k if k == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE => {
                let body = msg
                    .get(NLMSG_HDRLEN + NFGENMSG_LEN..)
                    .ok_or(RuleDumpError::Malformed)?;
                let mut rule = KernelRule {
                    chain: String::new(),
                    handle: 0,
                    comment: None,
                    counter: None,
                };
                for (k, v) in attrs(body) {
                    match k {
                        NFTA_RULE_CHAIN => rule.chain = string(v),
                        NFTA_RULE_HANDLE => {
                            rule.handle = be64(v).ok_or(RuleDumpError::Malformed)?;
                        }
                        NFTA_RULE_EXPRESSIONS => rule.counter = counter(v),
                        NFTA_RULE_USERDATA => rule.comment = comment(v),
                        _ => {}
                    }
                }
                if rule.chain.is_empty() || rule.handle == 0 {
                    return Err(RuleDumpError::Malformed);
                }
                rules.push(rule);
            }
            // NLMSG_NOOP and the like
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut inner = Vec::new();
        parts.iter().for_each(|p| inner.extend_from_slice(p));
        let mut m = Vec::new();
        attr(&mut m, kind | 0x8000, &inner);
        m
    }

    fn plain(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        attr(&mut m, kind, v);
        m
    }

    fn message(kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let len = u32::try_from(NLMSG_HDRLEN + body.len()).unwrap();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(body);
        m
    }

    fn newrule(
        chain: &str,
        handle: u64,
        comment: Option<&str>,
        counters: &[(u64, u64)],
    ) -> Vec<u8> {
        let mut body = vec![NFPROTO_INET, 0, 0, 0];
        body.extend(plain(NFTA_RULE_TABLE, &cstr(TABLE)));
        body.extend(plain(NFTA_RULE_CHAIN, &cstr(chain)));
        body.extend(plain(NFTA_RULE_HANDLE, &handle.to_be_bytes()));
        let mut exprs = vec![nested(
            NFTA_LIST_ELEM,
            &[plain(NFTA_EXPR_NAME, &cstr("meta"))],
        )];
        for (p, b) in counters {
            exprs.push(nested(
                NFTA_LIST_ELEM,
                &[
                    plain(NFTA_EXPR_NAME, &cstr("counter")),
                    nested(
                        NFTA_EXPR_DATA,
                        &[
                            plain(NFTA_COUNTER_BYTES, &b.to_be_bytes()),
                            plain(NFTA_COUNTER_PACKETS, &p.to_be_bytes()),
                        ],
                    ),
                ],
            ));
        }
        body.extend(nested(NFTA_RULE_EXPRESSIONS, &exprs));
        if let Some(c) = comment {
            let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, u8::try_from(c.len() + 1).unwrap()];
            udata.extend(cstr(c));
            body.extend(plain(NFTA_RULE_USERDATA, &udata));
        }
        message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE, 2, &body)
    }

    #[test]
    fn parses_rules_with_comments_and_counters_until_done() {
        let mut read = newrule("input_wan", 7, Some("wan-ping"), &[(3, 252)]);
        read.extend(newrule("input_wan", 9, None, &[]));
        read.extend(newrule("forward", 12, Some("two"), &[(1, 10), (2, 20)]));
        let mut rules = Vec::new();
        assert!(!parse(&read, &mut rules).unwrap());
        assert!(parse(&message(NLMSG_DONE, 2, &[0; 4]), &mut rules).unwrap());
        assert_eq!(
            rules,
            [
                KernelRule {
                    chain: "input_wan".into(),
                    handle: 7,
                    comment: Some("wan-ping".into()),
                    counter: Some((3, 252)),
                },
                KernelRule {
                    chain: "input_wan".into(),
                    handle: 9,
                    comment: None,
                    counter: None,
                },
                KernelRule {
                    chain: "forward".into(),
                    handle: 12,
                    comment: Some("two".into()),
                    counter: Some((3, 30)),
                },
            ]
        );
    }

    #[test]
    fn errors_an_interrupted_dump_and_garbage() {
        let mut rules = Vec::new();
        let mut err = (-ENOENT).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0; 16]);
        assert!(matches!(
            parse(&message(NLMSG_ERROR, 0, &err), &mut rules),
            Err(RuleDumpError::Refused(ENOENT))
        ));
        let intr = newrule("c", 1, None, &[]);
        let mut intr = intr.clone();
        intr.splice(6..8, (2 | NLM_F_DUMP_INTR).to_ne_bytes());
        assert!(matches!(
            parse(&intr, &mut rules),
            Err(RuleDumpError::Interrupted)
        ));
        assert!(matches!(
            parse(&[1, 2, 3], &mut rules),
            Err(RuleDumpError::Malformed)
        ));
    }

    #[test]
    fn request_names_the_table_and_the_chain() {
        let r = request(Some("input_wan"));
        assert_eq!(u16_at(&r, 4), Some(0x0a07));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(r.len() % 4, 0);
        let attrs: Vec<_> = attrs(&r[NLMSG_HDRLEN + NFGENMSG_LEN..]).collect();
        assert_eq!(
            attrs,
            [
                (NFTA_RULE_TABLE, cstr(TABLE).as_slice()),
                (NFTA_RULE_CHAIN, cstr("input_wan").as_slice())
            ]
        );
    }
}
