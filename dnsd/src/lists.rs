//! Block-list parsing: hosts files, plain domain lists, adblock-style rules, wildcards and
//! regular expressions, in the shapes real lists have them.
//!
//! Real lists are messy: comments of three kinds, inline comments, Windows line endings,
//! `localhost` entries, IP addresses where names belong, rules for browsers that mean
//! nothing to DNS. Every line is either taken or counted as skipped; nothing is fatal,
//! because one bad line must not cost the user the other million.

use appliance::model::ListFormat;

use crate::matcher::DomainSet;

/// What a list asks for, ready to compile.
#[derive(Debug, Default, Clone)]
pub struct ParsedList {
    /// Names blocked together with their subdomains (`ads.example`, `||ads.example^`).
    pub block: DomainSet,
    /// Names whose subdomains are blocked but not the name itself (`*.ads.example`).
    pub block_subdomains: DomainSet,
    /// Exceptions (`@@||good.example^`): the name and its subdomains are never blocked.
    pub allow: DomainSet,
    /// Regular expressions matched against the whole query name, without the `/`s.
    pub regex: Vec<String>,
    pub stats: ParseStats,
}

/// How the lines of a list were used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParseStats {
    pub lines: u64,
    /// Blank lines and comments.
    pub comments: u64,
    /// Entries taken.
    pub entries: u64,
    /// Lines that are neither comments nor usable entries.
    pub skipped: u64,
}

/// Hosts-file names that every hosts file has and that must never be blocked.
const HOSTS_NOISE: [&str; 9] = [
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-allnodes",
    "ip6-allrouters",
];

/// Lines longer than this are junk (a DNS name has at most 253 bytes); they are skipped
/// without being held whole, so a list without newlines cannot cost its size in memory.
pub const MAX_LINE: usize = 4096;

impl ParsedList {
    /// An empty list for the next copy of `previous`, its sets sized for as many names (see
    /// [`DomainSet::against`]).
    pub fn against(previous: &crate::compiled::CompiledList) -> Self {
        Self {
            block: DomainSet::against(&previous.block),
            block_subdomains: DomainSet::against(&previous.block_subdomains),
            allow: DomainSet::against(&previous.allow),
            ..Self::default()
        }
    }

    fn take(&mut self, raw: &str, format: ListFormat) {
        self.stats.lines += 1;
        match parse_line(raw, format, self) {
            Line::Comment => self.stats.comments += 1,
            Line::Taken(n) => self.stats.entries += n,
            Line::Skipped => self.stats.skipped += 1,
        }
    }
}

/// Parses a whole list.
pub fn parse(text: &str, format: ListFormat) -> ParsedList {
    let mut out = ParsedList::default();
    for raw in text.lines() {
        out.take(raw, format);
    }
    out
}

/// Parses a list line by line from `input` into `out` (empty, or made with
/// [`ParsedList::against`]), holding one line at a time: a reload never holds the whole
/// list text beside the compiled lists.
pub fn parse_reader(
    mut input: impl std::io::BufRead,
    format: ListFormat,
    mut out: ParsedList,
) -> std::io::Result<ParsedList> {
    use std::io::{BufRead as _, Read as _};
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        if n == MAX_LINE && buf.last() != Some(&b'\n') {
            skip_line(&mut input)?;
            out.stats.lines += 1;
            out.stats.skipped += 1;
            continue;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.strip_suffix('\n').unwrap_or(&line);
        out.take(line.strip_suffix('\r').unwrap_or(line), format);
    }
    Ok(out)
}

/// Consumes the rest of an overlong line, newline included.
fn skip_line(input: &mut impl std::io::BufRead) -> std::io::Result<()> {
    loop {
        let avail = input.fill_buf()?;
        if avail.is_empty() {
            return Ok(());
        }
        if let Some(i) = avail.iter().position(|b| *b == b'\n') {
            input.consume(i + 1);
            return Ok(());
        }
        let n = avail.len();
        input.consume(n);
    }
}

enum Line {
    Comment,
    Taken(u64),
    Skipped,
}

fn parse_line(raw: &str, format: ListFormat, out: &mut ParsedList) -> Line {
    let line = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if line.is_empty() || line.starts_with('#') || line.starts_with('!') || line.starts_with('[') {
        return Line::Comment;
    }
    match format {
        ListFormat::Hosts => hosts_line(line, out),
        ListFormat::Domains => domain_line(line, out),
        ListFormat::Adblock => adblock_line(line, out),
        ListFormat::Auto => {
            if line.starts_with("||") || line.starts_with("@@") || line.starts_with('|') {
                adblock_line(line, out)
            } else if line.starts_with('/') && line.len() > 2 && line.ends_with('/') {
                domain_line(line, out)
            } else if line.split_whitespace().nth(1).is_some() {
                hosts_line(line, out)
            } else {
                domain_line(line, out)
            }
        }
    }
}

