//! Loading appliance.toml: parse, migrate, deserialize into the typed model, cross-check,
//! and report every mistake at once with its key path, line and column.
//!
//! serde stops at the first error, so the loader repairs and retries: after each error it
//! removes the offending key (or the entry that lacks a required key) from a working copy
//! of the parsed document and deserializes again. The working copy keeps the original
//! spans, so each error is located in the user's file, and errors that are only the echo of
//! an earlier repair are dropped. Cross-checks run on what survives, minus any that touch a
//! removed part.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::diag::{Diagnostic, Diagnostics, ErrorKind, KeyPath, Seg, line_col};
use crate::model::{CURRENT_VERSION, Config};
use crate::types::HINT_SEPARATOR;
use crate::validate::{self, Issue};

/// More errors than this in one file are not worth reporting one by one.
const MAX_ERRORS: usize = 64;

/// Nothing past the TOML syntax is checked while it is broken, so the user is told to fix
/// it first rather than left to think these are the only mistakes.
const SYNTAX_HINT: &str = "fix the TOML syntax here and validate again; nothing else was checked \
     yet (strings go in double quotes, lists in [ ], one `key = value` per line)";

/// Parses and validates a config. On failure every mistake found is returned.
pub fn load_str(src: &str) -> Result<Config, Diagnostics> {
    let (root, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        let diags = syntax
            .iter()
            .take(MAX_ERRORS)
            .map(|e| {
                let span = e.span();
                let path = span
                    .as_ref()
                    .map(|s| locate(&root, s).path)
                    .unwrap_or_default();
                make_diag(
                    src,
                    ErrorKind::Syntax,
                    path,
                    span,
                    e.message(),
                    Some(SYNTAX_HINT.to_owned()),
                )
            })
            .collect();
        return Err(sorted(diags));
    }

    if let Some(d) = check_version(src, &root) {
        return Err(Diagnostics(vec![d]));
    }

    let mut work = root.clone();
    let mut diags = Vec::new();
    let mut removed: Vec<KeyPath> = Vec::new();
    // (table span, key) pairs removed by a repair: a later "missing field" for one of them
    // is the echo of that repair, not a second mistake.
    let mut removed_keys: Vec<(Range<usize>, String)> = Vec::new();
    let mut config = None;

    for _ in 0..MAX_ERRORS * 2 {
        let de = toml::de::Deserializer::from(work.clone());
        match Config::deserialize(de) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => {
                let Some(span) = e.span() else {
                    diags.push(make_diag(
                        src,
                        ErrorKind::InvalidValue,
                        KeyPath::root(),
                        None,
                        e.message(),
                        None,
                    ));
                    break;
                };
                let (kind, message, hint) = classify(e.message());
                let at = locate(&work, &span);
                let orig_path = original_path(&work, &root, &at.path);

                let target = match kind {
                    ErrorKind::MissingKey => {
                        let field = backticked(e.message()).unwrap_or_default();
                        let echo = removed_keys
                            .iter()
                            .any(|(s, k)| *s == at.value_span && *k == field);
                        if !echo {
                            diags.push(make_diag(
                                src,
                                kind,
                                orig_path.clone(),
                                Some(at.report_span()),
                                &message,
                                hint,
                            ));
                        }
                        // The table cannot be completed, so drop it from the working copy.
                        Target::Value(at.value_span.clone())
                    }
                    ErrorKind::UnknownKey => {
                        // toml points at the table; find the unknown key inside it.
                        let field = backticked(e.message()).unwrap_or_default();
                        let at_key = matches!(at.path.segments().last(), Some(Seg::Key(k)) if *k == field)
                            && at.key_span.is_some();
                        let (path, key_span) = if at_key {
                            (
                                at.path.clone(),
                                at.key_span.clone().unwrap_or_else(|| at.report_span()),
                            )
                        } else {
                            find_key(&work, &at, &field)
                                .unwrap_or((at.path.clone(), at.report_span()))
                        };
                        let path = original_path(&work, &root, &path);
                        diags.push(make_diag(
                            src,
                            kind,
                            path,
                            Some(key_span.clone()),
                            &message,
                            secret_hint(&field)
                                .or_else(|| removed_hint(&field))
                                .or(hint),
                        ));
                        Target::Key(key_span)
                    }
                    _ => {
                        diags.push(make_diag(
                            src,
                            kind,
                            orig_path.clone(),
                            Some(at.report_span()),
                            &message,
                            hint,
                        ));
                        Target::Value(at.value_span.clone())
                    }
                };
                if at.path.0.is_empty() {
                    // Nothing smaller than the whole document to remove.
                    break;
                }
                if let Some((table_span, key)) = remove(&mut work, &target) {
                    removed_keys.push((table_span, key));
                } else {
                    break;
                }
                removed.push(orig_path);
                if diags.len() >= MAX_ERRORS {
                    break;
                }
            }
        }
    }

    if let Some(cfg) = &config {
        for issue in validate::check(cfg) {
            // The model's arrays lack the removed elements: compare in the file's numbering.
            let in_file = Issue {
                path: original_path(&work, &root, &issue.path),
                related: (issue.related.iter())
                    .map(|r| original_path(&work, &root, r))
                    .collect(),
                ..issue.clone()
            };
            if removed.iter().any(|r| in_file.touches(r)) {
                continue;
            }
            diags.push(issue_diag(src, &work, &root, issue));
        }
    }
    match config {
        Some(cfg) if diags.is_empty() => Ok(cfg),
        _ => Err(sorted(diags)),
    }
}

