//! The rendered table and the batches that put it into the kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::IpNet;

use nftables::schema::{
    FlushObject, NfCmd, NfListObject, NfObject, Nftables, Set, SetType, SetTypeValue, Table,
};
use nftables::types::NfFamily;

use super::TABLE;
use super::expr::{Expr, net, s};

/// A large named address set's elements (a rule's long source or destination list), kept
/// as networks, sorted and disjoint, rather than as schema expressions: rendering,
/// comparing, copying and recording 100k expressions would cost more than the one-forward
/// change the table is there for. They become expressions only in the batches that write
/// them.
pub type Networks = Arc<Vec<IpNet>>;

/// The whole desired content of `inet appliance`: chains, sets and rules in the order
/// they must be added (chains and sets before the rules that refer to them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    objects: Vec<NfListObject<'static>>,
    /// Elements of the named sets declared in `objects` without them, by set name.
    address_sets: BTreeMap<String, Networks>,
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

/// Name of the set that holds a zone's own IPv4 addresses (`wan_addr4`).
pub fn zone_set_name(zone: &str) -> String {
    format!("{zone}_addr4")
}

fn addr_elems(addrs: &[Ipv4Addr]) -> Vec<Expr> {
    let mut sorted = addrs.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted.into_iter().map(|a| s(a.to_string())).collect()
}

impl Ruleset {
    pub fn objects(&self) -> &[NfListObject<'static>] {
        &self.objects
    }

    /// The elements of the large named address sets, by set name (their declarations in
    /// [`Ruleset::objects`] carry none).
    pub fn address_sets(&self) -> &BTreeMap<String, Networks> {
        &self.address_sets
    }

    /// Declares a named set whose elements are `nets` (sorted, disjoint), kept compact.
    pub(crate) fn push_address_set(&mut self, set: Set<'static>, nets: Networks) {
        self.address_sets.insert(set.name.to_string(), nets);
        self.objects
            .push(NfListObject::Set(Box::new(Set { elem: None, ..set })));
    }

    /// Re-attaches recorded elements to their declarations (the state file keeps them
    /// apart).
    pub(crate) fn with_address_sets(mut self, sets: BTreeMap<String, Networks>) -> Self {
        self.address_sets = sets;
        self
    }

    /// An object as nft must get it: a compact set with its elements.
    pub(crate) fn materialized(&self, o: &NfListObject<'static>) -> NfListObject<'static> {
        match o {
            NfListObject::Set(set) => match self.address_sets.get(&*set.name) {
                Some(nets) => {
                    let elems: Vec<Expr> = nets.iter().map(|n| net(*n)).collect();
                    NfListObject::Set(Box::new(Set {
                        elem: (!elems.is_empty()).then(|| elems.into()),
                        ..(**set).clone()
                    }))
                }
                None => o.clone(),
            },
            _ => o.clone(),
        }
    }

    /// The objects with every set's elements in place, as the kernel will hold them.
    pub fn materialized_objects(&self) -> Vec<NfListObject<'static>> {
        self.objects.iter().map(|o| self.materialized(o)).collect()
    }

    /// Appends an object as is. The renderer orders its own objects; this is for callers
    /// that extend a rendered ruleset (and for tests that need a broken one).
    pub fn push(&mut self, obj: NfListObject<'static>) {
        self.objects.push(obj);
    }

