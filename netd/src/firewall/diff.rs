//! The incremental planner: the commands that turn the table netd wrote last into the
//! desired one without replacing it, so that a changed port forward costs a few commands
//! and the counters of everything else survive.
//!
//! Pure, and only sound while the kernel still holds exactly what was last written (the
//! caller checks the ruleset generation). The units of change:
//!
//! - named sets and maps: elements added and deleted (a zone's addresses, a long address
//!   list of a rule, the forwards' verdict maps); a map key that jumps elsewhere now is
//!   deleted and added again;
//! - chains: added (a new port forward's chain), or flushed and deleted;
//! - rules: a chain whose rule list differs is flushed and refilled in one go. Rules have
//!   no identity of their own but their handles, which only a listing would tell (and a
//!   listing of a table with a 100k-element set costs most of a second), so the chain is
//!   the unit. Port forwards have a chain each, so one forward is one small chain and
//!   one element of its zone's forward map.
//!
//! Anything else (a base chain's hook or policy, a set's type) returns `None`: replace
//! the table.

use std::collections::BTreeMap;

use std::borrow::Cow;

use nftables::expr::Expression;
use nftables::schema::{
    Chain, Element, FlushObject, Map, NfCmd, NfListObject, NfObject, Rule, Set,
};
use nftables::types::NfFamily;

use std::sync::Arc;

use ipnet::IpNet;

use super::expr::net;
use super::ruleset::{Networks, Ruleset};

/// What an incremental update does, for plans and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub commands: Vec<NfObject<'static>>,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_added: usize,
    pub chains_deleted: usize,
    pub chains_rewritten: Vec<String>,
    pub sets_added: usize,
    pub sets_deleted: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut n = |count: usize, what: &str| {
            if count > 0 {
                parts.push(format!("{count} {what}"));
            }
        };
        n(self.sets_added, "set(s) added");
        n(self.chains_added, "chain(s) added");
        n(self.elements_added, "set element(s) added");
        n(self.elements_deleted, "set element(s) deleted");
        n(self.chains_rewritten.len(), "chain(s) rewritten");
        n(self.chains_deleted, "chain(s) deleted");
        n(self.sets_deleted, "set(s) deleted");
        let mut s = parts.join(", ");
        if !self.chains_rewritten.is_empty() {
            s.push_str(&format!(" ({})", self.chains_rewritten.join(", ")));
        }
        s
    }
}

/// JSON is the comparison: schema values do not always survive a round trip through
/// the state file as equal values (an unset counter comes back as zero), their JSON does.
fn same<T: PartialEq + serde::Serialize>(a: &T, b: &T) -> bool {
    a == b || serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

#[derive(Default)]
struct Parts<'a> {
    sets: BTreeMap<&'a str, &'a Set<'static>>,
    /// Verdict maps (the port forwards' dispatch).
    maps: BTreeMap<&'a str, &'a Map<'static>>,
    chains: BTreeMap<&'a str, &'a Chain<'static>>,
    /// Rules by chain, in order.
    rules: BTreeMap<&'a str, Vec<&'a Rule<'static>>>,
    /// Chains in declaration order, so that new chains are added in a stable order.
    chain_order: Vec<&'a str>,
    other: bool,
}

fn parts(rs: &Ruleset) -> Parts<'_> {
    let mut p = Parts::default();
    for o in rs.objects() {
        match o {
            NfListObject::Set(s) => {
                p.sets.insert(&s.name, s);
            }
            NfListObject::Map(m) => {
                p.maps.insert(&m.name, m);
            }
            NfListObject::Chain(c) => {
                p.chains.insert(&c.name, c);
                p.chain_order.push(&c.name);
            }
            NfListObject::Rule(r) => p.rules.entry(&r.chain).or_default().push(r),
            _ => p.other = true,
        }
    }
    p
}

fn cmd(c: NfCmd<'static>) -> NfObject<'static> {
    NfObject::CmdObject(c)
}

/// A set or a map, as far as its elements are concerned.
struct Collection<'a> {
    family: NfFamily,
    table: &'a Cow<'static, str>,
    name: &'a Cow<'static, str>,
    elem: Option<&'a [Expression<'static>]>,
    is_map: bool,
}