fn sorted(mut diags: Vec<Diagnostic>) -> Diagnostics {
    diags.sort_by_key(|a| (a.line, a.column));
    diags.dedup();
    Diagnostics(diags)
}

fn check_version(src: &str, root: &Spanned<DeTable<'_>>) -> Option<Diagnostic> {
    let path = KeyPath::root().key("version");
    let hint = Some(format!("start the file with `version = {CURRENT_VERSION}`"));
    let Some(v) = root.get_ref().get("version") else {
        return Some(make_diag(
            src,
            ErrorKind::MissingKey,
            path,
            Some(0..0),
            "missing field `version`",
            hint,
        ));
    };
    let n = v
        .get_ref()
        .as_integer()
        .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
    match n {
        Some(n) if (1..=i64::from(CURRENT_VERSION)).contains(&n) => None,
        Some(n) if n > i64::from(CURRENT_VERSION) => Some(make_diag(
            src,
            ErrorKind::Version,
            path,
            Some(v.span()),
            &format!(
                "version {n} was written by a newer firmware; this one reads up to {CURRENT_VERSION}"
            ),
            Some(
                "update the firmware first, or roll the config back to an older generation".into(),
            ),
        )),
        _ => Some(make_diag(
            src,
            ErrorKind::Version,
            path,
            Some(v.span()),
            &format!("version must be an integer from 1 to {CURRENT_VERSION}"),
            hint,
        )),
    }
}

fn make_diag(
    src: &str,
    kind: ErrorKind,
    path: KeyPath,
    span: Option<Range<usize>>,
    message: &str,
    hint: Option<String>,
) -> Diagnostic {
    let (line, column) = match &span {
        Some(s) if !src.is_empty() => line_col(src, s.start),
        _ => (0, 0),
    };
    Diagnostic {
        kind,
        path,
        line,
        column,
        message: message.trim().to_owned(),
        hint,
        span,
    }
}

fn issue_diag(
    src: &str,
    work: &Spanned<DeTable<'_>>,
    root: &Spanned<DeTable<'_>>,
    issue: Issue,
) -> Diagnostic {
    let span = find_path(work, &issue.path);
    let path = original_path(work, root, &issue.path);
    make_diag(
        src,
        issue.kind,
        path,
        Some(span),
        &issue.message,
        issue.hint.map(str::to_owned),
    )
}

