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
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use appliance::Config;
use appliance::types::Cidr;
use serde::{Deserialize, Serialize};

/// Format version of the file. Version 2 keeps long address lists in side files; a
/// version 1 record (the whole config inline) is still read.
pub const VERSION: u32 = 2;

/// Address lists at least this long are kept in a side file of their own,
/// `applied.set-<fingerprint>.json` beside the record, named by their content: a new
/// generation that did not change a 100k-address blocklist rewrites only the small
/// record, not 2 MB of addresses.
const SIDE_MIN: usize = 256;

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

/// Where in the config a list kept in a side file belongs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ListAt {
    RuleSource(usize),
    RuleDestination(usize),
    ForwardSource(String),
}

/// A list kept in a side file: where it goes and what the file must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SideRef {
    at: ListAt,
    len: usize,
    fnv: u64,
}

impl SideRef {
    fn file_name(&self) -> String {
        format!("applied.set-{:016x}-{}.json", self.fnv, self.len)
    }
}

/// FNV-1a over the networks (as the firewall's record does): stable across builds,
/// unlike std's hasher, so a restarted netd of another build finds the same names.
fn fnv(list: &[Cidr]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for c in list {
        match c.addr() {
            IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
            IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
        }
        eat(c.prefix_len());
    }
    h
}

/// The long lists of `cfg`, with where they go.
fn long_lists(cfg: &Config) -> Vec<(ListAt, &[Cidr])> {
    let fw = &cfg.firewall;
    let rules = fw.rules.iter().enumerate().flat_map(|(i, r)| {
        [
            (ListAt::RuleSource(i), r.source.as_slice()),
            (ListAt::RuleDestination(i), r.destination.as_slice()),
        ]
    });
    let forwards = (fw.forwards.iter()).map(|(name, f)| {
        (
            ListAt::ForwardSource(name.as_str().to_owned()),
            f.source.as_slice(),
        )
    });
    rules
        .chain(forwards)
        .filter(|(_, l)| l.len() >= SIDE_MIN)
        .collect()
}

/// The list of `cfg` at `at`, if the config has that place.
fn list_mut<'a>(cfg: &'a mut Config, at: &ListAt) -> Option<&'a mut Vec<Cidr>> {
    let fw = &mut cfg.firewall;
    match at {
        ListAt::RuleSource(i) => fw.rules.get_mut(*i).map(|r| &mut r.source),
        ListAt::RuleDestination(i) => fw.rules.get_mut(*i).map(|r| &mut r.destination),
        ListAt::ForwardSource(name) => (fw.forwards.iter_mut())
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, f)| &mut f.source),
    }
}

/// The record at `path`; `None` when there is none. A damaged record (or side file) or
/// one of another version is logged and ignored: netd then knows as little as on a
/// first start.
pub fn load(path: &Path) -> Option<Applied> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the record of the last apply");
            return None;
        }
    };
    #[derive(Deserialize)]
    struct Stored {
        version: u32,
        generation: u64,
        config: Config,
        #[serde(default)]
        lists: Vec<SideRef>,
    }
    let stored = match serde_json::from_str::<Stored>(&text) {
        Ok(a) if a.version == VERSION || a.version == 1 => a,
        Ok(a) => {
            tracing::warn!(path = %path.display(), version = a.version, "the record of the last apply has another format version; ignored");
            return None;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the record of the last apply is damaged; ignored");
            return None;
        }
    };
    let mut config = stored.config;
    for side in &stored.lists {
        let file = path.with_file_name(side.file_name());
        let list = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Vec<Cidr>>(&b).map_err(|e| e.to_string()))
            .and_then(|l| {
                if l.len() == side.len && fnv(&l) == side.fnv {
                    Ok(l)
                } else {
                    Err("it holds other addresses than the record names".to_owned())
                }
            });
        match (list, list_mut(&mut config, &side.at)) {
            (Ok(list), Some(slot)) => *slot = list,
            (Err(e), _) => {
                tracing::warn!(path = %file.display(), error = %e, "a side file of the record of the last apply cannot be read; the record is ignored");
                return None;
            }
            (Ok(_), None) => {
                tracing::warn!(path = %path.display(), at = ?side.at, "the record names a list its config does not have; ignored");
                return None;
            }
        }
    }
    Some(Applied {
        version: VERSION,
        generation: stored.generation,
        config,
    })
}

/// Replaces the record at `path` atomically (side files first, then the record: temp
/// file, fsync, rename, fsync of the directory).
pub fn store(path: &Path, generation: u64, config: &Config) -> Result<(), RecordError> {
    let body = config_json(path, config)?;
    store_json(path, generation, &body)
}

/// The config's part of a record, serialized once, its long lists written to their side
/// files (those not there yet): another generation of the same config is recorded with
/// it again ([`store_json`]) without serializing anything anew.
#[derive(Debug, Clone)]
pub struct RecordBody {
    json: Vec<u8>,
    files: BTreeSet<String>,
}

