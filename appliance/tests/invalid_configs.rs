//! Every file in `tests/invalid/` is a config with known mistakes. Its header says which
//! diagnostics the loader must report, one per line:
//!
//! ```toml
//! # expect: vlans.iot.id 4 invalid_value
//! # hint: 802.1Q
//! ```
//!
//! `expect` is `<key path as displayed> <line> <kind>`; the loader must report exactly the
//! listed diagnostics, no more and no fewer (so echoes of an earlier error fail the test).
//! `hint` (optional, repeatable) is a substring that some diagnostic's hint must contain.
//! The header itself counts towards line numbers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fmt::Write as _;
use std::path::Path;

use appliance::{Diagnostics, ErrorKind, load_str};

/// What a case file says the loader must report.
#[derive(Debug, Default)]
struct Expectation {
    /// (path, line, kind), sorted.
    diags: Vec<(String, usize, String)>,
    hints: Vec<String>,
}

fn kind_name(k: ErrorKind) -> String {
    match serde_json::to_value(k) {
        Ok(serde_json::Value::String(s)) => s,
        other => panic!("ErrorKind {k:?} serialized as {other:?}"),
    }
}

fn parse_header(file: &Path, src: &str) -> Expectation {
    let mut e = Expectation::default();
    for line in src.lines() {
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        if let Some(rest) = comment.strip_prefix("expect:") {
            let mut parts = rest.trim().rsplitn(3, ' ');
            let (Some(kind), Some(line), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("{}: bad expect line {line:?}", file.display());
            };
            let line: usize = line
                .parse()
                .unwrap_or_else(|_| panic!("{}: bad line number in {rest:?}", file.display()));
            e.diags
                .push((path.trim().to_owned(), line, kind.trim().to_owned()));
        } else if let Some(rest) = comment.strip_prefix("hint:") {
            e.hints.push(rest.trim().to_owned());
        }
    }
    assert!(
        !e.diags.is_empty(),
        "{}: the header has no `# expect:` line",
        file.display()
    );
    e.diags.sort();
    e
}

fn actual(d: &Diagnostics) -> Vec<(String, usize, String)> {
    let mut v: Vec<_> = d
        .iter()
        .map(|d| (d.path.to_string(), d.line, kind_name(d.kind)))
        .collect();
    v.sort();
    v
}

/// Checks one case; returns a description of every way it failed.
fn check_case(file: &Path) -> Vec<String> {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let src = std::fs::read_to_string(file).unwrap();
    let want = parse_header(file, &src);
    let diags = match load_str(&src) {
        Ok(_) => return vec![format!("{name}: loaded without error")],
        Err(d) => d,
    };
    let mut problems = Vec::new();
    let got = actual(&diags);
    if got != want.diags {
        let mut msg = format!("{name}: diagnostics differ\n  expected:\n");
        for (p, l, k) in &want.diags {
            let _ = writeln!(msg, "    # expect: {p} {l} {k}");
        }
        msg.push_str("  got:\n");
        for d in diags.iter() {
            let _ = writeln!(
                msg,
                "    # expect: {} {} {}    ({})",
                d.path,
                d.line,
                kind_name(d.kind),
                d.message
            );
        }
        problems.push(msg);
    }
    for h in &want.hints {
        if !diags
            .iter()
            .any(|d| d.hint.as_deref().is_some_and(|x| x.contains(h.as_str())))
        {
            problems.push(format!(
                "{name}: no diagnostic has a hint containing {h:?}; hints: {:?}",
                diags.iter().map(|d| &d.hint).collect::<Vec<_>>()
            ));
        }
    }
    if !diags.iter().any(|d| d.line > 0 && !d.message.is_empty()) {
        problems.push(format!(
            "{name}: no diagnostic has a line and a message: {diags:?}"
        ));
    }
    for d in diags.iter() {
        if d.line == 0 || d.column == 0 || d.message.trim().is_empty() {
            problems.push(format!(
                "{name}: diagnostic without line, column or message: {d:?}"
            ));
        }
        if d.hint.as_deref().is_none_or(|h| h.trim().is_empty()) {
            problems.push(format!("{name}: diagnostic without a hint: {d:?}"));
        }
    }
    let rendered = diags.render(&src, &name, false);
    if !rendered.contains("nothing was changed") {
        problems.push(format!(
            "{name}: rendered output lacks \"nothing was changed\":\n{rendered}"
        ));
    }
    if !rendered.contains(&format!("{name}:")) {
        problems.push(format!(
            "{name}: rendered output does not name the file:\n{rendered}"
        ));
    }
    problems
}

#[test]
fn invalid_configs_report_the_expected_diagnostics() {
    let files = common::toml_files("invalid");
    assert!(
        files.len() >= 45,
        "only {} invalid cases in tests/invalid",
        files.len()
    );
    let problems: Vec<String> = files.iter().flat_map(|f| check_case(f)).collect();
    assert!(
        problems.is_empty(),
        "{} of {} invalid cases failed:\n\n{}",
        problems.len(),
        files.len(),
        problems.join("\n")
    );
}

#[test]
fn three_independent_mistakes_are_all_reported() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid/three_mistakes.toml");
    let src = std::fs::read_to_string(&file).unwrap();
    let want = parse_header(&file, &src);
    assert_eq!(want.diags.len(), 3, "the case must list three mistakes");
    let sections: std::collections::BTreeSet<_> = want
        .diags
        .iter()
        .map(|(p, _, _)| p.split('.').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sections.len(), 3, "the mistakes must be in three sections");
    let diags = load_str(&src).unwrap_err();
    assert_eq!(actual(&diags), want.diags);
    let rendered = diags.render(&src, "three_mistakes.toml", false);
    assert!(rendered.contains("3 errors in three_mistakes.toml; nothing was changed"));
}

#[test]
fn a_removed_entry_does_not_echo_as_an_unknown_reference() {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid/parse_error_no_echo.toml"),
    )
    .unwrap();
    let diags = load_str(&src).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags}");
    let d = &diags.0[0];
    assert_eq!(d.path.to_string(), "vlans.iot.id");
    assert_eq!(d.kind, ErrorKind::InvalidValue);
    // Without the bad id, the same file loads: the references to "iot" were fine.
    let fixed = src.replace("id = 5000", "id = 30");
    assert!(load_str(&fixed).is_ok(), "{:?}", load_str(&fixed).err());
}

#[test]
fn inline_secrets_get_the_secret_hint() {
    let src =
        "version = 1\n[wireguard.wg0]\naddresses = [\"10.8.0.1/24\"]\nprivate_key = \"aGVsbG8=\"\n";
    let diags = load_str(src).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags}");
    let d = &diags.0[0];
    assert_eq!(d.kind, ErrorKind::UnknownKey);
    assert_eq!(d.path.to_string(), "wireguard.wg0.private_key");
    assert_eq!(d.line, 4);
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("private_key_file"), "{hint}");
    assert!(hint.contains("/data"), "{hint}");
}