/// Splits serde's message into a kind, the message and a hint.
fn classify(raw: &str) -> (ErrorKind, String, Option<String>) {
    let (msg, hint) = match raw.split_once(HINT_SEPARATOR) {
        Some((m, h)) => (m.to_owned(), Some(h.trim().to_owned())),
        None => (raw.to_owned(), None),
    };
    let kind = if msg.starts_with("unknown field") {
        ErrorKind::UnknownKey
    } else if msg.starts_with("missing field") {
        ErrorKind::MissingKey
    } else if msg.starts_with("invalid type") || msg.starts_with("invalid length") {
        ErrorKind::WrongType
    } else {
        ErrorKind::InvalidValue
    };
    let hint = hint.or_else(|| {
        if kind == ErrorKind::UnknownKey {
            msg.split_once(", expected ")
                .map(|(_, e)| format!("valid keys here: {e}"))
        } else if kind == ErrorKind::MissingKey {
            backticked(&msg)
                .map(|f| format!("add `{f} = ...` to this table (docs/config.md lists every key)"))
        } else if msg.starts_with("unknown variant") {
            msg.split_once(", expected ")
                .map(|(_, e)| format!("use {e}"))
        } else if kind == ErrorKind::WrongType {
            Some(wrong_type_hint(&msg))
        } else {
            None
        }
    });
    let msg = match msg.split_once(", expected ") {
        Some((m, _)) if kind == ErrorKind::UnknownKey || msg.starts_with("unknown variant") => {
            m.to_owned()
        }
        _ => msg,
    };
    (kind, msg, hint)
}

/// What to write instead of a value of the wrong TOML type, from serde's
/// "invalid type: <found>, expected <what>".
fn wrong_type_hint(msg: &str) -> String {
    let (found, expected) = msg
        .split_once(", expected ")
        .unwrap_or((msg, "another type"));
    let found = found.strip_prefix("invalid type: ").unwrap_or(found);
    if expected.contains("boolean") {
        "write true or false, without quotes".to_owned()
    } else if expected.contains("sequence") {
        "write a list in brackets, like [\"a\", \"b\"], even for a single item".to_owned()
    } else if expected.contains("map") || expected.starts_with("struct ") {
        "write a table: a [section] header with `key = value` lines, or { key = value } inline"
            .to_owned()
    } else if found.starts_with("string") {
        format!("write the value without quotes; expected {expected}")
    } else {
        format!("expected {expected}; docs/config.md shows the form of every key")
    }
}

/// Secrets are referenced by file; a user who pastes one inline gets told where it goes.
fn secret_hint(field: &str) -> Option<String> {
    let file_key = match field {
        "private_key" => "private_key_file",
        "preshared_key" => "preshared_key_file",
        "password" => "password_hash (an argon2id hash) or smb_password_file",
        "smb_password" => "smb_password_file",
        "totp_secret" => "totp_secret_file",
        _ => return None,
    };
    Some(format!(
        "secrets never go in appliance.toml: put it in a file under /data with mode 0600 and set {file_key}"
    ))
}

/// Keys older files may hold that no longer exist, and what replaces them.
fn removed_hint(field: &str) -> Option<String> {
    match field {
        // It promised a destroy when a dataset left the config, where the key left with it.
        "allow_destroy" => Some(
            "`allow_destroy` was removed: stored never destroys a dataset; delete this line, \
             and destroy a dataset you no longer want by hand with `zfs destroy -r POOL/NAME`"
                .to_owned(),
        ),
        _ => None,
    }
}

fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg.get(start..)?.find('`')?;
    msg.get(start..start + len).map(str::to_owned)
}

/// Where an error span lies in the document.
struct Located {
    path: KeyPath,
    key_span: Option<Range<usize>>,
    value_span: Range<usize>,
    is_table: bool,
}