/// Serializes `config` for the record at `path`, writing the side files of its long
/// lists that do not exist yet (a file's name is its content's fingerprint, so one that
/// exists holds these addresses: it was renamed into place complete).
pub fn config_json(path: &Path, config: &Config) -> Result<RecordBody, RecordError> {
    let err = |p: &Path, source| RecordError {
        path: p.to_owned(),
        source,
    };
    let long = long_lists(config);
    let mut refs = Vec::with_capacity(long.len());
    let mut files = BTreeSet::new();
    for (at, list) in &long {
        let side = SideRef {
            at: at.clone(),
            len: list.len(),
            fnv: fnv(list),
        };
        let file = path.with_file_name(side.file_name());
        if !file.exists() {
            let bytes =
                serde_json::to_vec(list).map_err(|e| err(&file, std::io::Error::other(e)))?;
            appliance::tlsgen::write_atomic(&file, &bytes, 0o600).map_err(|e| err(&file, e))?;
        }
        files.insert(side.file_name());
        refs.push(side);
    }
    // Only the long lists are taken out; copying the rest is cheaper than serializing
    // them again.
    let json = if long.is_empty() {
        serde_json::to_vec(config)
    } else {
        let mut short = config.clone();
        for side in &refs {
            if let Some(slot) = list_mut(&mut short, &side.at) {
                *slot = Vec::new();
            }
        }
        serde_json::to_vec(&short)
    }
    .and_then(|mut json| {
        json.extend_from_slice(br#","lists":"#);
        serde_json::to_writer(&mut json, &refs)?;
        Ok(json)
    })
    .map_err(|e| err(path, std::io::Error::other(e)))?;
    Ok(RecordBody { json, files })
}

/// [`store`] with the config serialized already by [`config_json`]. Side files no
/// longer named are removed after the record is in place.
pub fn store_json(path: &Path, generation: u64, body: &RecordBody) -> Result<(), RecordError> {
    let err = |source| RecordError {
        path: path.to_owned(),
        source,
    };
    let head = format!(r#"{{"version":{VERSION},"generation":{generation},"config":"#);
    let mut bytes = Vec::with_capacity(head.len() + body.json.len() + 1);
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(&body.json);
    bytes.push(b'}');
    appliance::tlsgen::write_atomic(path, &bytes, 0o600).map_err(err)?;
    if let Some(dir) = path.parent() {
        // One fsync of the directory makes the side files' renames and the record's
        // durable together.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("applied.set-") && !body.files.contains(name.as_ref()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
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

    /// CONFIG with a drop rule whose source list is `n` addresses from `first`.
    fn with_blocklist(first: u32, n: u32) -> Config {
        let mut text =
            format!("{CONFIG}[[firewall.rules]]\nfrom = \"wan\"\naction = \"drop\"\nsource = [");
        for i in first..first + n {
            text.push_str(&format!(
                "\"{}/32\",",
                std::net::Ipv4Addr::from(0x6440_0000 + i)
            ));
        }
        text.push_str("]\n");
        appliance::load_str(&text).unwrap()
    }

    fn side_files(dir: &Path) -> Vec<(String, std::time::SystemTime)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("applied.set-"))
            .map(|e| {
                let m = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_long_list_is_kept_in_a_side_file_written_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied.json");
        let cfg = with_blocklist(0, 1000);
        store(&path, 1, &cfg).unwrap();
        let first = side_files(dir.path());
        assert_eq!(first.len(), 1, "{first:?}");
        let record = std::fs::read_to_string(&path).unwrap();
        assert!(
            !record.contains("100.64.0.1/32") && record.len() < 4096,
            "the addresses are in the side file, not the record: {record}"
        );
        assert_eq!(load(&path).unwrap().config, cfg);

        // Another generation with one more forward: the side file is the same one, not
        // written again; the record still reads back whole (as after a restart).
        let mut plus = cfg.clone();
        let fwd = plus.firewall.forwards.values().next().unwrap().clone();
        plus.firewall.forwards.insert(
            "web2".parse().unwrap(),
            appliance::model::PortForward {
                port: appliance::types::PortRange::parse("8081").unwrap(),
                ..fwd
            },
        );
        let body = config_json(&path, &plus).unwrap();
        store_json(&path, 2, &body).unwrap();
        assert_eq!(side_files(dir.path()), first, "untouched");
        let back = load(&path).unwrap();
        assert_eq!((back.generation, &back.config), (2, &plus));

        // A changed list gets a file of its own; the old one goes.
        let other = with_blocklist(1, 1000);
        store(&path, 3, &other).unwrap();
        let now = side_files(dir.path());
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].0, first[0].0);
        assert_eq!(load(&path).unwrap().config, other);

        // A side file that does not hold what the record names: the record is ignored.
        std::fs::write(dir.path().join(&now[0].0), "[\"100.64.0.9/32\"]").unwrap();
        assert!(load(&path).is_none());
        std::fs::remove_file(dir.path().join(&now[0].0)).unwrap();
        assert!(load(&path).is_none());
    }

    #[test]
    fn a_version_1_record_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied.json");
        let config = appliance::load_str(CONFIG).unwrap();
        let old = serde_json::json!({"version": 1, "generation": 4, "config": &config});
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let back = load(&path).unwrap();
        assert_eq!((back.generation, back.config), (4, config));
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
            serde_json::to_vec(&Applied { version: 3, ..back }).unwrap(),
        )
        .unwrap();
        assert!(load(&path).is_none());
    }
}