/// Strips a trailing `# comment` (hosts files and domain lists have them).
fn strip_inline_comment(line: &str) -> &str {
    match line.find(" #").or_else(|| line.find("\t#")) {
        Some(i) => line.get(..i).unwrap_or(line).trim_end(),
        None => line,
    }
}

fn hosts_line(line: &str, out: &mut ParsedList) -> Line {
    let line = strip_inline_comment(line);
    let mut parts = line.split_whitespace();
    let Some(ip) = parts.next() else {
        return Line::Comment;
    };
    if ip.parse::<std::net::IpAddr>().is_err() {
        // Some "hosts" lists are really plain domain lists; take such a line as one.
        if parts.next().is_none() {
            return domain_line(ip, out);
        }
        return Line::Skipped;
    }
    let names: Vec<&str> = parts.collect();
    if names.is_empty() {
        return Line::Skipped;
    }
    let (mut taken, mut noise) = (0, 0);
    for name in &names {
        if HOSTS_NOISE.contains(name) || name.parse::<std::net::IpAddr>().is_ok() {
            noise += 1;
            continue;
        }
        // A single label is a hosts-file alias, not something to block network-wide.
        if let Some(n) = normalize(name).filter(|n| n.contains('.')) {
            add(&mut out.block, &n);
            taken += 1;
        }
    }
    if taken > 0 {
        Line::Taken(taken)
    } else if noise == names.len() {
        Line::Comment
    } else {
        Line::Skipped
    }
}

fn domain_line(line: &str, out: &mut ParsedList) -> Line {
    let line = strip_inline_comment(line);
    if let Some(re) = line.strip_prefix('/').and_then(|l| l.strip_suffix('/')) {
        if re.is_empty() || regex::Regex::new(re).is_err() {
            return Line::Skipped;
        }
        out.regex.push(re.to_owned());
        return Line::Taken(1);
    }
    if let Some(rest) = line.strip_prefix("*.") {
        return match normalize(rest) {
            Some(n) => {
                add(&mut out.block_subdomains, &n);
                Line::Taken(1)
            }
            None => Line::Skipped,
        };
    }
    match normalize(line).filter(|n| n.contains('.')) {
        Some(n) if n.parse::<std::net::Ipv4Addr>().is_err() => {
            add(&mut out.block, &n);
            Line::Taken(1)
        }
        _ => Line::Skipped,
    }
}

/// Adblock syntax, as far as it means something for DNS: `||name^` blocks the name and its
/// subdomains, `@@||name^` excepts them. Rules with a path, a cosmetic part or options other
/// than `important` are for browsers and are skipped.
fn adblock_line(line: &str, out: &mut ParsedList) -> Line {
    if line.contains("##") || line.contains("#@#") || line.contains("#?#") {
        return Line::Skipped;
    }
    let (allow, rule) = match line.strip_prefix("@@") {
        Some(r) => (true, r),
        None => (false, line),
    };
    let (rule, options) = match rule.split_once('$') {
        Some((r, o)) => (r, Some(o)),
        None => (rule, None),
    };
    if let Some(o) = options
        && o.split(',').any(|opt| opt != "important")
    {
        return Line::Skipped;
    }
    let Some(body) = rule.strip_prefix("||") else {
        // A bare name in an adblock list is a plain domain rule.
        if !allow && !rule.starts_with('|') {
            return domain_line(rule, out);
        }
        return Line::Skipped;
    };
    let name = body
        .strip_suffix('^')
        .or_else(|| body.strip_suffix("^|"))
        .unwrap_or(body);
    if name.contains(['/', '^', '|', '*']) {
        return Line::Skipped;
    }
    match normalize(name) {
        Some(n) if allow => {
            add(&mut out.allow, &n);
            Line::Taken(1)
        }
        Some(n) => {
            add(&mut out.block, &n);
            Line::Taken(1)
        }
        None => Line::Skipped,
    }
}

/// Adds a name to a set. A set only refuses a name past 4 GiB of names, which a list
/// capped far below that cannot reach; if it ever does, the name is logged and dropped.
fn add(set: &mut DomainSet, name: &str) {
    if let Err(e) = set.insert(name.as_bytes(), 0) {
        tracing::warn!(name, error = %e, "list entry dropped");
    }
}