impl<'a> From<&'a Set<'static>> for Collection<'a> {
    fn from(s: &'a Set<'static>) -> Self {
        Self {
            family: s.family,
            table: &s.table,
            name: &s.name,
            elem: s.elem.as_deref(),
            is_map: false,
        }
    }
}

impl<'a> From<&'a Map<'static>> for Collection<'a> {
    fn from(m: &'a Map<'static>) -> Self {
        Self {
            family: m.family,
            table: &m.table,
            name: &m.name,
            elem: m.elem.as_deref(),
            is_map: true,
        }
    }
}

impl Collection<'_> {
    fn element(&self, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: self.family,
            table: self.table.clone(),
            name: self.name.clone(),
            elem: elem.into(),
        })
    }

    /// Elements by key (the element itself, or a map element's key) with the element.
    fn elements<'e>(
        &self,
        elems: &'e [Expression<'static>],
    ) -> BTreeMap<String, &'e Expression<'static>> {
        elems
            .iter()
            .map(|e| {
                let key = match e {
                    Expression::List(kv) if self.is_map => kv.first().unwrap_or(e),
                    _ => e,
                };
                (serde_json::to_string(key).unwrap_or_default(), e)
            })
            .collect()
    }

    /// A map element is deleted by its key alone.
    fn key_of(&self, e: &Expression<'static>) -> Expression<'static> {
        match e {
            Expression::List(kv) if self.is_map => kv.first().unwrap_or(e).clone(),
            _ => e.clone(),
        }
    }
}

/// The element commands from `was` to `is` (same name and definition): deletions first,
/// so that a map key that now jumps elsewhere is deleted and added again.
fn element_changes(
    was: Collection<'_>,
    is: Collection<'_>,
    ch: &mut Changes,
) -> Vec<NfObject<'static>> {
    // the common case, a set nobody changed, without looking at 100k elements one by one
    if was.elem == is.elem {
        return Vec::new();
    }
    // Rendered in a stable order, so a change is usually a short window between an equal
    // head and an equal tail (one forward among 2000): only the window is compared by key.
    // Keys are unique, so a key of one window is in neither side's head or tail.
    let (a, b) = (was.elem.unwrap_or_default(), is.elem.unwrap_or_default());
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a, b) = (
        a.get(head..).unwrap_or_default(),
        b.get(head..).unwrap_or_default(),
    );
    let tail = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let a = a.get(..a.len() - tail).unwrap_or_default();
    let b = b.get(..b.len() - tail).unwrap_or_default();
    let (before, after) = (was.elements(a), is.elements(b));
    let gone: Vec<Expression<'static>> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(_, v)| was.key_of(v))
        .collect();
    let came: Vec<Expression<'static>> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(_, v)| (*v).clone())
        .collect();
    ch.elements_deleted += gone.len();
    ch.elements_added += came.len();
    let mut out = Vec::new();
    if !gone.is_empty() {
        out.push(cmd(NfCmd::Delete(is.element(gone))));
    }
    if !came.is_empty() {
        out.push(cmd(NfCmd::Add(is.element(came))));
    }
    out
}

/// The element commands between two compact address sets (sorted, disjoint networks).
fn network_changes(
    set: &Set<'static>,
    was: &Networks,
    is: &Networks,
    ch: &mut Changes,
) -> Vec<NfObject<'static>> {
    if Arc::ptr_eq(was, is) || was == is {
        return Vec::new();
    }
    let missing_from = |from: &[IpNet], n: &IpNet| from.binary_search(n).is_err();
    let gone: Vec<Expression<'static>> = was
        .iter()
        .filter(|n| missing_from(is, n))
        .map(|n| net(*n))
        .collect();
    let came: Vec<Expression<'static>> = is
        .iter()
        .filter(|n| missing_from(was, n))
        .map(|n| net(*n))
        .collect();
    ch.elements_deleted += gone.len();
    ch.elements_added += came.len();
    let c = Collection::from(set);
    let mut out = Vec::new();
    if !gone.is_empty() {
        out.push(cmd(NfCmd::Delete(c.element(gone))));
    }
    if !came.is_empty() {
        out.push(cmd(NfCmd::Add(c.element(came))));
    }
    out
}

