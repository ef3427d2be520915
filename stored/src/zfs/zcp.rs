//! The channel programs (Lua run by the kernel, `zfs program`) that list and destroy
//! snapshots for a prune, and the reading of what they return.
//!
//! Measured in the TCG guest on a tree of 101 datasets with 100 snapshots each (10,100):
//! `zfs list -t snapshot -o name,...` took 52-114 s, one ioctl per snapshot, each answered
//! with its properties; the names alone, through the names program, 0.8 s in one ioctl.
//! Properties read inside the program (`zfs.get_prop`) were slower than `zfs list` (112 s
//! for three, 290 s for four), so the prune lists names only and leaves holds to the
//! kernel's destroy check. The destroy program takes the snapshots in the order given:
//! oldest first within each dataset took 140 s where the hash order `lzc_destroy_snaps`
//! uses (its own channel program iterates a Lua table keyed by name) took 280 s. Newest
//! first was faster only when the run reached the dataset's head; after a kept snapshot,
//! as in a prune, it took the time oldest first took.

use std::io;

use super::lzc::NvValue;
use super::{TreeNames, ZfsError};

/// Lists the datasets given (an array of names) and their snapshot names and, when
/// `RECURSIVE`, those of their descendants, as the keys of the table returned: the tree's
/// datasets come with it, where a `zfs get` of every dataset of every pool took a process
/// and a property read per dataset.
const NAMES: &str = r#"
local roots = ...
local out = {}
local function list(ds)
  out[ds] = true
  for s in zfs.list.snapshots(ds) do
    out[s] = true
  end
  if RECURSIVE then
    for c in zfs.list.children(ds) do
      list(c)
    end
  end
end
for _, ds in ipairs(roots) do
  list(ds)
end
return out
"#;

/// The names program, recursive or not.
pub fn names_program(recursive: bool) -> String {
    format!("local RECURSIVE = {recursive}\n{NAMES}")
}

/// Destroys the snapshots given (an array of full names, all in one pool) in that order,
/// in syncing context: one txg for all. A snapshot the kernel refuses (EBUSY for a hold
/// placed since it was listed) is skipped and returned as `{ [name] = "errno" }`; the
/// others are destroyed. A missing snapshot counts as destroyed, as with
/// `lzc_destroy_snaps`.
pub const DESTROY: &str = r#"
local snaps = ...
local refused = {}
for _, s in ipairs(snaps) do
  local err = zfs.sync.destroy(s)
  if err ~= 0 then
    refused[s] = tostring(err)
  end
end
return refused
"#;

/// Lists every user hold on the snapshots of the datasets given (an array of names) and
/// their descendants: `{ [snapshot] = { [tag] = true } }`, only snapshots with holds. One
/// ioctl for a pool's whole tree where `zfs list -o userrefs` and a get_holds per held
/// snapshot cost a process, a walk and an ioctl each.
pub const HOLDS: &str = r#"
local roots = ...
local out = {}
local function walk(ds)
  for s in zfs.list.snapshots(ds) do
    local tags = nil
    for tag in zfs.list.holds(s) do
      tags = tags or {}
      tags[tag] = true
    end
    if tags then
      out[s] = tags
    end
  end
  for c in zfs.list.children(ds) do
    walk(c)
  end
end
for _, ds in ipairs(roots) do
  walk(ds)
end
return out
"#;

fn parse_error(program: &str, line: String, why: &str) -> ZfsError {
    ZfsError::Parse {
        command: program.to_owned(),
        line,
        why: why.to_owned(),
    }
}

/// The top-level table a program returned; an empty Lua table comes back as an empty
/// nvlist, or as nothing at all.
fn table(program: &str, value: Option<NvValue>) -> Result<Vec<(String, NvValue)>, ZfsError> {
    match value {
        Some(NvValue::List(pairs)) => Ok(pairs),
        None => Ok(Vec::new()),
        Some(other) => Err(parse_error(
            program,
            format!("{other:?}"),
            "expected a table",
        )),
    }
}

/// Reads the holds program's result as `(snapshot, tag)` pairs, sorted.
pub fn parse_holds(
    program: &str,
    value: Option<NvValue>,
) -> Result<Vec<(String, String)>, ZfsError> {
    let mut out = Vec::new();
    for (snap, tags) in table(program, value)? {
        if !snap.contains('@') {
            return Err(parse_error(program, snap, "not a snapshot name"));
        }
        let NvValue::List(tags) = tags else {
            return Err(parse_error(
                program,
                format!("{snap}: {tags:?}"),
                "expected a table of tags",
            ));
        };
        out.extend(tags.into_iter().map(|(tag, _)| (snap.clone(), tag)));
    }
    out.sort();
    Ok(out)
}