/// Lowercases a name and checks it is a plausible DNS name; `None` for junk. Underscores
/// are allowed because real tracking hosts use them.
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return None;
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `s` holds exactly `names` (a set keeps fingerprints, not the names).
    fn holds(s: &DomainSet, names: &[&str]) -> bool {
        s.len() == names.len() && names.iter().all(|n| s.get(n.as_bytes()).is_some())
    }

    #[test]
    fn hosts_files_as_they_are() {
        let text = "\u{feff}# Title: StevenBlack/hosts\r\n\
                    127.0.0.1 localhost\r\n\
                    127.0.0.1 localhost.localdomain\n\
                    255.255.255.255 broadcasthost\n\
                    ::1 localhost ip6-localhost ip6-loopback\n\
                    \n\
                    0.0.0.0 0.0.0.0\n\
                    0.0.0.0 ads.example.com # inline comment\n\
                    0.0.0.0\tTracker.Example.NET\n\
                    127.0.0.1 a.example b.example\n\
                    0.0.0.0 bad_name!.example\n\
                    0.0.0.0 singlelabel\n\
                    not-an-ip some.example\n";
        let p = parse(text, ListFormat::Hosts);
        assert!(holds(
            &p.block,
            &[
                "ads.example.com",
                "tracker.example.net",
                "a.example",
                "b.example"
            ]
        ));
        assert_eq!(p.stats.lines, 13);
        assert_eq!(p.stats.entries, 4);
        assert_eq!(p.stats.comments, 7, "{:?}", p.stats);
        assert_eq!(p.stats.skipped, 3, "{:?}", p.stats);
    }

    #[test]
    fn domain_lists_with_wildcards_and_regex() {
        let text = "ads.example\n*.track.example\n/^ad[0-9]+\\./\n/(unclosed/\nexample.org. \n1.2.3.4\nwith space.example\n";
        let p = parse(text, ListFormat::Domains);
        assert!(holds(&p.block, &["ads.example", "example.org"]));
        assert!(holds(&p.block_subdomains, &["track.example"]));
        assert_eq!(p.regex, ["^ad[0-9]+\\."]);
        assert_eq!(p.stats.skipped, 3);
    }

    #[test]
    fn adblock_rules_for_dns_only() {
        let text = "[Adblock Plus 2.0]\n! comment\n||ads.example^\n@@||good.ads.example^\n||imp.example^$important\n||tp.example^$third-party\n||path.example/ads.js\nexample.com##.banner\n|http://x.example^\nplain.example\n";
        let p = parse(text, ListFormat::Adblock);
        assert!(holds(
            &p.block,
            &["ads.example", "imp.example", "plain.example"]
        ));
        assert!(holds(&p.allow, &["good.ads.example"]));
        assert_eq!(p.stats.comments, 2);
        assert_eq!(p.stats.skipped, 4);
    }

    #[test]
    fn auto_detects_per_line() {
        let text =
            "0.0.0.0 h.example\n||a.example^\n@@||ok.example^\nd.example\n*.w.example\n/^x/\n";
        let p = parse(text, ListFormat::Auto);
        assert!(holds(&p.block, &["h.example", "a.example", "d.example"]));
        assert!(holds(&p.allow, &["ok.example"]));
        assert!(holds(&p.block_subdomains, &["w.example"]));
        assert_eq!(p.regex, ["^x"]);
        assert_eq!(p.stats.skipped, 0);
    }

    #[test]
    fn junk_never_panics() {
        let junk = "\0\u{7f}||^\n@@\n||\n$\n/ /\n*.\n0.0.0.0\n::\n|||||\n\u{1F600}.example\n";
        for f in [
            ListFormat::Auto,
            ListFormat::Hosts,
            ListFormat::Domains,
            ListFormat::Adblock,
        ] {
            let p = parse(junk, f);
            assert!(p.block.is_empty(), "{f:?}: {:?}", p.block);
        }
    }

    #[test]
    fn read_line_by_line_as_from_one_buffer() {
        let long = format!("0.0.0.0 {}.example\n", "a".repeat(3 * MAX_LINE));
        let text = format!(
            "\u{feff}# hosts\r\n0.0.0.0 a.example\r\n{long}||b.example^\n\n@@||ok.example^\n*.w.example\nlast.example"
        );
        let whole = parse(&text, ListFormat::Auto);
        for cap in [1, 7, 64, 1 << 16] {
            let r = std::io::BufReader::with_capacity(cap, text.as_bytes());
            let p = parse_reader(r, ListFormat::Auto, ParsedList::default()).unwrap();
            for (a, b) in [
                (&p.block, &whole.block),
                (&p.allow, &whole.allow),
                (&p.block_subdomains, &whole.block_subdomains),
            ] {
                assert_eq!(a.len(), b.len(), "buffer {cap}");
            }
            assert!(holds(&p.block, &["a.example", "b.example", "last.example"]));
            assert!(holds(&p.allow, &["ok.example"]));
            assert!(holds(&p.block_subdomains, &["w.example"]));
            assert_eq!(p.stats, whole.stats, "buffer {cap}");
        }
        assert!(holds(
            &whole.block,
            &["a.example", "b.example", "last.example"]
        ));
        assert_eq!(whole.stats.skipped, 1, "the overlong line");
    }
}
