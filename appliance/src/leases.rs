//! The DHCP lease file: netd writes the leases it hands out, dnsd reads them to answer A and
//! PTR queries for the names clients gave.
//!
//! One JSON document, `{"version": 1, "leases": [...]}`, replaced whole and atomically
//! (temp file, fsync, rename, fsync of the directory), so that a reader sees the old or
//! the new table and never half of one. Hostnames are stored as the clients sent them:
//! they are outside input, and each reader checks them for its own purpose.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::MacAddr;

/// Where netd keeps its leases on the appliance.
pub const DEFAULT_PATH: &str = "/data/dhcp/leases.json";

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// One lease handed out by the DHCP server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: IpAddr,
    /// The name the client asked for (DHCP option 12), unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// End of the lease, in seconds since the Unix epoch; `None` for a static lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

impl Lease {
    /// Whether the lease still holds at `now` (seconds since the Unix epoch).
    pub fn is_active(&self, now: u64) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

/// Why the lease file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a lease file ({source})")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}, this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LeaseError + '_ {
    move |source| LeaseError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The leases in `path`; a missing file (netd has not handed out any yet) is an empty list.
pub fn read(path: &Path) -> Result<Vec<Lease>, LeaseError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let file: LeaseFile = serde_json::from_slice(&text).map_err(|source| LeaseError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if file.version != VERSION {
        return Err(LeaseError::Version {
            path: path.to_owned(),
            found: file.version,
        });
    }
    Ok(file.leases)
}

/// Replaces `path` with `leases`, atomically; creates its directory if needed.
pub fn write(path: &Path, leases: &[Lease]) -> Result<(), LeaseError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let body = serde_json::to_vec_pretty(&LeaseFile {
        version: VERSION,
        leases: leases.to_vec(),
    })
    .map_err(|e| io_error(path)(io::Error::other(e)))?;
    let name = path
        .file_name()
        .map_or_else(|| "leases".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // Best effort: a leftover temp file is harmless and named as one.
        let _ = fs::remove_file(&tmp);
        return Err(io_error(path)(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str, host: Option<&str>, expires: Option<u64>) -> Lease {
        Lease {
            mac: MacAddr::parse("52:54:00:12:34:56").unwrap(),
            ip: ip.parse().unwrap(),
            hostname: host.map(str::to_owned),
            expires,
        }
    }

    #[test]
    fn a_missing_file_is_no_leases() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("leases.json")).unwrap().is_empty());
    }

    #[test]
    fn round_trip_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dhcp").join("leases.json");
        let a = vec![
            lease("192.168.1.50", Some("laptop"), Some(2_000_000_000)),
            lease("192.168.1.51", None, None),
        ];
        write(&path, &a).unwrap();
        assert_eq!(read(&path).unwrap(), a);
        write(&path, &a[..1]).unwrap();
        assert_eq!(read(&path).unwrap(), a[..1]);
        let left: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["leases.json"], "no temp files left behind");
    }

    #[test]
    fn the_format_is_stable_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        fs::write(
            &path,
            r#"{"version":1,"leases":[{"mac":"52:54:00:aa:bb:cc","ip":"192.168.1.9","hostname":"tv","expires":5}]}"#,
        )
        .unwrap();
        let l = read(&path).unwrap();
        assert_eq!(l[0].hostname.as_deref(), Some("tv"));
        assert!(l[0].is_active(4));
        assert!(!l[0].is_active(5));
        assert!(lease("192.168.1.9", None, None).is_active(u64::MAX));
    }

    #[test]
    fn damage_and_other_versions_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        fs::write(&path, b"{\"version\":1,\"leases\":[{\"mac\":\"zz\"").unwrap();
        let e = read(&path).unwrap_err();
        assert!(matches!(e, LeaseError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("leases.json"), "{e}");
        fs::write(&path, br#"{"version":2,"leases":[]}"#).unwrap();
        assert!(matches!(
            read(&path).unwrap_err(),
            LeaseError::Version { found: 2, .. }
        ));
    }
}