/// Reads the names program's result: the datasets and the `(dataset, snapshot name)`
/// pairs, each sorted.
pub fn parse_names(program: &str, value: Option<NvValue>) -> Result<TreeNames, ZfsError> {
    let pairs = table(program, value)?;
    let mut out = TreeNames::default();
    for (full, _) in pairs {
        match full.split_once('@') {
            Some((dataset, name)) => out.snapshots.push((dataset.to_owned(), name.to_owned())),
            // A partial receive's `%recv` (and `$`-named internals) are no datasets of
            // the tree: nothing a policy snapshots.
            None if full
                .rsplit('/')
                .next()
                .is_some_and(|c| c.starts_with(['%', '$'])) => {}
            None if !full.is_empty() => out.datasets.push(full),
            None => return Err(parse_error(program, full, "an empty name")),
        }
    }
    out.datasets.sort();
    out.snapshots.sort();
    Ok(out)
}

/// The snapshots the destroy program skipped, with the errno the kernel gave for each.
pub fn parse_refused(value: Option<NvValue>) -> Vec<(String, io::Error)> {
    let Some(NvValue::List(pairs)) = value else {
        return Vec::new();
    };
    pairs
        .into_iter()
        .map(|(name, v)| {
            let errno = match v {
                NvValue::String(s) => s.parse().unwrap_or(0),
                _ => 0,
            };
            (name, io::Error::from_raw_os_error(errno))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> NvValue {
        NvValue::String(v.into())
    }

    #[test]
    fn names_read_into_pairs_and_anything_else_is_an_error() {
        let value = NvValue::List(vec![
            ("tank/a@b".into(), NvValue::Other(2)),
            ("tank/a/c".into(), NvValue::Other(2)),
            ("tank/a/c@a".into(), NvValue::Other(2)),
            ("tank/a".into(), NvValue::Other(2)),
            ("tank/a/c/%recv".into(), NvValue::Other(2)),
        ]);
        let got = parse_names("names", Some(value)).unwrap();
        assert_eq!(got.datasets, ["tank/a", "tank/a/c"]);
        assert_eq!(
            got.snapshots,
            [
                ("tank/a".to_owned(), "b".to_owned()),
                ("tank/a/c".to_owned(), "a".to_owned())
            ]
        );
        assert_eq!(parse_names("names", None).unwrap(), TreeNames::default());
        let e = parse_names("names", Some(s("x"))).unwrap_err().to_string();
        assert!(e.contains("expected a table"), "{e}");
        let value = NvValue::List(vec![("".into(), NvValue::Other(2))]);
        let e = parse_names("names", Some(value)).unwrap_err().to_string();
        assert!(e.contains("an empty name"), "{e}");
    }

    #[test]
    fn refused_snapshots_carry_their_errno() {
        let value = NvValue::List(vec![("tank/a@x".into(), s("16"))]);
        let got = parse_refused(Some(value));
        assert_eq!(got[0].0, "tank/a@x");
        assert_eq!(got[0].1.kind(), io::ErrorKind::ResourceBusy);
        assert!(parse_refused(None).is_empty());
        assert!(parse_refused(Some(NvValue::List(Vec::new()))).is_empty());
    }

    #[test]
    fn holds_read_into_pairs_and_anything_else_is_an_error() {
        let tags = |t: &[&str]| {
            NvValue::List(
                t.iter()
                    .map(|t| ((*t).to_owned(), NvValue::Other(1)))
                    .collect(),
            )
        };
        let value = NvValue::List(vec![
            ("tank/b@s".into(), tags(&["stored-repl:x"])),
            ("tank/a@s".into(), tags(&["admin", "stored-repl:y"])),
        ]);
        assert_eq!(
            parse_holds("holds", Some(value)).unwrap(),
            [
                ("tank/a@s".to_owned(), "admin".to_owned()),
                ("tank/a@s".to_owned(), "stored-repl:y".to_owned()),
                ("tank/b@s".to_owned(), "stored-repl:x".to_owned()),
            ]
        );
        assert!(parse_holds("holds", None).unwrap().is_empty());
        let e = parse_holds("holds", Some(s("x"))).unwrap_err().to_string();
        assert!(e.contains("expected a table"), "{e}");
        let value = NvValue::List(vec![("tank/a@s".into(), s("x"))]);
        let e = parse_holds("holds", Some(value)).unwrap_err().to_string();
        assert!(e.contains("table of tags"), "{e}");
        let value = NvValue::List(vec![("tank/a".into(), tags(&["t"]))]);
        let e = parse_holds("holds", Some(value)).unwrap_err().to_string();
        assert!(e.contains("not a snapshot name"), "{e}");
    }

    #[test]
    fn the_programs_say_what_they_are() {
        assert!(HOLDS.contains("zfs.list.holds"));
        assert!(names_program(true).starts_with("local RECURSIVE = true\n"));
        assert!(names_program(false).starts_with("local RECURSIVE = false\n"));
        assert!(DESTROY.contains("zfs.sync.destroy"));
    }
}
