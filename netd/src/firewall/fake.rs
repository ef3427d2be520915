//! An in-memory [`Nft`] for unit tests: it keeps the table as nft would list it, counts
//! the transactions that reached it, and can be told to fail.

use nftables::schema::{FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule};
use serde_json::{Value, json};

use super::TABLE;
use super::nft::{Nft, NftError};
use super::rules::KernelRule;
use super::ruleset::Ruleset;
use crate::command::CommandFailure;

#[derive(Debug, Clone, Default)]
pub struct FakeNft {
    /// The table's objects (chains, sets, rules) as `{"chain": {...}}` values, each with
    /// the handle the fake gave it, or `None` when the table does not exist.
    table: Option<Vec<Value>>,
    /// The last handle given out: like the kernel's, handles are never reused.
    last_handle: u64,
    /// Transactions that changed the table.
    pub writes: usize,
    /// Commands in those transactions, to tell an incremental update from a new table.
    pub commands: usize,
    /// The ruleset generation: bumped by every committed transaction, as the kernel does.
    pub generation: u32,
    /// When set, the next `run` or `check` fails with this stderr and changes nothing.
    pub fail_next: Option<String>,
}

fn failure(stderr: &str) -> NftError {
    NftError::Failed {
        failure: CommandFailure {
            command: "nft -j -f -".into(),
            status: Some(1),
            stdout: String::new(),
            stderr: stderr.into(),
        },
        culprit: None,
    }
}

fn name_of(v: &Value, kind: &str, key: &str) -> Option<String> {
    v.get(kind)?.get(key)?.as_str().map(ToOwned::to_owned)
}

impl FakeNft {
    pub fn new() -> Self {
        Self::default()
    }