impl Located {
    /// What to underline: the key for tables (their header), the value for scalars.
    fn report_span(&self) -> Range<usize> {
        match (&self.key_span, self.is_table) {
            (Some(k), true) => k.clone(),
            _ => self.value_span.clone(),
        }
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Finds the smallest node whose value (or key) span contains `span`.
fn locate(root: &Spanned<DeTable<'_>>, span: &Range<usize>) -> Located {
    // The root's own span is not the whole file, so start wider than anything.
    let mut best = Located {
        path: KeyPath::root(),
        key_span: None,
        value_span: 0..usize::MAX,
        is_table: true,
    };
    fn width(r: &Range<usize>) -> usize {
        r.end.saturating_sub(r.start)
    }
    fn walk(
        v: &Spanned<DeValue<'_>>,
        key_span: Option<Range<usize>>,
        path: &KeyPath,
        span: &Range<usize>,
        best: &mut Located,
    ) {
        let vs = v.span();
        if let Some(ks) = &key_span
            && contains(ks, span)
            && width(ks) <= width(&best.value_span)
        {
            *best = Located {
                path: path.clone(),
                key_span: Some(ks.clone()),
                value_span: vs.clone(),
                is_table: v.get_ref().is_table(),
            };
        }
        if contains(&vs, span) && width(&vs) <= width(&best.value_span) {
            *best = Located {
                path: path.clone(),
                key_span: key_span.clone(),
                value_span: vs.clone(),
                is_table: v.get_ref().is_table(),
            };
        }
        match v.get_ref() {
            DeValue::Table(t) => {
                for (k, child) in t.iter() {
                    walk(
                        child,
                        Some(k.span()),
                        &path.clone().key(k.get_ref()),
                        span,
                        best,
                    );
                }
            }
            DeValue::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    walk(child, None, &path.clone().index(i), span, best);
                }
            }
            _ => {}
        }
    }
    for (k, child) in root.get_ref().iter() {
        walk(
            child,
            Some(k.span()),
            &KeyPath::root().key(k.get_ref()),
            span,
            &mut best,
        );
    }
    if best.path.0.is_empty() {
        best.value_span = root.span();
    }
    best
}

/// The span to report for `path`: its node, or the deepest ancestor present in the file
/// (a cross-check may name a key that was left to its default).
fn find_path(root: &Spanned<DeTable<'_>>, path: &KeyPath) -> Range<usize> {
    let mut span = 0..0;
    let mut table = Some(root.get_ref());
    let mut array: Option<&DeArray<'_>> = None;
    for seg in path.segments() {
        let next = match (seg, table, array) {
            (Seg::Key(k), Some(t), _) => t
                .get_key_value(k.as_str())
                .map(|(key, v)| (Some(key.span()), v)),
            (Seg::Index(i), _, Some(a)) => a.get(*i).map(|v| (None, v)),
            _ => None,
        };
        let Some((key_span, v)) = next else {
            return span;
        };
        span = match (key_span, v.get_ref().is_table()) {
            (Some(k), true) => k,
            _ => v.span(),
        };
        table = v.get_ref().as_table();
        array = v.get_ref().as_array();
    }
    span
}

/// The key named `field` inside the table at `at`, with its path and span.
fn find_key(
    root: &Spanned<DeTable<'_>>,
    at: &Located,
    field: &str,
) -> Option<(KeyPath, Range<usize>)> {
    let mut table = root.get_ref();
    let mut array: Option<&DeArray<'_>> = None;
    for seg in at.path.segments() {
        let v = match seg {
            Seg::Key(k) => table.get(k.as_str())?,
            Seg::Index(i) => array?.get(*i)?,
        };
        array = v.get_ref().as_array();
        if let Some(t) = v.get_ref().as_table() {
            table = t;
        }
    }
    let (k, _) = table.get_key_value(field)?;
    Some((at.path.clone().key(field), k.span()))
}

/// Maps a path in the working copy (where array elements may have been removed) to the
/// path of the same node in the original document, by matching spans.
fn original_path(
    work: &Spanned<DeTable<'_>>,
    root: &Spanned<DeTable<'_>>,
    path: &KeyPath,
) -> KeyPath {
    let mut out = KeyPath::root();
    let (mut w, mut o): (Option<&DeValue<'_>>, Option<&DeValue<'_>>) = (None, None);
    for (n, seg) in path.segments().iter().enumerate() {
        match seg {
            Seg::Key(k) => {
                let wt = if n == 0 {
                    Some(work.get_ref())
                } else {
                    w.and_then(DeValue::as_table)
                };
                let ot = if n == 0 {
                    Some(root.get_ref())
                } else {
                    o.and_then(DeValue::as_table)
                };
                w = wt.and_then(|t| t.get(k.as_str())).map(Spanned::get_ref);
                o = ot.and_then(|t| t.get(k.as_str())).map(Spanned::get_ref);
                out = out.key(k);
            }
            Seg::Index(i) => {
                let we = w.and_then(DeValue::as_array).and_then(|a| a.get(*i));
                let oa = o.and_then(DeValue::as_array);
                let j = match (we, oa) {
                    (Some(we), Some(oa)) => {
                        oa.iter().position(|e| e.span() == we.span()).unwrap_or(*i)
                    }
                    _ => *i,
                };
                w = we.map(Spanned::get_ref);
                o = oa.and_then(|a| a.get(j)).map(Spanned::get_ref);
                out = out.index(j);
            }
        }
    }
    out
}

