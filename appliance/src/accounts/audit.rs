//! The audit log: one JSON object per line in `audit.log` under the API's state dir (mode
//! 0600), appended for every change made through the API, with who, when, which generation
//! and a summary of what changed. Never a secret: summaries name key paths, not values.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plan::{Op, Plan};

/// File name of the log in the state dir.
pub const FILE: &str = "audit.log";

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix time, seconds.
    pub time: u64,
    pub user: String,
    /// What was done: `config.put`, `config.apply`, `token.create`, ...
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// One line per change, like `+ vlans.iot` or `~ dns.upstreams`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub summary: Vec<String>,
}

/// The summary of a plan: one line per change with its key path, never its values (they
/// may hold password hashes).
pub fn summarize(plan: &Plan) -> Vec<String> {
    plan.changes
        .iter()
        .map(|c| {
            let sign = match c.op {
                Op::Add => '+',
                Op::Remove => '-',
                Op::Change => '~',
            };
            format!("{sign} {}", c.path)
        })
        .collect()
}

/// Appends `entry` as one line; a single write, so concurrent appends do not interleave.
pub fn append(dir: &Path, entry: &Entry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(FILE))?;
    f.write_all(&line)?;
    f.sync_data()
}

/// Every entry in the log, oldest first; unreadable lines are skipped.
pub fn read(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(dir.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn entries_append_as_private_json_lines_with_key_paths_only() {
        let dir = tempfile::tempdir().unwrap();
        let old = crate::default_config().unwrap();
        let mut new = old.clone();
        new.api.session_timeout = crate::types::Duration::from_secs(60);
        let plan = crate::plan::diff(Some(&old), &new);
        let summary = summarize(&plan);
        assert_eq!(summary, ["~ api.session_timeout"]);
        for g in [3, 4] {
            let e = Entry {
                time: 10,
                user: "alice".into(),
                action: "config.put".into(),
                generation: Some(g),
                summary: summary.clone(),
            };
            append(dir.path(), &e).unwrap();
        }
        let got = read(dir.path()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].generation, Some(4));
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !std::fs::read_to_string(dir.path().join(FILE))
                .unwrap()
                .contains("60")
        );
    }
}
