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
    load_str_with(src, &mut LoadMemo::default())
}

/// What the config loaded last was made of, by exact text: its long address lists (a
/// 100k-address blocklist) and its port forwards' sections. A daemon loads generation
/// after generation of one config, and a change is almost never in its blocklist and
/// touches one forward of thousands: with the memo the rest is not parsed again (most of
/// a one-forward change's load time without it).
#[derive(Debug, Default)]
pub struct LoadMemo {
    lists: Vec<(String, Vec<crate::types::Cidr>)>,
    /// `[firewall.forwards.<name>]` sections, header to last line, with what they hold.
    forwards: std::collections::HashMap<String, (crate::types::Name, crate::model::PortForward)>,
}

/// [`load_str`] that reuses what `memo` holds of the text, and leaves what this config is
/// made of in it. The result is the same as [`load_str`]'s.
pub fn load_str_with(src: &str, memo: &mut LoadMemo) -> Result<Config, Diagnostics> {
    if let Some(cfg) = long_lists::load_valid(src, memo) {
        return Ok(cfg);
    }
    load_full(src)
}

/// [`load_str`] without the fast path for long address lists: every config goes through
/// here when the fast path does not accept it, so every mistake is reported from here.
fn load_full(src: &str) -> Result<Config, Diagnostics> {
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

/// The `[firewall.forwards.<name>]` sections that [`LoadMemo`] can stand for: a router
/// has thousands and a change touches one.
mod forward_sections {
    const HEADER: &str = "[firewall.forwards.";

    /// One section: its header line to its last line, newline included.
    pub(super) struct Section<'a> {
        pub text: &'a str,
        pub name: &'a str,
        pub range: std::ops::Range<usize>,
    }

    /// A key the header or a line may use: bare, no quotes, no dots.
    fn bare(k: &str) -> bool {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }

    /// A line whose meaning does not depend on anything around it: blank, a comment, or
    /// `key = ` a string without quotes or escapes inside, digits, `true` or `false`.
    fn simple(line: &str) -> bool {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            return true;
        }
        let Some((k, v)) = t.split_once('=') else {
            return false;
        };
        let (k, v) = (k.trim(), v.trim());
        let string = v.len() >= 2
            && v.starts_with('"')
            && v.ends_with('"')
            && !v[1..v.len() - 1].contains(['"', '\\']);
        let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        bare(k) && (string || digits || v == "true" || v == "false")
    }

    /// The sections of `src` made only of [`simple`] lines whose header starts a line at
    /// the top level of the document (not inside an array or inline table that spans
    /// lines). `None` when the file has a multi-line string, which this scan does not
    /// follow.
    ///
    /// `skip`: the long lists found already (sorted), walked over in one step.
    pub(super) fn scan<'a>(
        src: &'a str,
        skip: &[std::ops::Range<usize>],
    ) -> Option<Vec<Section<'a>>> {
        let b = src.as_bytes();
        let mut out = Vec::new();
        let mut depth = 0usize;
        let mut i = 0;
        let mut line_start = true;
        let mut skip = skip.iter().peekable();
        while let Some(&c) = b.get(i) {
            if let Some(list) = skip.next_if(|r| r.start <= i) {
                // a list's brackets balance; the scan goes on after its `]`
                i = i.max(list.end);
                continue;
            }
            if line_start && depth == 0 && c == b'[' {
                let end = src.get(i..)?.find('\n').map_or(b.len(), |n| i + n + 1);
                if let Some(section) = section_at(src, i) {
                    i = section.range.end;
                    out.push(section);
                } else {
                    // another header: its brackets close on its line
                    i = end;
                }
                continue;
            }
            line_start = false;
            match c {
                b'\n' => line_start = true,
                b'#' => {
                    i = src.get(i..)?.find('\n').map_or(b.len(), |n| i + n);
                    continue;
                }
                b'"' | b'\'' => {
                    if b.get(i + 1) == Some(&c) && b.get(i + 2) == Some(&c) {
                        return None;
                    }
                    let mut j = i + 1;
                    loop {
                        match b.get(j) {
                            Some(&q) if q == c => break,
                            Some(b'\\') if c == b'"' => j += 2,
                            Some(b'\n') | None => return None,
                            Some(_) => j += 1,
                        }
                    }
                    i = j;
                }
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.checked_sub(1)?,
                _ => {}
            }
            i += 1;
        }
        Some(out)
    }

    /// The section whose header line starts at `at`, if it is one of ours.
    fn section_at(src: &str, at: usize) -> Option<Section<'_>> {
        let rest = src.get(at..)?;
        let header_end = rest.find('\n').map_or(rest.len(), |n| n + 1);
        let name = rest
            .get(..header_end)?
            .trim_end()
            .strip_prefix(HEADER)?
            .strip_suffix(']')?;
        if !bare(name) {
            return None;
        }
        let mut end = header_end;
        while end < rest.len() {
            let line_end = rest
                .get(end..)?
                .find('\n')
                .map_or(rest.len(), |n| end + n + 1);
            let line = rest.get(end..line_end)?;
            if line.trim_start().starts_with('[') {
                break;
            }
            if !simple(line) {
                return None;
            }
            end = line_end;
        }
        Some(Section {
            text: rest.get(..end)?,
            name,
            range: at..at + end,
        })
    }

    /// Whether every mention of `forwards` left in `text` is a section header: with
    /// sections cut out, the forwards must not be defined any other way (an inline table,
    /// dotted keys, an escaped key), which the full file would refuse next to the headers.
    pub(super) fn only_headers_name_forwards(text: &str) -> bool {
        let headers = text.lines().filter(|l| l.starts_with(HEADER)).count();
        !text.contains("\\u")
            && !text.contains("\\U")
            && text.matches("forwards").count() == headers
    }

    #[cfg(test)]
    mod tests {
        use super::super::{LoadMemo, load_full, load_str_with};

        const BASE: &str = "version = 1\n[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\n\
            [interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"10.1.0.1/16\"]\n\
            [firewall.zones.wan]\ninterfaces = [\"wan\"]\n[firewall.zones.lan]\ninterfaces = [\"lan\"]\n";

        fn forwards(ports: impl IntoIterator<Item = u16>) -> String {
            ports
                .into_iter()
                .map(|p| {
                    format!(
                        "[firewall.forwards.f{p}]\nprotocol = \"tcp\"\nport = {p}\n# to the server\nto = \"10.1.0.{}\"\n\n",
                        p % 200 + 2
                    )
                })
                .collect()
        }

        /// Loads `first` into a memo, then `second` with it: the same as the full loader's.
        fn second_as_full(first: &str, second: &str) -> Result<crate::Config, crate::Diagnostics> {
            let mut memo = LoadMemo::default();
            let _ = load_str_with(first, &mut memo);
            let got = load_str_with(second, &mut memo);
            assert_eq!(got, load_full(second), "{second}");
            got
        }

        #[test]
        fn sections_from_the_memo_load_as_the_full_loader_loads_them() {
            let first = format!("{BASE}{}", forwards(1000..1100));
            let mut memo = LoadMemo::default();
            assert!(load_str_with(&first, &mut memo).is_ok());
            assert_eq!(memo.forwards.len(), 100);
            // one added in the middle, one changed, one gone
            let second = format!("{BASE}{}", forwards((1000..1100).filter(|p| *p != 1007)))
                .replace("port = 1050\n", "port = 1050\nenabled = false\n")
                .replace("[firewall.forwards.f1060]", "[firewall.forwards.f1060x]\nport = 9\nto = \"10.1.0.9\"\n[firewall.forwards.f1060]");
            let cfg = second_as_full(&first, &second).unwrap();
            assert_eq!(cfg.firewall.forwards.len(), 100);
            // the whole round again from this memo
            let again = load_str_with(&second, &mut memo).unwrap();
            assert_eq!(again, cfg);
            assert_eq!(memo.forwards.len(), 100);
        }

        #[test]
        fn sections_are_not_cut_where_they_would_change_the_meaning() {
            let first = format!("{BASE}{}", forwards(1000..1010));
            let f = forwards(1003..1004);
            // inside an array that spans lines: not a header, a broken file
            let in_array = format!("{BASE}x = [\n{f}]\n{}", forwards(1000..1003));
            assert!(second_as_full(&first, &in_array).is_err());
            // inside a multi-line string
            let in_string = format!(
                "{BASE}[system]\nmotd = \"\"\"\n{f}\"\"\"\n{}",
                forwards(1000..1003)
            );
            let _ = second_as_full(&first, &in_string);
            // the same forward defined twice, or also as an inline table or dotted keys
            let twice = format!("{first}{f}");
            assert!(second_as_full(&first, &twice).is_err());
            let inline = format!(
                "{first}[firewall]\nforwards = {{ g = {{ port = 1, to = \"10.1.0.2\" }} }}\n"
            );
            assert!(second_as_full(&first, &inline).is_err());
            let dotted = format!("{first}[firewall]\nforwards.f1001.hairpin = false\n");
            assert!(second_as_full(&first, &dotted).is_err());
            let escaped = format!("{first}[firewall]\n\"\\u0066orwards\" = {{}}\n");
            assert!(second_as_full(&first, &escaped).is_err());
            // a table under a forward
            let sub = format!("{first}[firewall.forwards.f1001.more]\nx = 1\n");
            assert!(second_as_full(&first, &sub).is_err());
            // a mistake beside the sections is reported in full
            let bad = first.replace(
                "[firewall.zones.lan]\ninterfaces",
                "[firewall.zones.lan]\ninterface",
            );
            assert!(second_as_full(&first, &bad).is_err());
        }
    }
}