enum Target {
    /// Remove the entry whose key has this span.
    Key(Range<usize>),
    /// Remove the entry or array element whose value has this span.
    Value(Range<usize>),
}

/// Removes the target from the working copy; returns the span of the table it was removed
/// from and its key, so that a "missing field" echo can be recognised.
fn remove(root: &mut Spanned<DeTable<'_>>, target: &Target) -> Option<(Range<usize>, String)> {
    let span = root.span();
    remove_in_table(root.get_mut(), span, target)
}

fn remove_in_table(
    t: &mut DeTable<'_>,
    own: Range<usize>,
    target: &Target,
) -> Option<(Range<usize>, String)> {
    let hit = t
        .iter()
        .find(|(k, v)| match target {
            Target::Key(s) => k.span() == *s,
            // An array of tables has the span of its first element: remove only that.
            Target::Value(s) => {
                v.span() == *s
                    && !(v.get_ref().as_array()).is_some_and(|a| a.iter().any(|e| e.span() == *s))
            }
        })
        .map(|(k, _)| (k.span(), k.get_ref().to_string()));
    if let Some((kspan, name)) = hit {
        let old = std::mem::take(t);
        for (k, v) in old {
            if k.span() != kspan {
                t.insert(k, v);
            }
        }
        return Some((own, name));
    }
    for (_, v) in t.iter_mut() {
        let vspan = v.span();
        if let Some(found) = remove_in_value(v.get_mut(), vspan, target) {
            return Some(found);
        }
    }
    None
}

fn remove_in_value(
    v: &mut DeValue<'_>,
    own: Range<usize>,
    target: &Target,
) -> Option<(Range<usize>, String)> {
    match v {
        DeValue::Table(t) => remove_in_table(t, own, target),
        DeValue::Array(a) => {
            if let Target::Value(s) = target
                && a.iter().any(|e| e.span() == *s)
            {
                let mut kept = DeArray::new();
                for e in a.iter().filter(|e| e.span() != *s) {
                    kept.push(e.clone());
                }
                *a = kept;
                return Some((own, String::new()));
            }
            for e in a.iter_mut() {
                let espan = e.span();
                if let Some(r) = remove_in_value(e.get_mut(), espan, target) {
                    return Some(r);
                }
            }
            None
        }
        _ => None,
    }
}

impl Issue {
    /// Whether this cross-check finding involves a part of the file that failed to parse.
    /// That includes a finding about a table that lost a part (a required key, a disk):
    /// it may be only the echo of the removal.
    fn touches(&self, removed: &KeyPath) -> bool {
        self.path.starts_with(removed)
            || removed.starts_with(&self.path)
            || self
                .related
                .iter()
                .any(|r| r.starts_with(removed) || removed.starts_with(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_integer_size_is_bytes() {
        let cfg = load_str("version = 1\n[dns]\nquery_log_size = 0\n").unwrap();
        assert_eq!(cfg.dns.query_log_size.bytes(), 0);
        let cfg = load_str("version = 1\n[dns]\nquery_log_size = 4096\n").unwrap();
        assert_eq!(cfg.dns.query_log_size.bytes(), 4096);
        let e = load_str("version = 1\n[dns]\nquery_log_size = -1\n").unwrap_err();
        assert_eq!(e.0[0].path.to_string(), "dns.query_log_size");
    }

    #[test]
    fn an_empty_file_needs_a_version() {
        let e = load_str("").unwrap_err();
        assert_eq!(e.0[0].kind, ErrorKind::MissingKey);
        assert_eq!(e.0[0].path.to_string(), "version");
    }
}
