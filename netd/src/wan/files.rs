//! The client's files: the stored lease (`<state dir>/wan-<link>.json`) and the DNS
//! servers for dnsd (`/run/appliance/wan-dns.json`), both replaced atomically.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::decide::Lease;

/// Format version of both files.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}: {source}; check that its directory exists and is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct StoredLease {
    version: u32,
    link: String,
    lease: Lease,
}

/// The DNS file: `{"version": 1, "links": {"wan": {"servers": ["192.0.2.53"],
/// "expires": 1795000000}}}`. One entry per DHCP link; a link without a lease is absent.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WanDns {
    pub version: u32,
    pub links: std::collections::BTreeMap<String, LinkDns>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkDns {
    pub servers: Vec<Ipv4Addr>,
    /// Unix seconds at which the lease that gave them ends.
    pub expires: u64,
}

pub fn lease_path(state_dir: &Path, link: &str) -> PathBuf {
    state_dir.join(format!("wan-{link}.json"))
}

/// The stored lease of `link`; `None` when there is none or it cannot be used (logged: a
/// damaged file only costs a DISCOVER without a requested address).
pub fn load_lease(state_dir: &Path, link: &str) -> Option<Lease> {
    let path = lease_path(state_dir, link);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the stored WAN lease");
            return None;
        }
    };
    match serde_json::from_str::<StoredLease>(&text) {
        Ok(s) if s.version == VERSION && s.link == link => Some(s.lease),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "stored WAN lease of another version or link; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "damaged stored WAN lease; ignored");
            None
        }
    }
}

pub fn store_lease(state_dir: &Path, link: &str, lease: &Lease) -> Result<(), FileError> {
    let stored = StoredLease {
        version: VERSION,
        link: link.to_string(),
        lease: lease.clone(),
    };
    let text = serde_json::to_string_pretty(&stored).unwrap_or_default();
    write_atomically(&lease_path(state_dir, link), text.as_bytes())
}

/// Held across the read-modify-write of the DNS file: every WAN link's client thread
/// writes its own entry into the one file, and two unserialized updates lose one.
static DNS_FILE: Mutex<()> = Mutex::new(());

/// Sets (or with `None` removes) `link`'s entry of the DNS file, keeping the others'.
pub fn update_dns(path: &Path, link: &str, entry: Option<LinkDns>) -> Result<(), FileError> {
    // A thread that panicked holding it left the file whole (it is replaced atomically).
    let _serial = DNS_FILE.lock().unwrap_or_else(|e| e.into_inner());
    let mut dns: WanDns = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    dns.version = VERSION;
    match entry {
        Some(e) => {
            dns.links.insert(link.to_string(), e);
        }
        None => {
            dns.links.remove(link);
        }
    }
    let text = serde_json::to_string_pretty(&dns).unwrap_or_default();
    write_atomically(path, text.as_bytes())
}

/// Temp file, fsync, rename, fsync of the directory: readers see the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    // A name of its own per write: two writers sharing one temp file would rename each
    // other's half-written bytes into place.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("json.{}.{n}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_links_updating_the_dns_file_at_once_keep_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wan-dns.json");
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for round in 0..40u64 {
                        let entry = LinkDns {
                            servers: vec![Ipv4Addr::new(192, 0, 2, i)],
                            expires: round,
                        };
                        update_dns(&path, &format!("wan{i}"), Some(entry)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let dns: WanDns = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let links: Vec<_> = dns.links.keys().cloned().collect();
        assert_eq!(links, (0..8).map(|i| format!("wan{i}")).collect::<Vec<_>>());
        assert!(dns.links.values().all(|l| l.expires == 39));
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