/// A set's definition without its elements (and handle), built without copying them.
fn bare(set: &Set<'static>) -> Set<'static> {
    Set {
        family: set.family,
        table: set.table.clone(),
        name: set.name.clone(),
        handle: None,
        set_type: set.set_type.clone(),
        policy: set.policy,
        flags: set.flags.clone(),
        elem: None,
        timeout: set.timeout,
        gc_interval: set.gc_interval,
        size: set.size,
        comment: set.comment.clone(),
    }
}

fn bare_map(map: &Map<'static>) -> Map<'static> {
    Map {
        family: map.family,
        table: map.table.clone(),
        name: map.name.clone(),
        handle: None,
        set_type: map.set_type.clone(),
        map: map.map.clone(),
        policy: map.policy,
        flags: map.flags.clone(),
        elem: None,
        timeout: map.timeout,
        gc_interval: map.gc_interval,
        size: map.size,
        comment: map.comment.clone(),
    }
}

/// The commands from `old` (what the kernel holds) to `new`, or `None` when only a new
/// table will do. An empty result means the two are the same.
pub fn incremental(old: &Ruleset, new: &Ruleset) -> Option<Changes> {
    if old.objects() == new.objects() && old.address_sets() == new.address_sets() {
        return Some(Changes::default());
    }
    let (o, n) = (parts(old), parts(new));
    // a rule in an undeclared chain: let nft refuse the whole new table, with its culprit
    if o.other || n.other || n.rules.keys().any(|c| !n.chains.contains_key(c)) {
        return None;
    }
    let mut ch = Changes::default();
    let mut adds = Vec::new();
    let mut elems = Vec::new();
    let mut rewrites = Vec::new();
    let mut deletes = Vec::new();

    for (name, set) in &n.sets {
        match o.sets.get(name) {
            None => {
                let decl = NfListObject::Set(Box::new((*set).clone()));
                adds.push(cmd(NfCmd::Add(new.materialized(&decl))));
                ch.sets_added += 1;
            }
            Some(was) => {
                if !same(&bare(was), &bare(set)) {
                    return None;
                }
                let compact = (old.address_sets().get(*name), new.address_sets().get(*name));
                match compact {
                    (None, None) => {
                        elems.extend(element_changes((*was).into(), (*set).into(), &mut ch));
                    }
                    (Some(a), Some(b)) => {
                        elems.extend(network_changes(set, a, b, &mut ch));
                    }
                    // kept both ways: cannot be told apart cheaply, and never rendered so
                    _ => return None,
                }
            }
        }
    }
    for name in &n.chain_order {
        let chain = n.chains.get(name)?;
        match o.chains.get(name) {
            None => {
                adds.push(cmd(NfCmd::Add(NfListObject::Chain((*chain).clone()))));
                ch.chains_added += 1;
            }
            Some(was) if !same(*was, *chain) => return None,
            Some(_) => {}
        }
    }
    // after the chains: a new map's elements jump to them
    for (name, map) in &n.maps {
        match o.maps.get(name) {
            None => {
                adds.push(cmd(NfCmd::Add(NfListObject::Map(Box::new((*map).clone())))));
                ch.sets_added += 1;
            }
            Some(was) => {
                if !same(&bare_map(was), &bare_map(map)) {
                    return None;
                }
                elems.extend(element_changes((*was).into(), (*map).into(), &mut ch));
            }
        }
    }
    let no_rules = Vec::new();
    for name in &n.chain_order {
        let (was, is) = (
            o.rules.get(name).unwrap_or(&no_rules),
            n.rules.get(name).unwrap_or(&no_rules),
        );
        let fresh = !o.chains.contains_key(name);
        let differs = was.len() != is.len() || was.iter().zip(is).any(|(a, b)| !same(*a, *b));
        if !fresh && !differs {
            continue;
        }
        let chain = n.chains.get(name)?;
        if !fresh {
            rewrites.push(cmd(NfCmd::Flush(FlushObject::Chain((*chain).clone()))));
            ch.chains_rewritten.push((*name).to_owned());
        }
        rewrites.extend(
            is.iter()
                .map(|r| cmd(NfCmd::Add(NfListObject::Rule((*r).clone())))),
        );
    }
    // What goes, last: rules may name chains, sets and maps that go, and those rules were
    // flushed above. The chains that go are flushed first (freeing the sets their rules
    // name), then sets and maps are deleted (freeing the chains a map element jumps to),
    // then the chains.
    let gone_chains: Vec<&Chain<'static>> = o
        .chain_order
        .iter()
        .filter(|c| !n.chains.contains_key(*c))
        .filter_map(|c| o.chains.get(c).copied())
        .collect();
    for chain in &gone_chains {
        deletes.push(cmd(NfCmd::Flush(FlushObject::Chain((*chain).clone()))));
    }
    for set in o
        .sets
        .iter()
        .filter(|(k, _)| !n.sets.contains_key(*k))
        .map(|(_, s)| s)
    {
        deletes.push(cmd(NfCmd::Delete(NfListObject::Set(Box::new(bare(set))))));
        ch.sets_deleted += 1;
    }
    for map in o
        .maps
        .iter()
        .filter(|(k, _)| !n.maps.contains_key(*k))
        .map(|(_, m)| m)
    {
        deletes.push(cmd(NfCmd::Delete(NfListObject::Map(Box::new(bare_map(
            map,
        ))))));
        ch.sets_deleted += 1;
    }
    for chain in gone_chains {
        deletes.push(cmd(NfCmd::Delete(NfListObject::Chain(Chain {
            handle: None,
            ..chain.clone()
        }))));
        ch.chains_deleted += 1;
    }
    ch.commands = adds
        .into_iter()
        .chain(elems)
        .chain(rewrites)
        .chain(deletes)
        .collect();
    Some(ch)
}

#[cfg(test)]
mod tests {
    use nftables::schema::SetTypeValue;

    use super::*;
    use crate::firewall::render::tests::rich;

    #[test]
    fn the_same_ruleset_needs_no_command() {
        assert!(incremental(&rich(), &rich()).unwrap().is_empty());
    }

    fn edited(rs: &Ruleset, f: impl Fn(&mut NfListObject<'static>)) -> Ruleset {
        let mut out = Ruleset::default();
        for o in rs.objects() {
            let mut o = o.clone();
            f(&mut o);
            out.push(o);
        }
        out
    }

    #[test]
    fn a_set_of_another_type_needs_a_new_table() {
        let changed = edited(&rich(), |o| {
            if let NfListObject::Set(s) = o {
                s.set_type = SetTypeValue::Single(nftables::schema::SetType::Ipv6Addr);
            }
        });
        assert_eq!(incremental(&rich(), &changed), None);
    }

    #[test]
    fn one_changed_rule_rewrites_its_chain_only() {
        let changed = edited(&rich(), |o| {
            if let NfListObject::Rule(r) = o
                && r.comment.as_deref() == Some("zone lan output")
            {
                r.comment = Some("renamed".into());
            }
        });
        let ch = incremental(&rich(), &changed).unwrap();
        assert_eq!(ch.chains_rewritten, ["output_lan"]);
        assert_eq!(ch.summary(), "1 chain(s) rewritten (output_lan)");
        // flush, then every rule of the chain again
        let rules = changed
            .objects()
            .iter()
            .filter(|o| matches!(o, NfListObject::Rule(r) if r.chain == "output_lan"))
            .count();
        assert_eq!(ch.commands.len(), 1 + rules);
        assert!(matches!(
            ch.commands.first(),
            Some(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(c)))) if c.name == "output_lan"
        ));
    }
}
