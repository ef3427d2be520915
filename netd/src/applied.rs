//! The record of what `netd serve` last applied: the generation and its config, in
//! `applied.json` beside the firewall's record (`/run/netd/` by default), replaced
//! atomically after each apply that changed the generation or its config.
//!
//! The kernel keeps what netd applied across a restart of netd, so the next netd must
//! know it too: a link switched to `ipv4 = "dhcp"` loses the static addresses the record's
//! config put there, and only the WireGuard tunnels of the record (or of the new config)
//! are netd's to remove. It lives under `/run` like the firewall's record: after a reboot
//! the kernel holds none of it either.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use appliance::Config;
use serde::{Deserialize, Serialize};

/// Format version of the file.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u32,
    pub generation: u64,
    pub config: Config,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot write {path}: {source}; after a restart netd would not know what it applied (check that the directory is writable)"
)]
pub struct RecordError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The record's path for the firewall record at `firewall_state`: the same directory.
pub fn path_beside(firewall_state: &Path) -> PathBuf {
    firewall_state.with_file_name("applied.json")
}

/// The WireGuard tunnels of `cfg`, by name.
pub fn tunnels(cfg: &Config) -> BTreeSet<String> {
    cfg.wireguard
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect()
}

/// The record at `path`; `None` when there is none. A damaged record or one of another
/// version is logged and ignored: netd then knows as little as on a first start.
pub fn load(path: &Path) -> Option<Applied> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the record of the last apply");
            return None;
        }
    };
    match serde_json::from_str::<Applied>(&text) {
        Ok(a) if a.version == VERSION => Some(a),
        Ok(a) => {
            tracing::warn!(path = %path.display(), version = a.version, "the record of the last apply has another format version; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the record of the last apply is damaged; ignored");
            None
        }
    }
}

/// Replaces the record at `path` atomically (temp file, fsync, rename, fsync of the
/// directory).
pub fn store(path: &Path, generation: u64, config: &Config) -> Result<(), RecordError> {
    let json = config_json(config).map_err(|e| RecordError {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    store_json(path, generation, &json)
}

/// The config's part of a record, serialized once: another generation of the same
/// config is recorded with it again ([`store_json`]) without serializing a large address
/// set anew.
pub fn config_json(config: &Config) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(config)
}

/// [`store`] with the config serialized already by [`config_json`]; the bytes are those
/// `serde_json` writes for [`Applied`].
pub fn store_json(path: &Path, generation: u64, config_json: &[u8]) -> Result<(), RecordError> {
    let err = |source| RecordError {
        path: path.to_owned(),
        source,
    };
    let head = format!(r#"{{"version":{VERSION},"generation":{generation},"config":"#);
    let mut bytes = Vec::with_capacity(head.len() + config_json.len() + 1);
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(config_json);
    bytes.push(b'}');
    appliance::tlsgen::write_atomic(path, &bytes, 0o600).map_err(err)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"version = 1
[interfaces.wan]
device = "eth0"
addresses = ["203.0.113.2/24"]
gateway = "203.0.113.1"

[interfaces.lan]
device = "eth1"
addresses = ["192.168.1.1/24", "fd00:1::1/64"]

[firewall.zones.lan]
interfaces = ["lan"]
input = "accept"

[firewall.zones.wan]
interfaces = ["wan"]
masquerade = true

[firewall.forwards.web]
protocol = "tcp"
port = 8080
to = "192.168.1.10"

[dhcp.lan]
start = "192.168.1.100"
end = "192.168.1.199"
lease_time = "2h"

[wireguard.wg0]
addresses = ["10.8.0.1/24"]
listen_port = 51820
"#;

    #[test]
    fn a_record_from_the_serialized_config_reads_back_as_serde_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied.json");
        let config = appliance::load_str(CONFIG).unwrap();
        store_json(&path, 7, &config_json(&config).unwrap()).unwrap();
        let expected = Applied {
            version: VERSION,
            generation: 7,
            config: config.clone(),
        };
        assert_eq!(
            std::fs::read(&path).unwrap(),
            serde_json::to_vec(&expected).unwrap()
        );
        assert_eq!(load(&path), Some(expected));
    }

    #[test]
    fn a_record_reads_back_as_it_was_written_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_beside(&dir.path().join("firewall.json"));
        assert_eq!(path, dir.path().join("applied.json"));
        assert!(load(&path).is_none());
        let cfg = appliance::load_str(CONFIG).unwrap();
        store(&path, 7, &cfg).unwrap();
        let back = load(&path).unwrap();
        assert_eq!((back.generation, &back.config), (7, &cfg));
        assert_eq!(tunnels(&back.config), BTreeSet::from(["wg0".to_owned()]));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        std::fs::write(&path, "{\"version\": 1, \"generation\"").unwrap();
        assert!(load(&path).is_none());
        std::fs::write(
            &path,
            serde_json::to_vec(&Applied { version: 2, ..back }).unwrap(),
        )
        .unwrap();
        assert!(load(&path).is_none());
    }
}
