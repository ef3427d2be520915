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
//! - rules: rules have no identity of their own but their kernel handles. With the
//!   handles of a chain's rules (read by the caller from the kernel's rule dump, which
//!   skips set elements), only the rules that changed are replaced, deleted or inserted
//!   by handle, and every other rule of the chain keeps its counter. Without them (or
//!   when they do not match the record) the chain is flushed and refilled in one go.
//!   Port forwards have a chain each, so one forward is one small chain and one element
//!   of its zone's forward map.
//!
//! Anything else (a base chain's hook or policy, a set's type) returns `None`: replace
//! the table.

use std::collections::{BTreeMap, HashSet};

use std::borrow::Cow;

use nftables::expr::Expression;
use nftables::schema::{
    Chain, Element, FlushObject, Map, NfCmd, NfListObject, NfObject, Rule, Set, SetFlag,
};
use nftables::types::NfFamily;

use std::sync::Arc;

use ipnet::IpNet;

use super::expr::net;
use super::ruleset::{Networks, Ruleset};

/// The kernel's handles of a chain's rules in chain order, with each rule's comment (to
/// check that they are the rules the record says), by chain.
pub type ChainHandles = BTreeMap<String, Vec<(u64, Option<String>)>>;

/// What an incremental update does, for plans and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub commands: Vec<NfObject<'static>>,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_added: usize,
    pub chains_deleted: usize,
    /// Chains flushed and refilled: their rules' handles were not known.
    pub chains_rewritten: Vec<String>,
    /// Rules deleted by handle and inserted next to a rule that stays; the chain's other
    /// rules keep their counters.
    pub rules_inserted: usize,
    pub rules_deleted: usize,
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
        n(self.rules_inserted, "rule(s) inserted");
        n(self.rules_deleted, "rule(s) deleted");
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

/// The sets, maps and chains of `rs` whose name is in `touched`, and the rules of the
/// chains in it.
fn parts<'a>(rs: &'a Ruleset, touched: &HashSet<&str>) -> Parts<'a> {
    let keep = |name: &str| touched.contains(name);
    let mut p = Parts::default();
    for o in rs.objects() {
        match o {
            NfListObject::Set(s) if keep(&s.name) => {
                p.sets.insert(&s.name, s);
            }
            NfListObject::Map(m) if keep(&m.name) => {
                p.maps.insert(&m.name, m);
            }
            NfListObject::Chain(c) if keep(&c.name) => {
                p.chains.insert(&c.name, c);
                p.chain_order.push(&c.name);
            }
            NfListObject::Rule(r) if keep(&r.chain) => {
                p.rules.entry(&r.chain).or_default().push(r);
            }
            NfListObject::Set(_)
            | NfListObject::Map(_)
            | NfListObject::Chain(_)
            | NfListObject::Rule(_) => {}
            _ => p.other = true,
        }
    }
    p
}

/// The name an object is diffed under: a set's, map's or chain's own, a rule's chain's.
fn object_name<'a>(o: &'a NfListObject<'static>) -> Option<&'a str> {
    match o {
        NfListObject::Set(s) => Some(&s.name),
        NfListObject::Map(m) => Some(&m.name),
        NfListObject::Chain(c) => Some(&c.name),
        NfListObject::Rule(r) => Some(&r.chain),
        _ => None,
    }
}

/// How far [`touched`] looks ahead for an object again after two differ.
const RESYNC: usize = 16;

/// The names that can differ between `old` and `new`: those of the sets, maps and chains
/// (and the chains of the rules) left unmatched when the two object lists are walked side
/// by side, each object matched to an equal one in order (after a difference, the nearest
/// equal object within [`RESYNC`] places picks up the walk again), and the compact sets
/// whose elements differ. A name that is not touched has all its objects matched, equal
/// and in the same order in both, and needs no command: a one-forward change then diffs
/// a handful of objects, not the 4000 chains and rules of 2000 forwards.
fn touched<'a>(old: &'a Ruleset, new: &'a Ruleset) -> HashSet<&'a str> {
    let (a, b) = (old.objects(), new.objects());
    let mut names = HashSet::new();
    let mut mark =
        |objs: &'a [NfListObject<'static>]| names.extend(objs.iter().filter_map(object_name));
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        if x == y {
            (i, j) = (i + 1, j + 1);
            continue;
        }
        let in_b = (1..=RESYNC).find(|k| b.get(j + k) == Some(x));
        let in_a = (1..=RESYNC).find(|k| a.get(i + k) == Some(y));
        match (in_b, in_a) {
            // objects added in `new` before x
            (Some(k), l) if l.is_none_or(|l| k <= l) => {
                mark(b.get(j..j + k).unwrap_or_default());
                j += k;
            }
            // objects gone from `old` before y
            (_, Some(l)) => {
                mark(a.get(i..i + l).unwrap_or_default());
                i += l;
            }
            // changed in place
            _ => {
                mark(a.get(i..=i).unwrap_or_default());
                mark(b.get(j..=j).unwrap_or_default());
                (i, j) = (i + 1, j + 1);
            }
        }
    }
    mark(a.get(i..).unwrap_or_default());
    mark(b.get(j..).unwrap_or_default());
    let (sa, sb) = (old.address_sets(), new.address_sets());
    for (name, nets) in sa {
        if sb.get(name) != Some(nets) {
            names.insert(name);
        }
    }
    for name in sb.keys() {
        if !sa.contains_key(name) {
            names.insert(name);
        }
    }
    names
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
    decl: Decl<'a>,
}