    /// Transactions are all-or-nothing: work on a copy, keep it only when every command
    /// succeeded, as the kernel does.
    fn simulate(&self, batch: &Nftables<'_>) -> Result<(Option<Vec<Value>>, u64), NftError> {
        let mut table = self.table.clone();
        let mut last = self.last_handle;
        for obj in batch.objects.iter() {
            let NfObject::CmdObject(cmd) = obj else {
                return Err(failure("list objects are not commands"));
            };
            match cmd {
                NfCmd::Add(NfListObject::Table(t)) if t.name == TABLE => {
                    table.get_or_insert_with(Vec::new);
                }
                NfCmd::Delete(NfListObject::Table(t)) if t.name == TABLE => {
                    if table.take().is_none() {
                        return Err(failure("Error: No such file or directory"));
                    }
                }
                NfCmd::Add(NfListObject::Element(e)) => {
                    add_elems(&mut table, &e.name, Some(&e.elem))?;
                }
                NfCmd::Flush(FlushObject::Set(s)) => {
                    if let Some(obj) = find_set(&mut table, &s.name)?.as_object_mut() {
                        obj.remove("elem");
                    }
                }
                NfCmd::Flush(FlushObject::Map(m)) => {
                    if let Some(obj) = find_set(&mut table, &m.name)?.as_object_mut() {
                        obj.remove("elem");
                    }
                }
                // nft: the `add` of a set or map that exists adds the elements it carries
                NfCmd::Add(NfListObject::Set(decl)) if find_set(&mut table, &decl.name).is_ok() => {
                    add_elems(&mut table, &decl.name, decl.elem.as_deref())?;
                }
                NfCmd::Add(NfListObject::Map(decl)) if find_set(&mut table, &decl.name).is_ok() => {
                    add_elems(&mut table, &decl.name, decl.elem.as_deref())?;
                }
                NfCmd::Delete(NfListObject::Element(e)) => {
                    let set = find_set(&mut table, &e.name)?;
                    let gone: Vec<Value> = e.elem.iter().map(|x| json!(x)).collect();
                    let arr = set
                        .get_mut("elem")
                        .and_then(Value::as_array_mut)
                        .ok_or_else(|| {
                            failure("Error: Could not process rule: No such file or directory")
                        })?;
                    for g in gone {
                        // a map's element goes by its key
                        let hit = |x: &Value| *x == g || x.get(0).is_some_and(|k| *k == g);
                        let at = arr.iter().position(hit).ok_or_else(|| {
                            failure("Error: Could not process rule: No such file or directory")
                        })?;
                        arr.remove(at);
                    }
                }
                NfCmd::Flush(FlushObject::Chain(c)) => {
                    let objs = chain_objects(&mut table, &c.name)?;
                    objs.retain(|o| name_of(o, "rule", "chain").as_deref() != Some(&*c.name));
                }
                NfCmd::Delete(NfListObject::Chain(c)) => {
                    let objs = chain_objects(&mut table, &c.name)?;
                    // a rule of the chain, a jump from a rule or from a map element
                    let referenced = objs.iter().any(|o| {
                        name_of(o, "rule", "chain").as_deref() == Some(&*c.name)
                            || (o.get("rule").is_some() || o.get("map").is_some())
                                && o.to_string()
                                    .contains(&format!("\"target\":\"{}\"", c.name))
                    });
                    if referenced {
                        return Err(failure(
                            "Error: Could not process rule: Device or resource busy",
                        ));
                    }
                    objs.retain(|o| name_of(o, "chain", "name").as_deref() != Some(&*c.name));
                }
                NfCmd::Delete(NfListObject::Set(s)) => {
                    find_set(&mut table, &s.name)?;
                    if let Some(objs) = table.as_mut() {
                        objs.retain(|o| name_of(o, "set", "name").as_deref() != Some(&*s.name));
                    }
                }
                NfCmd::Delete(NfListObject::Map(m)) => {
                    find_set(&mut table, &m.name)?;
                    if let Some(objs) = table.as_mut() {
                        objs.retain(|o| name_of(o, "map", "name").as_deref() != Some(&*m.name));
                    }
                }
                NfCmd::Add(NfListObject::Rule(r)) | NfCmd::Insert(NfListObject::Rule(r)) => {
                    let after = matches!(cmd, NfCmd::Add(_));
                    let objs = chain_objects(&mut table, &r.chain)?;
                    let at = match r.handle {
                        Some(h) => {
                            let at = rule_at(objs, &r.chain, h)?;
                            if after { at + 1 } else { at }
                        }
                        // append after the chain's last rule, or before its first
                        None => {
                            let of_chain = |o: &Value| {
                                name_of(o, "rule", "chain").as_deref() == Some(&*r.chain)
                            };
                            let found = if after {
                                objs.iter().rposition(of_chain).map(|i| i + 1)
                            } else {
                                objs.iter().position(of_chain)
                            };
                            found.unwrap_or(objs.len())
                        }
                    };
                    last += 1;
                    objs.insert(at, with_handle(r, last)?);
                }
                NfCmd::Delete(NfListObject::Rule(r)) => {
                    let h = r
                        .handle
                        .ok_or_else(|| failure("Error: delete needs a handle"))?;
                    let objs = chain_objects(&mut table, &r.chain)?;
                    let at = rule_at(objs, &r.chain, h)?;
                    objs.remove(at);
                }
                NfCmd::Add(o) => {
                    let objs = table
                        .as_mut()
                        .ok_or_else(|| failure("Error: No such file or directory"))?;
                    let mut v = serde_json::to_value(o)?;
                    last += 1;
                    if let Some(m) = v
                        .as_object_mut()
                        .and_then(|m| m.values_mut().next())
                        .and_then(Value::as_object_mut)
                    {
                        m.insert("handle".into(), json!(last));
                    }
                    if let Some(chain) = name_of(&v, "rule", "chain") {
                        let declared = objs
                            .iter()
                            .any(|c| name_of(c, "chain", "name").as_deref() == Some(&chain));
                        if !declared {
                            return Err(failure(&format!(
                                "Error: Could not process rule: No such file or directory\nchain {chain}"
                            )));
                        }
                    }
                    objs.push(v);
                }
                _ => return Err(failure("command not supported by the fake")),
            }
        }
        Ok((table, last))
    }
}

fn handle_of(v: &Value) -> Option<u64> {
    v.get("rule")?.get("handle")?.as_u64()
}

/// Where the rule with handle `h` of `chain` is.
fn rule_at(objs: &[Value], chain: &str, h: u32) -> Result<usize, NftError> {
    objs.iter()
        .position(|o| {
            name_of(o, "rule", "chain").as_deref() == Some(chain)
                && handle_of(o) == Some(u64::from(h))
        })
        .ok_or_else(|| failure("Error: Could not process rule: No such file or directory"))
}

fn with_handle(r: &Rule<'_>, handle: u64) -> Result<Value, NftError> {
    let mut v = serde_json::to_value(NfListObject::Rule(Rule {
        handle: None,
        index: None,
        ..r.clone()
    }))?;
    if let Some(m) = v.get_mut("rule").and_then(Value::as_object_mut) {
        m.insert("handle".into(), json!(handle));
    }
    Ok(v)
}

fn chain_objects<'a>(
    table: &'a mut Option<Vec<Value>>,
    name: &str,
) -> Result<&'a mut Vec<Value>, NftError> {
    let missing = || {
        failure(&format!(
            "Error: Could not process rule: No such file or directory\nchain {name}"
        ))
    };
    let objs = table.as_mut().ok_or_else(missing)?;
    if !objs
        .iter()
        .any(|o| name_of(o, "chain", "name").as_deref() == Some(name))
    {
        return Err(missing());
    }
    Ok(objs)
}

