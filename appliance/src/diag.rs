//! Diagnostics: what is wrong with a config file, where, and what to do about it.

use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::Serialize;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path into the config, displayed as `vlans.iot.id` or `firewall.rules[2].ports[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }
    pub fn key(mut self, k: impl fmt::Display) -> Self {
        self.0.push(Seg::Key(k.to_string()));
        self
    }
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
    pub fn segments(&self) -> &[Seg] {
        &self.0
    }
    /// Builds a path from keys given as strings, for tests and lookups.
    pub fn from_keys<I: IntoIterator<Item = S>, S: fmt::Display>(keys: I) -> Self {
        Self(keys.into_iter().map(|k| Seg::Key(k.to_string())).collect())
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_char('.')?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for KeyPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The kind of a mistake; tests assert on it, and tools can group by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not valid TOML.
    Syntax,
    /// A key the schema does not have (often a typo).
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// A value of the wrong TOML type (a string where a number belongs).
    WrongType,
    /// A value of the right type that is not allowed (VLAN 5000, a bad CIDR).
    InvalidValue,
    /// A name that refers to nothing declared.
    UnknownReference,
    /// The same thing declared twice where it must be unique.
    Duplicate,
    /// Address ranges that overlap where they must not.
    Overlap,
    /// An address outside the subnet it must lie in.
    OutsideSubnet,
    /// Settings that contradict each other.
    Conflict,
    /// A config version this firmware cannot read.
    Version,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::UnknownKey => "unknown key",
            Self::MissingKey => "missing key",
            Self::WrongType => "wrong type",
            Self::InvalidValue => "invalid value",
            Self::UnknownReference => "unknown reference",
            Self::Duplicate => "duplicate",
            Self::Overlap => "overlap",
            Self::OutsideSubnet => "outside subnet",
            Self::Conflict => "conflict",
            Self::Version => "version",
        }
    }
}

/// One mistake in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub kind: ErrorKind,
    /// Key path of the offending value, like `vlans.iot.id`.
    pub path: KeyPath,
    /// 1-based line; 0 when the file has no location for it (an empty file).
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    #[serde(skip)]
    pub span: Option<Range<usize>>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.path, self.message
        )
    }
}

/// Line and column (1-based, column in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// All the mistakes in one file, in the order of their position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Renders every diagnostic as a person reads it: the message, `file:line:col`, the
    /// source line with a marker under the value, and the hint. `color` adds ANSI colour.
    pub fn render(&self, src: &str, file: &str, color: bool) -> String {
        let (red, blue, bold, reset) = if color {
            ("\x1b[1;31m", "\x1b[1;34m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let mut out = String::new();
        for d in &self.0 {
            let _ = writeln!(
                out,
                "{red}error{reset}{bold}[{}]: {}: {}{reset}",
                d.kind.as_str(),
                d.path,
                d.message
            );
            let _ = writeln!(out, "  {blue}-->{reset} {file}:{}:{}", d.line, d.column);
            if let Some(text) = d.line.checked_sub(1).and_then(|l| src.lines().nth(l)) {
                let num = d.line.to_string();
                let pad = " ".repeat(num.len());
                let width = d
                    .span
                    .as_ref()
                    .and_then(|s| src.get(s.clone()))
                    .map(|s| s.lines().next().unwrap_or("").chars().count())
                    .unwrap_or(1)
                    .max(1);
                let _ = writeln!(out, "{blue}{pad} |{reset}");
                let _ = writeln!(out, "{blue}{num} |{reset} {text}");
                let _ = writeln!(
                    out,
                    "{blue}{pad} |{reset} {}{red}{}{reset}",
                    " ".repeat(d.column.saturating_sub(1)),
                    "^".repeat(width)
                );
            }
            if let Some(h) = &d.hint {
                let _ = writeln!(out, "  {blue}={reset} hint: {h}");
            }
            out.push('\n');
        }
        let n = self.0.len();
        let _ = writeln!(
            out,
            "{red}{n} error{} in {file}{reset}; nothing was changed",
            if n == 1 { "" } else { "s" }
        );
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_display() {
        let p = KeyPath::root()
            .key("firewall")
            .key("rules")
            .index(2)
            .key("ports");
        assert_eq!(p.to_string(), "firewall.rules[2].ports");
        let p = KeyPath::root()
            .key("storage")
            .key("datasets")
            .key("tank/media");
        assert_eq!(p.to_string(), "storage.datasets.\"tank/media\"");
    }

    #[test]
    fn line_and_column() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 12), (2, 6));
    }
}
