//! The resolvers netd's WAN DHCP client learned, read from the file it keeps
//! (`/run/appliance/wan-dns.json`, format in docs/network.md), for the upstreams' fallback:
//! they answer when no upstream is configured, and after the configured ones failed.
//!
//! The file is polled rather than watched with inotify because netd replaces it by rename
//! and /run may be recreated; a poll every two seconds costs one stat.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Where netd writes the servers.
pub const DEFAULT_PATH: &str = "/run/appliance/wan-dns.json";

const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The file's format version this dnsd reads.
const VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
struct WanDns {
    version: u32,
    #[serde(default)]
    links: BTreeMap<String, LinkDns>,
}

#[derive(Debug, Deserialize)]
struct LinkDns {
    #[serde(default)]
    servers: Vec<IpAddr>,
    /// Unix time the lease ends; its servers are not used after that.
    expires: u64,
}

/// Why the file's content was not used.
#[derive(Debug, thiserror::Error)]
pub enum WanDnsError {
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: format version {found}, this dnsd reads version {VERSION}")]
    Version { path: String, found: u32 },
}

/// The servers of every link whose lease has not ended at `now`, in link-name order,
/// without repeats.
pub fn parse(path: &Path, text: &str, now: u64) -> Result<Vec<IpAddr>, WanDnsError> {
    let file: WanDns = serde_json::from_str(text).map_err(|source| WanDnsError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    if file.version != VERSION {
        return Err(WanDnsError::Version {
            path: path.display().to_string(),
            found: file.version,
        });
    }
    let mut servers = Vec::new();
    for link in file.links.values().filter(|l| l.expires > now) {
        for s in &link.servers {
            if !servers.contains(s) {
                servers.push(*s);
            }
        }
    }
    Ok(servers)
}

/// Polls the file and reports the server list when it changes.
#[derive(Debug)]
pub struct WanDnsWatcher {
    path: PathBuf,
    current: Option<Vec<IpAddr>>,
}

impl WanDnsWatcher {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            current: None,
        }
    }

    /// The new server list when it differs from the last one reported. A missing file means
    /// no learned servers (netd removes its entry when the lease is lost); an unreadable or
    /// malformed one keeps the last list, because a half-understood file is no reason to
    /// drop working resolvers.
    pub fn poll(&mut self, now: u64) -> Option<Vec<IpAddr>> {
        let servers = match std::fs::read_to_string(&self.path) {
            Ok(text) => match parse(&self.path, &text, now) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "WAN DNS servers not updated");
                    return None;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "WAN DNS servers not updated");
                return None;
            }
        };
        if self.current.as_ref() == Some(&servers) {
            return None;
        }
        self.current = Some(servers.clone());
        Some(servers)
    }

    pub async fn run(mut self, on_change: impl Fn(Vec<IpAddr>) + Send) {
        loop {
            if let Some(servers) = self.poll(unix_now()) {
                tracing::info!(?servers, "resolvers learned on the WAN");
                on_change(servers);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"version":1,"links":{
        "wan":{"servers":["192.0.2.53","192.0.2.54"],"expires":1000},
        "wan2":{"servers":["192.0.2.54","198.51.100.1"],"expires":500}}}"#;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn servers_of_live_leases_in_order_without_repeats() {
        let p = Path::new("wan-dns.json");
        assert_eq!(
            parse(p, FILE, 100).unwrap(),
            ips(&["192.0.2.53", "192.0.2.54", "198.51.100.1"])
        );
        assert_eq!(
            parse(p, FILE, 500).unwrap(),
            ips(&["192.0.2.53", "192.0.2.54"]),
            "wan2's lease ended"
        );
        assert!(parse(p, FILE, 1000).unwrap().is_empty());
    }

    #[test]
    fn another_version_or_junk_is_an_error_naming_the_file() {
        let p = Path::new("/run/appliance/wan-dns.json");
        let e = parse(p, r#"{"version":2,"links":{}}"#, 0).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = parse(p, "{", 0).unwrap_err();
        assert!(
            e.to_string().starts_with("/run/appliance/wan-dns.json"),
            "{e}"
        );
    }

    #[test]
    fn the_watcher_reports_changes_only_and_keeps_the_list_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wan-dns.json");
        let mut w = WanDnsWatcher::new(&path);
        assert_eq!(w.poll(0), Some(vec![]), "no file: no learned servers");
        assert_eq!(w.poll(0), None);
        std::fs::write(&path, FILE).unwrap();
        assert_eq!(
            w.poll(100),
            Some(ips(&["192.0.2.53", "192.0.2.54", "198.51.100.1"]))
        );
        assert_eq!(w.poll(100), None);
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(w.poll(100), None, "a bad file keeps the last list");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.poll(100), Some(vec![]));
    }
}
