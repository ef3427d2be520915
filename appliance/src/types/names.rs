//! Names: of config objects, kernel interfaces, domains, ZFS datasets and time zones.

use std::fmt;

use super::{ValueError, string_newtype};

/// The name of an object in a named map (`[vlans.iot]`, `[shares.media]`), used by other
/// sections to refer to it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "names are 1 to 63 characters: lowercase letters, digits, '-' and '_', starting with a letter";
        if s.is_empty() || s.len() > 63 {
            return Err(ValueError::new(
                format!("name {s:?} must be 1 to 63 characters long"),
                HINT,
            ));
        }
        let mut chars = s.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
            return Err(ValueError::new(
                format!("name {s:?} must start with a lowercase letter"),
                HINT,
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(ValueError::new(format!("name {s:?} contains {c:?}"), HINT));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    Name,
    "object name: lowercase letters, digits, '-' and '_', starting with a letter",
    Some("^[a-z][a-z0-9_-]{0,62}$")
);

/// A Linux network interface name: what `ip link` shows. At most 15 bytes (IFNAMSIZ - 1),
/// no '/', whitespace or ':', and not "." or "..".
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "interface names are 1 to 15 bytes of letters, digits, '-', '_' and '.', like eth0 or lan.20";
        if s.is_empty() || s.len() > 15 {
            return Err(ValueError::new(
                format!(
                    "interface name {s:?} is {} bytes; the kernel allows 1 to 15",
                    s.len()
                ),
                HINT,
            ));
        }
        if s == "." || s == ".." {
            return Err(ValueError::new(
                format!("{s:?} is not an interface name"),
                HINT,
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(ValueError::new(
                format!("interface name {s:?} contains {c:?}"),
                HINT,
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    IfName,
    "Linux interface name, 1 to 15 bytes",
    Some("^[A-Za-z0-9_.-]{1,15}$")
);

fn check_label(label: &str, whole: &str, hint: &'static str) -> Result<(), ValueError> {
    if label.is_empty() || label.len() > 63 {
        return Err(ValueError::new(
            format!(
                "domain {whole:?} has a label of {} bytes; labels are 1 to 63",
                label.len()
            ),
            hint,
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(ValueError::new(
            format!("domain {whole:?}: label {label:?} starts or ends with '-'"),
            hint,
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(ValueError::new(
            format!("domain {whole:?} contains {c:?}"),
            hint,
        ));
    }
    Ok(())
}

/// A DNS name such as `nas.lan` or `dns.quad9.net`; stored lowercase, without a trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "a domain is dot-separated labels of letters, digits and '-', like nas.lan";
        let trimmed = s.strip_suffix('.').unwrap_or(s);
        if trimmed.is_empty() || trimmed.len() > 253 {
            return Err(ValueError::new(
                format!("domain {s:?} must be 1 to 253 characters"),
                HINT,
            ));
        }
        for label in trimmed.split('.') {
            check_label(label, s, HINT)?;
        }
        Ok(Self(trimmed.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(DomainName, "DNS domain name, like nas.lan", None);

/// An allow or deny entry: an exact domain (which also covers its subdomains when used
/// for blocking), a wildcard `*.example.com`, or a regular expression `/.../`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DomainPattern {
    Exact(DomainName),
    Wildcard(DomainName),
    Regex(String),
}

impl DomainPattern {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "use example.com, *.example.com or /regex/";
        if let Some(inner) = s.strip_prefix('/') {
            let Some(re) = inner.strip_suffix('/') else {
                return Err(ValueError::new(
                    format!("regex pattern {s:?} has no closing '/'"),
                    HINT,
                ));
            };
            if re.is_empty() {
                return Err(ValueError::new("empty regex pattern", HINT));
            }
            check_regex(re).map_err(|m| ValueError::new(format!("regex {s:?}: {m}"), HINT))?;
            return Ok(Self::Regex(re.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("*.") {
            return Ok(Self::Wildcard(DomainName::parse(rest)?));
        }
        if s.contains('*') {
            return Err(ValueError::new(
                format!("pattern {s:?}: '*' is only allowed as a leading '*.'"),
                HINT,
            ));
        }
        Ok(Self::Exact(DomainName::parse(s)?))
    }
}

/// A light syntax check of a regular expression: balanced groups and classes and no
/// dangling escape. dnsd compiles it for real; this catches the common typos early,
/// without pulling a regex engine into the config crate.
fn check_regex(re: &str) -> Result<(), String> {
    let mut depth = 0i32;
    let mut in_class = false;
    let mut chars = re.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => {
                return Err("ends with a lone '\\'".into());
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            _ => {}
        }
    }
    if in_class {
        return Err("unclosed '['".into());
    }
    if depth != 0 {
        return Err("unclosed '('".into());
    }
    Ok(())
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(d) => write!(f, "{d}"),
            Self::Wildcard(d) => write!(f, "*.{d}"),
            Self::Regex(r) => write!(f, "/{r}/"),
        }
    }
}
string_newtype!(
    DomainPattern,
    "domain pattern: example.com, *.example.com or /regex/",
    None
);

/// A ZFS dataset name: `pool/child/grandchild`. The first component is the pool.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "a dataset is pool/path, made of letters, digits, '_', '-', '.', ':' and ' ', like tank/media";
        if s.is_empty() || s.len() > 255 {
            return Err(ValueError::new(
                format!("dataset name {s:?} must be 1 to 255 characters"),
                HINT,
            ));
        }
        if s.contains('@') || s.contains('#') {
            return Err(ValueError::new(
                format!("{s:?} names a snapshot or bookmark, not a dataset"),
                HINT,
            ));
        }
        for (i, part) in s.split('/').enumerate() {
            if part.is_empty() {
                return Err(ValueError::new(
                    format!("dataset name {s:?} has an empty component"),
                    HINT,
                ));
            }
            if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ')))
            {
                return Err(ValueError::new(
                    format!("dataset name {s:?} contains {c:?}"),
                    HINT,
                ));
            }
            if i == 0 && !part.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(ValueError::new(
                    format!("pool name {part:?} must start with a letter"),
                    HINT,
                ));
            }
            if part == "." || part == ".." {
                return Err(ValueError::new(
                    format!("dataset name {s:?} contains {part:?}"),
                    HINT,
                ));
            }
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The pool this dataset lives in.
    pub fn pool(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
    /// Whether `self` is `other` or lies below it.
    pub fn is_within(&self, other: &DatasetName) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}
impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(DatasetName, "ZFS dataset name, like tank/media", None);

/// An IANA time zone name such as `Europe/Berlin` or `UTC`. The form is checked here; the
/// image's tzdata decides whether the zone exists, and netd reports an unknown one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timezone(String);

impl Timezone {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "use an IANA zone name such as UTC or Europe/Berlin";
        if s.is_empty() || s.len() > 64 || s.starts_with('/') || s.contains("..") {
            return Err(ValueError::new(
                format!("{s:?} is not a time zone name"),
                HINT,
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+')))
        {
            return Err(ValueError::new(
                format!("time zone {s:?} contains {c:?}"),
                HINT,
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for Timezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    Timezone,
    "IANA time zone, like Europe/Berlin",
    Some("^[A-Za-z0-9/_+-]{1,64}$")
);

/// The name of a log stream label for Loki (`site`, `env`): Prometheus' label syntax,
/// without the `__` prefix Loki keeps for itself.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelName(String);

impl LabelName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "label names are 1 to 63 of a-z A-Z 0-9 _, not starting with a digit or with __, like site";
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok
            || s.len() > 63
            || s.starts_with("__")
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ValueError::new(format!("{s:?} is not a label name"), HINT));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(
    LabelName,
    "log label name: a-z A-Z 0-9 _, not starting with a digit or __",
    Some("^[a-zA-Z_][a-zA-Z0-9_]{0,62}$")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::parse("iot").is_ok());
        assert!(Name::parse("Iot").is_err());
        assert!(Name::parse("1ot").is_err());
        assert!(Name::parse("").is_err());
        assert!(IfName::parse("eth0.100").is_ok());
        assert!(IfName::parse("a-very-long-name").is_err());
        assert!(IfName::parse("eth 0").is_err());
        assert!(IfName::parse("..").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            DomainName::parse("NAS.Lan.").map(|d| d.to_string()),
            Ok("nas.lan".to_owned())
        );
        assert!(DomainName::parse("-bad.lan").is_err());
        assert!(DomainName::parse("a..b").is_err());
        assert!(matches!(
            DomainPattern::parse("*.ads.example"),
            Ok(DomainPattern::Wildcard(_))
        ));
        assert!(matches!(
            DomainPattern::parse("/^ad[0-9]+\\./"),
            Ok(DomainPattern::Regex(_))
        ));
        assert!(DomainPattern::parse("/(unclosed/").is_err());
        assert!(DomainPattern::parse("a*.b").is_err());
    }

    #[test]
    fn datasets() {
        let d = DatasetName::parse("tank/media/photos");
        assert!(d.is_ok());
        let Ok(d) = d else { return };
        assert_eq!(d.pool(), "tank");
        let Ok(parent) = DatasetName::parse("tank/media") else {
            return;
        };
        assert!(d.is_within(&parent));
        let Ok(other) = DatasetName::parse("tank/med") else {
            return;
        };
        assert!(!d.is_within(&other));
        assert!(DatasetName::parse("tank//x").is_err());
        assert!(DatasetName::parse("tank@snap").is_err());
        assert!(DatasetName::parse("1tank").is_err());
    }

    #[test]
    fn label_names() {
        for ok in ["site", "_x", "Env_2"] {
            assert!(LabelName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "2x", "__name__", "a-b", "a.b"] {
            assert!(LabelName::parse(bad).is_err(), "{bad}");
        }
    }
}