    /// The transaction that replaces the table: `add table` (a no-op when it exists) then
    /// `delete table` makes the delete succeed whether or not the table was there, and the
    /// second `add table` with its content builds the new one. nft commits the whole batch
    /// or nothing, so packets never see a half-built table.
    pub fn batch(&self) -> Nftables<'static> {
        let mut objects = vec![
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
        ];
        objects.extend(
            self.objects
                .iter()
                .map(|o| NfObject::CmdObject(NfCmd::Add(self.materialized(o)))),
        );
        Nftables {
            objects: objects.into(),
        }
    }

    /// The batch as the JSON that `nft -j -f -` reads.
    pub fn to_json(&self) -> String {
        json(&self.batch())
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.batch()).unwrap_or_default()
    }

    /// Whether `self` with the learned zone addresses filled in would equal `applied`,
    /// without building that copy: a ruleset with a 100k-element set costs milliseconds to
    /// clone, and a no-op apply is this comparison and nothing else.
    pub fn equals_with_zone_addresses(
        &self,
        applied: &Ruleset,
        zones: &std::collections::BTreeMap<String, Vec<Ipv4Addr>>,
    ) -> bool {
        if self.objects.len() != applied.objects.len() || self.address_sets != applied.address_sets
        {
            return false;
        }
        let learned: std::collections::BTreeMap<String, &[Ipv4Addr]> = zones
            .iter()
            .map(|(z, a)| (zone_set_name(z), a.as_slice()))
            .collect();
        self.objects
            .iter()
            .zip(&applied.objects)
            .all(|(mine, theirs)| match (mine, theirs) {
                (NfListObject::Set(m), NfListObject::Set(t)) if learned.contains_key(&*m.name) => {
                    let elems = learned
                        .get(&*m.name)
                        .map(|a| addr_elems(a))
                        .unwrap_or_default();
                    let patched = Set {
                        elem: None,
                        ..(**m).clone()
                    };
                    let theirs_bare = Set {
                        elem: None,
                        ..(**t).clone()
                    };
                    patched == theirs_bare
                        && t.elem.as_deref().unwrap_or_default() == elems.as_slice()
                }
                _ => mine == theirs,
            })
    }

    pub fn has_zone_set(&self, zone: &str) -> bool {
        let name = zone_set_name(zone);
        self.objects
            .iter()
            .any(|o| matches!(o, NfListObject::Set(s) if s.name == name))
    }

    /// Replaces the elements of a zone's address set in this ruleset, so that the desired
    /// state matches what [`set_zone_addresses`] put into the kernel. Returns false when the
    /// zone has no such set.
    pub fn set_zone_addresses(&mut self, zone: &str, addrs: &[Ipv4Addr]) -> bool {
        let name = zone_set_name(zone);
        for obj in &mut self.objects {
            if let NfListObject::Set(set) = obj
                && set.name == name
            {
                let elems = addr_elems(addrs);
                set.elem = (!elems.is_empty()).then(|| elems.into());
                return true;
            }
        }
        false
    }
}

/// The data type that stands for `verdict` in a map declaration. The `nftables` crate's
/// `SetType` has no `verdict`, and the port-forward maps need one; netd never makes a map
/// of marks, so `mark` is free to mean it inside netd (the record, the fake) and is turned
/// into `verdict` in the JSON that reaches nft ([`json`]), and back when a listing is read.
pub const VERDICT_PLACEHOLDER: SetType = SetType::Mark;
const PLACEHOLDER_JSON: &str = r#""map":"mark""#;
const VERDICT_JSON: &str = r#""map":"verdict""#;

/// Serializing schema types cannot fail: they hold no maps with non-string keys.
pub(crate) fn json(n: &Nftables<'_>) -> String {
    let text = serde_json::to_string(n).unwrap_or_default();
    // Only a map declaration serializes a string under "map" (a map expression holds an
    // object there), so this touches the data type and nothing else.
    if text.contains(PLACEHOLDER_JSON) {
        text.replace(PLACEHOLDER_JSON, VERDICT_JSON)
    } else {
        text
    }
}

/// A listing's verdict maps in the form the schema types can parse (see
/// [`VERDICT_PLACEHOLDER`]).
pub(crate) fn verdict_maps_to_placeholder(listing: &mut serde_json::Value) {
    let Some(objects) = listing
        .get_mut("nftables")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return;
    };
    for map in objects.iter_mut().filter_map(|o| o.get_mut("map")) {
        if map.get("map").and_then(serde_json::Value::as_str) == Some("verdict") {
            map["map"] = serde_json::Value::from("mark");
        }
    }
}

pub(crate) fn zone_set(zone: &str, addrs: &[Ipv4Addr]) -> Set<'static> {
    let elems = addr_elems(addrs);
    Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: zone_set_name(zone).into(),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        policy: None,
        flags: None,
        elem: (!elems.is_empty()).then(|| elems.into()),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

/// The transaction for a changed zone address (a new DHCP lease on WAN): flush the zone's
/// set and refill it. Rules refer to the set by name, so none of them is touched.
pub fn set_zone_addresses(zone: &str, addrs: &[Ipv4Addr]) -> Nftables<'static> {
    let mut objects = vec![NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(
        Box::new(zone_set(zone, &[])),
    )))];
    // The addresses come with the set's declaration rather than as `add element`, which
    // would make nft 1.0.6 fetch every element of every interval set first (seconds with
    // a 100k-prefix list).
    if !addrs.is_empty() {
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Set(
            Box::new(zone_set(zone, addrs)),
        ))));
    }
    Nftables {
        objects: objects.into(),
    }
}
