//! Small builders over the `nftables` crate's schema types, so that the renderer reads like
//! the nft rules it produces.

use std::borrow::Cow;

use appliance::model::Verdict;
use appliance::types::{Cidr, PortRange};
use ipnet::IpNet;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem,
    Verdict as VerdictExpr,
};
use nftables::stmt::{
    Accept, AnonymousCounter, Counter, Drop, JumpTarget, Log, Match, Operator, Reject, RejectType,
    Statement, VerdictMap,
};
use nftables::types::RejectCode;

pub type Expr = Expression<'static>;
pub type Stmt = Statement<'static>;

pub fn s(v: impl Into<Cow<'static, str>>) -> Expr {
    Expression::String(v.into())
}

pub fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

pub fn ct(key: &'static str) -> Expr {
    Expression::Named(NamedExpression::CT(nftables::expr::CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

pub fn matches(left: Expr, right: Expr) -> Stmt {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

/// Bit-flag match (`ct state established,related`): true when any listed flag is set.
pub fn has_flags(left: Expr, flags: &[&'static str]) -> Stmt {
    Statement::Match(Match {
        left,
        right: Expression::List(flags.iter().map(|f| s(*f)).collect()),
        op: Operator::IN,
    })
}

/// One value as itself, several as an anonymous set.
pub fn one_or_set(mut items: Vec<Expr>) -> Expr {
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

pub fn names<'a>(items: impl IntoIterator<Item = &'a str>) -> Expr {
    one_or_set(items.into_iter().map(|i| s(i.to_owned())).collect())
}

pub fn port(p: &PortRange) -> Expr {
    let (a, b) = (u32::from(p.first.get()), u32::from(p.last.get()));
    if a == b {
        Expression::Number(a)
    } else {
        Expression::Range(Box::new(Range {
            range: [Expression::Number(a), Expression::Number(b)],
        }))
    }
}

pub fn ports(ps: &[PortRange]) -> Expr {
    one_or_set(ps.iter().map(port).collect())
}

/// A network as nft writes it: the bare address for a host, else address/prefix with the
/// host bits cleared (nft refuses a prefix with host bits set).
pub fn network(c: &Cidr) -> Expr {
    net(c.network())
}

/// [`network`] of a network whose host bits are already clear.
pub fn net(n: IpNet) -> Expr {
    if n.prefix_len() == n.max_prefix_len() {
        s(n.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(n.addr().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

pub fn networks(cs: &[&Cidr]) -> Expr {
    one_or_set(cs.iter().map(|c| network(c)).collect())
}

pub fn counter() -> Stmt {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

pub fn accept() -> Stmt {
    Statement::Accept(None::<Accept>)
}

pub fn drop_() -> Stmt {
    Statement::Drop(None::<Drop>)
}

pub fn tcp_reset() -> Stmt {
    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)))
}

/// ICMP(v6) port unreachable, whichever family the packet has.
pub fn reject_icmpx() -> Stmt {
    Statement::Reject(Some(Reject::new(
        Some(RejectType::ICMPX),
        Some(RejectCode::PortUnreach),
    )))
}

/// The verdict statement; `tcp` says the rule only matches TCP, where a reset is the
/// polite way to refuse.
pub fn verdict(v: Verdict, tcp: bool) -> Stmt {
    match v {
        Verdict::Accept => accept(),
        Verdict::Drop => drop_(),
        Verdict::Reject if tcp => tcp_reset(),
        Verdict::Reject => reject_icmpx(),
    }
}

pub fn log(prefix: String) -> Stmt {
    let mut l = Log::new(None);
    l.prefix = Some(prefix.into());
    Statement::Log(Some(l))
}

/// `jump <chain>` as the data of a verdict map element.
pub fn jump(chain: String) -> Expr {
    Expression::Verdict(VerdictExpr::Jump(JumpTarget {
        target: chain.into(),
    }))
}

/// `<key> vmap { name : jump chain, ... }`.
pub fn jump_map(key: MetaKey, targets: Vec<(String, String)>) -> Stmt {
    Statement::VerdictMap(VerdictMap {
        key: meta(key),
        data: Expression::Named(NamedExpression::Set(
            targets
                .into_iter()
                .map(|(k, chain)| {
                    SetItem::Mapping(
                        s(k),
                        Expression::Verdict(VerdictExpr::Jump(JumpTarget {
                            target: chain.into(),
                        })),
                    )
                })
                .collect(),
        )),
    })
}
