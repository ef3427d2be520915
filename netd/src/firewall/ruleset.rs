//! The rendered table and the batches that put it into the kernel.

use std::net::Ipv4Addr;

use nftables::schema::{
    Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Set, SetType, SetTypeValue,
    Table,
};
use nftables::types::NfFamily;

use super::TABLE;
use super::expr::{Expr, s};

/// The whole desired content of `inet appliance`: chains, sets and rules in the order
/// they must be added (chains and sets before the rules that refer to them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    objects: Vec<NfListObject<'static>>,
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
                .cloned()
                .map(|o| NfObject::CmdObject(NfCmd::Add(o))),
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
        if self.objects.len() != applied.objects.len() {
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

/// Serializing schema types cannot fail: they hold no maps with non-string keys.
pub(crate) fn json(n: &Nftables<'_>) -> String {
    serde_json::to_string(n).unwrap_or_default()
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
    let elems = addr_elems(addrs);
    if !elems.is_empty() {
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Element(
            Element {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: zone_set_name(zone).into(),
                elem: elems.into(),
            },
        ))));
    }
    Nftables {
        objects: objects.into(),
    }
}