#[derive(Clone, Copy)]
enum Decl<'a> {
    Set(&'a Set<'static>),
    Map(&'a Map<'static>),
}

impl<'a> From<&'a Set<'static>> for Collection<'a> {
    fn from(s: &'a Set<'static>) -> Self {
        Self {
            family: s.family,
            table: &s.table,
            name: &s.name,
            elem: s.elem.as_deref(),
            is_map: false,
            decl: Decl::Set(s),
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
            decl: Decl::Map(m),
        }
    }
}

impl Collection<'_> {
    /// The declaration again, carrying `elem`: nft adds the elements of an `add set` or
    /// `add map` of an existing one without filling its cache with set elements, where an
    /// element command (`add element`, `delete element`) makes nft 1.0.6 first fetch every
    /// element of every interval set of every table (1.4-2.2 s with a 100k-prefix list).
    fn declared(&self, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
        let elem = (!elem.is_empty()).then(|| elem.into());
        match self.decl {
            Decl::Set(s) => NfListObject::Set(Box::new(Set { elem, ..bare(s) })),
            Decl::Map(m) => NfListObject::Map(Box::new(Map {
                elem,
                ..bare_map(m)
            })),
        }
    }

    fn flush(&self) -> NfObject<'static> {
        cmd(NfCmd::Flush(match self.decl {
            Decl::Set(s) => FlushObject::Set(Box::new(bare(s))),
            Decl::Map(m) => FlushObject::Map(Box::new(bare_map(m))),
        }))
    }

    fn interval(&self) -> bool {
        let flags = match self.decl {
            Decl::Set(s) => s.flags.as_ref(),
            Decl::Map(m) => m.flags.as_ref(),
        };
        flags.is_some_and(|f| f.contains(&SetFlag::Interval))
    }

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
/// so that a map key that now jumps elsewhere is deleted and added again. Additions are
/// an `add` of the declaration with the new elements ([`Collection::declared`]).
/// `elements_cost`: the table holds an interval set, whose elements nft 1.0.6 would fetch
/// for a `delete element`; deletions then flush the set and add back what stays.
fn element_changes(
    was: Collection<'_>,
    is: Collection<'_>,
    elements_cost: bool,
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
    if is.interval() {
        // nft needs the elements of an interval set to add or delete ranges anyway
        if !gone.is_empty() {
            out.push(cmd(NfCmd::Delete(is.element(gone))));
        }
        if !came.is_empty() {
            out.push(cmd(NfCmd::Add(is.element(came))));
        }
    } else if !gone.is_empty() && elements_cost {
        // Without an element command: emptied and filled again in the same transaction,
        // so no packet meets the empty map. A few thousand forwards are a few ms of JSON;
        // the fetch it avoids is seconds.
        out.push(is.flush());
        let all = is.elem.unwrap_or_default().to_vec();
        if !all.is_empty() {
            out.push(cmd(NfCmd::Add(is.declared(all))));
        }
    } else {
        if !gone.is_empty() {
            out.push(cmd(NfCmd::Delete(is.element(gone))));
        }
        if !came.is_empty() {
            out.push(cmd(NfCmd::Add(is.declared(came))));
        }
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
        // a host list's additions need no fetch, a prefix list's do (nft merges ranges)
        out.push(cmd(NfCmd::Add(if c.interval() {
            c.element(came)
        } else {
            c.declared(came)
        })));
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

/// Whether the kernel's rules of a chain are the recorded ones: as many, with the same
/// comments in the same order.
fn matches_record(handles: &[(u64, Option<String>)], was: &[&Rule<'static>]) -> bool {
    handles.len() == was.len()
        && handles
            .iter()
            .zip(was)
            .all(|((h, c), r)| u32::try_from(*h).is_ok() && c.as_deref() == r.comment.as_deref())
}

/// A rule addressed by a kernel handle (the crate's handles are u32; the kernel's table
/// handles count objects and stay far below that).
fn by_handle(r: &Rule<'static>, handle: u64) -> Option<Rule<'static>> {
    Some(Rule {
        handle: Some(u32::try_from(handle).ok()?),
        index: None,
        ..r.clone()
    })
}

/// The pairs (old index, new index) of a longest common subsequence of equal rules, or
/// none when the windows are too long to compare pairwise.
fn kept(old: &[&Rule<'static>], new: &[&Rule<'static>]) -> Vec<(usize, usize)> {
    const MAX_CELLS: usize = 1 << 22;
    let (n, m) = (old.len(), new.len());
    if n.saturating_mul(m) > MAX_CELLS || n == 0 || m == 0 {
        return Vec::new();
    }
    // lcs[i * (m + 1) + j]: the longest common subsequence of old[i..] and new[j..]
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |lcs: &[u32], i: usize, j: usize| lcs.get(i * (m + 1) + j).copied().unwrap_or(0);
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let v = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) if same(*a, *b) => at(&lcs, i + 1, j + 1) + 1,
                _ => at(&lcs, i + 1, j).max(at(&lcs, i, j + 1)),
            };
            if let Some(cell) = lcs.get_mut(i * (m + 1) + j) {
                *cell = v;
            }
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n && j < m {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if same(*a, *b) => {
                out.push((i, j));
                i += 1;
                j += 1;
            }
            _ if at(&lcs, i + 1, j) >= at(&lcs, i, j + 1) => i += 1,
            _ => j += 1,
        }
    }
    out
}

/// The rule commands from `was` (whose kernel handles are `handles`) to `is`. Rules that
/// stay (the equal head and tail, and a longest common subsequence between them) are not
/// touched; in each gap between them the old rules are deleted by handle and the new ones
/// inserted before the next rule that stays (or appended). (`replace rule` would keep a
/// handle, but the `nftables` crate serializes it without its `rule` key.)
fn rule_changes(
    was: &[&Rule<'static>],
    is: &[&Rule<'static>],
    handles: &[(u64, Option<String>)],
    ch: &mut Changes,
) -> Vec<NfObject<'static>> {
    let head = was
        .iter()
        .zip(is)
        .take_while(|(a, b)| same(**a, **b))
        .count();
    let tail = was
        .get(head..)
        .unwrap_or_default()
        .iter()
        .rev()
        .zip(is.get(head..).unwrap_or_default().iter().rev())
        .take_while(|(a, b)| same(**a, **b))
        .count();
    let old = was.get(head..was.len() - tail).unwrap_or_default();
    let new = is.get(head..is.len() - tail).unwrap_or_default();
    let handle = |i: usize| handles.get(head + i).map(|(h, _)| *h);
    let mut anchors = kept(old, new);
    anchors.push((old.len(), new.len()));
    let mut out = Vec::new();
    let (mut po, mut pn) = (0, 0);
    for (ao, an) in anchors {
        for i in po..ao {
            let gone = old.get(i).zip(handle(i)).and_then(|(r, h)| {
                let bare = Rule {
                    expr: Cow::Owned(Vec::new()),
                    comment: None,
                    ..(*r).clone()
                };
                by_handle(&bare, h)
            });
            if let Some(r) = gone {
                out.push(cmd(NfCmd::Delete(NfListObject::Rule(r))));
                ch.rules_deleted += 1;
            }
        }
        // before the rule that stays next: this gap's anchor, else the tail's first
        let next = if ao < old.len() {
            handle(ao)
        } else if tail > 0 {
            handle(old.len())
        } else {
            None
        };
        for r in new.get(pn..an).unwrap_or_default() {
            let c = match next.and_then(|h| by_handle(r, h)) {
                Some(r) => NfCmd::Insert(NfListObject::Rule(r)),
                None => NfCmd::Add(NfListObject::Rule((*r).clone())),
            };
            out.push(cmd(c));
            ch.rules_inserted += 1;
        }
        (po, pn) = (ao + 1, an + 1);
    }
    out
}

/// The commands from `old` (what the kernel holds) to `new`, or `None` when only a new
/// table will do. An empty result means the two are the same.
///
/// `handles` holds the kernel's handles of the rules of some chains of `old`; a chain
/// whose rules differ is changed rule by rule when its handles are there and match, and
/// flushed and refilled otherwise.
pub fn incremental(old: &Ruleset, new: &Ruleset, handles: &ChainHandles) -> Option<Changes> {
    if old.objects() == new.objects() && old.address_sets() == new.address_sets() {
        return Some(Changes::default());
    }
    diff(old, new, handles, &touched(old, new))
}

/// [`incremental`] over the objects whose name is in `touched`.
fn diff(
    old: &Ruleset,
    new: &Ruleset,
    handles: &ChainHandles,
    touched: &HashSet<&str>,
) -> Option<Changes> {
    let (o, n) = (parts(old, touched), parts(new, touched));
    // a rule in an undeclared chain: let nft refuse the whole new table, with its culprit
    if o.other || n.other || n.rules.keys().any(|c| !n.chains.contains_key(c)) {
        return None;
    }
    // over every set of the table, touched or not
    let elements_cost = old.objects().iter().any(|x| match x {
        NfListObject::Set(s) => Collection::from(&**s).interval(),
        _ => false,
    });
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
                        elems.extend(element_changes(
                            (*was).into(),
                            (*set).into(),
                            elements_cost,
                            &mut ch,
                        ));
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
                elems.extend(element_changes(
                    (*was).into(),
                    (*map).into(),
                    elements_cost,
                    &mut ch,
                ));
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
            if let Some(h) = handles.get(*name).filter(|h| matches_record(h, was)) {
                rewrites.extend(rule_changes(was, is, h, &mut ch));
                continue;
            }
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
        assert!(
            incremental(&rich(), &rich(), &ChainHandles::new())
                .unwrap()
                .is_empty()
        );
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
        assert_eq!(incremental(&rich(), &changed, &ChainHandles::new()), None);
    }

    /// Every name of both rulesets: [`diff`] over the whole of them.
    fn all_names<'a>(a: &'a Ruleset, b: &'a Ruleset) -> HashSet<&'a str> {
        let mut names = HashSet::new();
        for rs in [a, b] {
            names.extend(rs.objects().iter().filter_map(object_name));
            names.extend(rs.address_sets().keys().map(String::as_str));
        }
        names
    }

    #[test]
    fn the_matched_walk_plans_what_the_whole_diff_plans() {
        use crate::firewall::render::render;
        let cfg = |forwards: &[u16], blocked: &[&str], extra_rule: bool| {
            let mut s = String::from(
                "version = 1\n[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\n\
                 [interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"10.1.0.1/16\"]\n\
                 [firewall.zones.wan]\ninterfaces = [\"wan\"]\nmasquerade = true\n\
                 [firewall.zones.lan]\ninterfaces = [\"lan\"]\n",
            );
            let long: Vec<String> = (0..300)
                .map(|i| format!("\"100.64.{}.{}/32\"", i / 200, i % 200))
                .chain(blocked.iter().map(|b| format!("\"{b}\"")))
                .collect();
            s.push_str(&format!(
                "[[firewall.rules]]\nname = \"block\"\nfrom = \"wan\"\naction = \"drop\"\nsource = [{}]\n",
                long.join(", ")
            ));
            if extra_rule {
                s.push_str("[[firewall.rules]]\nname = \"ssh\"\nfrom = \"lan\"\nprotocol = \"tcp\"\nports = [22]\naction = \"accept\"\n");
            }
            for p in forwards {
                s.push_str(&format!(
                    "[firewall.forwards.f{p}]\nprotocol = \"tcp\"\nport = {p}\nto = \"10.1.0.{}\"\nto_port = 80\n",
                    p % 200 + 2
                ));
            }
            render(&appliance::load_str(&s).unwrap())
        };
        let base = cfg(&[2000, 2001, 2002, 2003], &[], false);
        let variants = [
            cfg(&[2000, 2001, 2002, 2003, 2004], &[], false),
            cfg(&[2000, 2002, 2003], &[], false),
            cfg(&[1999, 2000, 2001, 2002, 2003], &[], false),
            cfg(&[2000, 2001, 2002, 2003], &["198.51.100.7/32"], false),
            cfg(&[2000, 2001, 2002, 2003], &[], true),
            cfg(&[2001, 2003], &["198.51.100.0/24"], true),
            cfg(&[], &[], false),
        ];
        let mut in_place = 0;
        for v in &variants {
            for (a, b) in [(&base, v), (v, &base)] {
                let whole = diff(a, b, &ChainHandles::new(), &all_names(a, b));
                assert_eq!(incremental(a, b, &ChainHandles::new()), whole);
                in_place += usize::from(whole.is_some_and(|c| !c.is_empty()));
            }
        }
        // a set that becomes an interval set needs a new table; the rest change in place
        assert!(in_place >= 12, "{in_place}");
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
        let ch = incremental(&rich(), &changed, &ChainHandles::new()).unwrap();
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