fn add_elems(
    table: &mut Option<Vec<Value>>,
    name: &str,
    elem: Option<&[nftables::expr::Expression<'_>]>,
) -> Result<(), NftError> {
    let set = find_set(table, name)?;
    let elems = set
        .as_object_mut()
        .ok_or_else(|| failure("bad set"))?
        .entry("elem")
        .or_insert_with(|| json!([]));
    if let Some(arr) = elems.as_array_mut() {
        arr.extend(elem.unwrap_or_default().iter().map(|x| json!(x)));
    }
    Ok(())
}

fn find_set<'a>(table: &'a mut Option<Vec<Value>>, name: &str) -> Result<&'a mut Value, NftError> {
    let missing = || {
        failure(&format!(
            "Error: Could not process rule: No such file or directory\nset {name}"
        ))
    };
    let set = table
        .as_mut()
        .ok_or_else(missing)?
        .iter_mut()
        .find(|o| {
            name_of(o, "set", "name").as_deref() == Some(name)
                || name_of(o, "map", "name").as_deref() == Some(name)
        })
        .ok_or_else(missing)?;
    let kind = if set.get("map").is_some() {
        "map"
    } else {
        "set"
    };
    set.get_mut(kind).ok_or_else(missing)
}

impl Nft for FakeNft {
    fn check(&self, ruleset: &Ruleset) -> Result<(), NftError> {
        if let Some(err) = &self.fail_next {
            return Err(failure(err));
        }
        self.simulate(&ruleset.batch()).map(|_| ())
    }

    fn run(&mut self, batch: &Nftables<'_>) -> Result<(), NftError> {
        if let Some(err) = self.fail_next.take() {
            return Err(failure(&err));
        }
        (self.table, self.last_handle) = self.simulate(batch)?;
        self.writes += 1;
        self.commands += batch.objects.len();
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    fn generation(&self) -> Result<u32, NftError> {
        Ok(self.generation)
    }

    fn rules(&self, chain: Option<&str>) -> Result<Option<Vec<KernelRule>>, NftError> {
        let Some(objs) = &self.table else {
            return Ok(None);
        };
        if let Some(c) = chain
            && !objs
                .iter()
                .any(|o| name_of(o, "chain", "name").as_deref() == Some(c))
        {
            return Ok(None);
        }
        let rules = objs
            .iter()
            .filter_map(|o| {
                let r = o.get("rule")?;
                let name = r.get("chain")?.as_str()?;
                if chain.is_some_and(|c| c != name) {
                    return None;
                }
                let counted = r
                    .get("expr")?
                    .as_array()?
                    .iter()
                    .any(|e| e.get("counter").is_some());
                Some(KernelRule {
                    chain: name.to_owned(),
                    handle: handle_of(o)?,
                    comment: r.get("comment").and_then(Value::as_str).map(Into::into),
                    counter: counted.then_some((42, 4200)),
                })
            })
            .collect();
        Ok(Some(rules))
    }

    /// Lists like nft does: a metainfo object first, handles on everything, counters that
    /// have counted something, so that planning must see past all three, and the rules
    /// chain by chain. The listed handles are positions in the listing, so that two
    /// tables with the same content list the same whatever their history; the handles
    /// that commands name are the ones [`Nft::rules`] reports.
    fn list(&self) -> Result<Option<Value>, NftError> {
        let Some(objs) = &self.table else {
            return Ok(None);
        };
        let mut out = vec![
            json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
            json!({"table": {"family": "inet", "name": TABLE, "handle": 1}}),
        ];
        let chains: Vec<String> = objs
            .iter()
            .filter_map(|o| name_of(o, "chain", "name"))
            .collect();
        let rank =
            |o: &Value| name_of(o, "rule", "chain").map(|c| chains.iter().position(|x| *x == c));
        let mut ordered: Vec<&Value> = objs.iter().collect();
        // stable: rules keep their order inside a chain, the rest stays in front
        ordered.sort_by_key(|o| rank(o));
        for (position, o) in ordered.into_iter().enumerate() {
            let mut o = o.clone();
            if let Some(inner) = o.as_object_mut().and_then(|m| m.values_mut().next())
                && let Some(m) = inner.as_object_mut()
            {
                m.insert("handle".into(), json!(position + 2));
                if let Some(exprs) = m.get_mut("expr").and_then(Value::as_array_mut) {
                    for e in exprs {
                        if let Some(c) = e.get_mut("counter").and_then(Value::as_object_mut) {
                            c.insert("packets".into(), json!(42));
                            c.insert("bytes".into(), json!(4200));
                        }
                    }
                }
            }
            out.push(o);
        }
        Ok(Some(json!({ "nftables": out })))
    }
}