/// A fast path for configs with long address lists (a 100k-address blocklist as a
/// rule's `source`): the generic TOML parse builds a token, an event and a value for
/// every element, and the loader copies the tree, which is most of a 2 MB config's load
/// time. Here such a list's text is cut out (`[...]` becomes `[]`, so the TOML lexer does
/// not walk megabytes of it), the rest parsed as usual, and the list's strings parsed
/// straight into [`Cidr`]s, or taken from the memo when its text is the one parsed last
/// time. Spans in the cut text are not the file's, which is fine: the path returns no
/// diagnostics, only a config or nothing. It only ever accepts a config that is valid
/// as a whole; anything it is unsure of (another syntax in the list, a list in a place
/// it does not know, any error or finding at all) returns `None`, and the full loader
/// runs on the original text and reports every mistake as before.
mod long_lists {
    use toml::Spanned;
    use toml::de::{DeTable, DeValue};

    use serde::Deserialize;

    use super::LoadMemo;
    use crate::diag::{KeyPath, Seg};
    use crate::model::Config;
    use crate::types::Cidr;

    /// Shorter lists are not worth a second way through the loader.
    const MIN: usize = 256;

    /// A list found in the text: its brackets' span and its strings.
    struct Found<'a> {
        span: std::ops::Range<usize>,
        items: Items<'a>,
    }

    enum Items<'a> {
        /// The strings, to parse.
        Text(Vec<&'a str>),
        /// The list of the memo's entry with this index: the same text.
        Memo(usize),
    }

    /// The arrays of at least [`MIN`] plain strings (no escapes), with only spaces,
    /// newlines, commas and comments between them. Some may be no array at all (inside
    /// a multi-line string): the caller checks each against the parsed document.
    /// A list whose text is the memo's is taken whole (one comparison rather than a
    /// walk over its megabytes): the walk would find the same strings.
    fn find<'a>(src: &'a str, memo: &LoadMemo) -> Vec<Found<'a>> {
        let bytes = src.as_bytes();
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(rel) = src.get(from..).and_then(|t| t.find("= [")) {
            let open = from + rel + 2;
            from = open + 1;
            let rest = bytes.get(open..).unwrap_or_default();
            if let Some(i) = memo
                .lists
                .iter()
                .position(|(t, _)| !t.is_empty() && rest.starts_with(t.as_bytes()))
            {
                let end = open + memo.lists.get(i).map_or(0, |(t, _)| t.len());
                out.push(Found {
                    span: open..end,
                    items: Items::Memo(i),
                });
                from = end;
                continue;
            }
            let mut items = Vec::new();
            let mut i = open + 1;
            let close = loop {
                match bytes.get(i) {
                    Some(b' ' | b'\t' | b'\n' | b'\r' | b',') => i += 1,
                    Some(b'#') => {
                        i += bytes
                            .get(i..)
                            .and_then(|t| t.iter().position(|&b| b == b'\n'))
                            .unwrap_or(0)
                            + 1;
                    }
                    Some(b'"') => {
                        let start = i + 1;
                        let Some(len) = bytes.get(start..).and_then(|t| {
                            t.iter().position(|&b| matches!(b, b'"' | b'\\' | b'\n'))
                        }) else {
                            break None;
                        };
                        if bytes.get(start + len) != Some(&b'"') {
                            break None;
                        }
                        match src.get(start..start + len) {
                            Some(item) => items.push(item),
                            None => break None,
                        }
                        i = start + len + 1;
                    }
                    Some(b']') => break Some(i),
                    _ => break None,
                }
            };
            if let Some(close) = close
                && items.len() >= MIN
            {
                out.push(Found {
                    span: open..close + 1,
                    items: Items::Text(items),
                });
                from = close + 1;
            }
        }
        out
    }

    /// The key path of the empty array whose span is `span`, if the document has one.
    fn path_of(root: &Spanned<DeTable<'_>>, span: &std::ops::Range<usize>) -> Option<KeyPath> {
        fn walk(
            v: &Spanned<DeValue<'_>>,
            path: KeyPath,
            span: &std::ops::Range<usize>,
        ) -> Option<KeyPath> {
            let vs = v.span();
            if vs == *span {
                return v
                    .get_ref()
                    .as_array()
                    .is_some_and(|a| a.iter().next().is_none())
                    .then_some(path);
            }
            match v.get_ref() {
                DeValue::Table(t) => t
                    .iter()
                    .find_map(|(k, c)| walk(c, path.clone().key(k.get_ref()), span)),
                DeValue::Array(a) => a
                    .iter()
                    .enumerate()
                    .find_map(|(i, c)| walk(c, path.clone().index(i), span)),
                _ => None,
            }
        }
        root.get_ref()
            .iter()
            .find_map(|(k, c)| walk(c, KeyPath::root().key(k.get_ref()), span))
    }

    /// The model's list at `path`: a rule's source or destination, a forward's source.
    fn list_at<'a>(cfg: &'a mut Config, path: &KeyPath) -> Option<&'a mut Vec<Cidr>> {
        let fw = &mut cfg.firewall;
        match path.segments() {
            [Seg::Key(f), Seg::Key(r), Seg::Index(i), Seg::Key(which)]
                if f == "firewall" && r == "rules" =>
            {
                let rule = fw.rules.get_mut(*i)?;
                match which.as_str() {
                    "source" => Some(&mut rule.source),
                    "destination" => Some(&mut rule.destination),
                    _ => None,
                }
            }
            [Seg::Key(f), Seg::Key(fs), Seg::Key(name), Seg::Key(which)]
                if f == "firewall" && fs == "forwards" && which == "source" =>
            {
                fw.forwards
                    .iter_mut()
                    .find(|(k, _)| k.as_str() == name)
                    .map(|(_, f)| &mut f.source)
            }
            _ => None,
        }
    }

    /// The config of `src` when it has long lists or forward sections and is valid; `None`
    /// otherwise. The lists and sections are taken from `memo` when their text is there,
    /// and left in it.
    pub(super) fn load_valid(src: &str, memo: &mut LoadMemo) -> Option<Config> {
        let found = find(src, memo);
        let lists: Vec<_> = found.iter().map(|f| f.span.clone()).collect();
        let sections = super::forward_sections::scan(src, &lists).unwrap_or_default();
        if found.is_empty() && sections.is_empty() {
            return None;
        }
        // The sections to take from the memo: cut out of the text, whole lines.
        let hits: Vec<&super::forward_sections::Section<'_>> = sections
            .iter()
            .filter(|s| memo.forwards.contains_key(s.text))
            .collect();
        // The text with each list's inside and each hit cut out, and where each list's
        // `[]` is in it.
        let mut cuts: Vec<(std::ops::Range<usize>, bool)> = found
            .iter()
            .map(|f| (f.span.clone(), true))
            .chain(hits.iter().map(|h| (h.range.clone(), false)))
            .collect();
        cuts.sort_by_key(|(r, _)| r.start);
        let mut cut = String::with_capacity(src.len());
        let mut spans = Vec::with_capacity(found.len());
        let mut from = 0;
        for (range, list) in &cuts {
            cut.push_str(src.get(from..range.start)?);
            if *list {
                spans.push(cut.len()..cut.len() + 2);
                cut.push_str("[]");
            }
            from = range.end;
        }
        cut.push_str(src.get(from..)?);
        if !hits.is_empty() && !super::forward_sections::only_headers_name_forwards(&cut) {
            return None;
        }
        let (root, syntax) = DeTable::parse_recoverable(&cut);
        if !syntax.is_empty() || super::check_version(&cut, &root).is_some() {
            return None;
        }
        let paths = spans
            .iter()
            .map(|span| path_of(&root, span))
            .collect::<Option<Vec<_>>>()?;
        let mut cfg = Config::deserialize(toml::de::Deserializer::from(root)).ok()?;
        for h in &hits {
            let (name, forward) = memo.forwards.get(h.text)?;
            // Defined once more elsewhere: the full loader reports it.
            if cfg
                .firewall
                .forwards
                .insert(name.clone(), forward.clone())
                .is_some()
            {
                return None;
            }
        }
        // The lists parsed here, to remember if the config is valid.
        let mut new = Vec::new();
        for (f, path) in found.iter().zip(&paths) {
            let slot = list_at(&mut cfg, path)?;
            match &f.items {
                Items::Memo(i) => slot.clone_from(&memo.lists.get(*i)?.1),
                Items::Text(items) => {
                    *slot = items
                        .iter()
                        .map(|s| Cidr::parse(s).ok())
                        .collect::<Option<Vec<_>>>()?;
                    new.push((src.get(f.span.clone())?.to_owned(), slot.clone()));
                }
            }
        }
        if !crate::validate::check(&cfg).is_empty() {
            return None;
        }
        // The lists of the config loaded last replace those of the one before (the memo
        // holds no more than the config does); entries found again are moved, not copied.
        let mut old = std::mem::take(&mut memo.lists);
        let mut new = new.into_iter();
        for f in &found {
            let entry = match f.items {
                Items::Memo(i) => old.get_mut(i).map(std::mem::take),
                Items::Text(_) => new.next(),
            };
            // A list written twice is one entry: its second take is empty, and an empty
            // text would match anywhere.
            memo.lists.extend(entry.filter(|(t, _)| !t.is_empty()));
        }
        // The same for the sections: each one's forward, as this config has it.
        let mut old = std::mem::take(&mut memo.forwards);
        for sec in &sections {
            let entry = old.remove_entry(sec.text).or_else(|| {
                let key = crate::types::Name::parse(sec.name).ok()?;
                let (name, forward) = cfg.firewall.forwards.get_key_value(&key)?;
                Some((sec.text.to_owned(), (name.clone(), forward.clone())))
            });
            // (a section the config does not hold as such is simply not remembered)
            memo.forwards.extend(entry);
        }
        Some(cfg)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A config with a rule's source of `n` addresses, the list written as `list`
        /// writes each element, and its full load.
        fn config(n: usize, item: impl Fn(usize) -> String) -> String {
            let mut s = String::from(
                "version = 1\n[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\n\
                 [firewall.zones.wan]\ninterfaces = [\"wan\"]\n\
                 [[firewall.rules]]\nfrom = \"wan\"\naction = \"drop\"\nsource = [\n",
            );
            for i in 0..n {
                s.push_str(&item(i));
            }
            s.push_str("]\n");
            s
        }

        fn addr(i: usize) -> String {
            let a = 0x6440_0000u32 + u32::try_from(i).unwrap();
            format!("  \"{}/32\", # {i}\n", std::net::Ipv4Addr::from(a))
        }

        #[test]
        fn a_long_list_loads_as_the_full_loader_loads_it() {
            let src = config(1000, addr);
            let fast = load_valid(&src, &mut LoadMemo::default())
                .expect("the fast path takes a valid config");
            assert_eq!(fast.firewall.rules[0].source.len(), 1000);
            assert_eq!(Ok(fast), super::super::load_full(&src));
            // Short lists are left to the full loader.
            assert!(load_valid(&config(10, addr), &mut LoadMemo::default()).is_none());
        }

        #[test]
        fn a_mistake_in_or_beside_a_long_list_is_reported_by_the_full_loader() {
            // A bad address in the list, at its line.
            let bad = config(1000, |i| {
                if i == 700 {
                    "  \"100.64.999.1/32\",\n".into()
                } else {
                    addr(i)
                }
            });
            assert!(load_valid(&bad, &mut LoadMemo::default()).is_none());
            let e = super::super::load_str(&bad).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e:?}");
            assert_eq!(e.0[0].path.to_string(), "firewall.rules[0].source[700]");
            assert_eq!(e.0[0].line, 11 + 700);
            // A finding of the cross-checks elsewhere (an unknown zone), with the list valid.
            let other = config(1000, addr).replace("from = \"wan\"", "from = \"dmz\"");
            assert!(load_valid(&other, &mut LoadMemo::default()).is_none());
            let e = super::super::load_str(&other).unwrap_err();
            assert_eq!(e.0[0].path.to_string(), "firewall.rules[0].from");
            // A list with an escape is not this path's to read.
            let escaped = config(1000, |i| {
                if i == 3 {
                    "  \"100.64.0.\\u0033/32\",\n".into()
                } else {
                    addr(i)
                }
            });
            assert!(load_valid(&escaped, &mut LoadMemo::default()).is_none());
            assert!(super::super::load_str(&escaped).is_ok());
        }

        #[test]
        fn the_memo_gives_back_a_list_only_for_the_same_text() {
            let mut memo = LoadMemo::default();
            let first = config(1000, addr);
            let a = super::super::load_str_with(&first, &mut memo).unwrap();
            assert_eq!(memo.lists.len(), 1);
            // A change beside the list: the list comes from the memo, the change is read.
            let beside = first.replace("action = \"drop\"", "action = \"reject\"");
            let b = super::super::load_str_with(&beside, &mut memo).unwrap();
            assert_eq!(b.firewall.rules[0].source, a.firewall.rules[0].source);
            assert_eq!(Ok(b), super::super::load_full(&beside));
            // A change inside the list is never answered from the memo.
            let inside = config(1000, |i| if i == 5 { addr(999_999) } else { addr(i) });
            let c = super::super::load_str_with(&inside, &mut memo).unwrap();
            assert_eq!(Ok(c), super::super::load_full(&inside));
            // An invalid config leaves the memo as it was, and is reported in full.
            let held = memo.lists.clone();
            let bad = inside.replace("from = \"wan\"", "from = \"dmz\"");
            assert!(super::super::load_str_with(&bad, &mut memo).is_err());
            assert_eq!(memo.lists, held);
            // The same list twice (as two rules' sources): one entry, read back twice.
            let twice = format!(
                "{inside}[[firewall.rules]]\nfrom = \"wan\"\naction = \"drop\"\nsource = [\n{}]\n",
                (0..1000)
                    .map(|i| if i == 5 { addr(999_999) } else { addr(i) })
                    .collect::<String>()
            );
            for _ in 0..2 {
                let d = super::super::load_str_with(&twice, &mut memo).unwrap();
                assert_eq!(d.firewall.rules[1].source, d.firewall.rules[0].source);
                assert_eq!(Ok(d), super::super::load_full(&twice));
                assert_eq!(memo.lists.len(), 1);
            }
        }

        #[test]
        fn a_list_opened_in_a_comment_is_not_taken_for_a_list() {
            // The strings below the comment are bare TOML lines: a syntax error.
            let items: String = (0..300).map(addr).collect();
            let src = format!("{}# old = [\n{items}]\n", config(300, addr));
            assert!(load_valid(&src, &mut LoadMemo::default()).is_none());
            let e = super::super::load_str(&src).unwrap_err();
            assert_eq!(e.0[0].kind, crate::ErrorKind::Syntax, "{e:?}");
        }
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
