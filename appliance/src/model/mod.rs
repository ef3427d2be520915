//! The typed model of appliance.toml: the whole desired state of the box.
//!
//! Sections refer to each other by the names of named maps (`[vlans.iot]`,
//! `[firewall.zones.lan]`, `[shares.media]`). Every struct denies unknown keys, so a typo
//! is an error rather than a silently ignored setting. Doc comments here are the config
//! reference: they become the JSON Schema descriptions and docs/config.md.

mod firewall;
mod network;
mod services;
mod storage;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use firewall::*;
pub use network::*;
pub use services::*;
pub use storage::*;

use crate::types::{DomainName, Host, HttpUrl, IfName, LabelName, Name, SshPublicKey, Timezone};

/// The newest config format this firmware reads; older files are migrated on load.
pub const CURRENT_VERSION: u32 = 1;

/// The whole desired state of the appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of this file. Older versions are migrated when loaded.
    pub version: u32,
    /// Host name, time, and administrator access.
    #[serde(default)]
    pub system: System,
    /// Physical network interfaces. The key is the name netd gives the link (`wan`, `lan`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<IfName, Interface>,
    /// 802.1Q VLAN sub-interfaces. The key is the link name, like `iot`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vlans: BTreeMap<IfName, Vlan>,
    /// Software bridges. The key is the link name, like `br-lan`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub bridges: BTreeMap<IfName, Bridge>,
    /// DHCP servers, keyed by the interface, VLAN or bridge they serve.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dhcp: BTreeMap<IfName, DhcpServer>,
    /// Zones, policies, rules, NAT and port forwards.
    #[serde(default)]
    pub firewall: Firewall,
    /// WireGuard tunnels, keyed by link name (`wg0`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wireguard: BTreeMap<IfName, WireguardInterface>,
    /// The blocking DNS resolver.
    #[serde(default)]
    pub dns: Dns,
    /// ZFS pools, datasets and NAS users.
    #[serde(default)]
    pub storage: Storage,
    /// NFS and SMB shares of datasets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shares: BTreeMap<Name, Share>,
    /// Snapshot policies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<Name, SnapshotPolicy>,
    /// Replication jobs that push snapshots to another box.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replication: BTreeMap<Name, ReplicationJob>,
    /// Over-the-air updates.
    #[serde(default)]
    pub update: Update,
    /// The management API and its accounts.
    #[serde(default)]
    pub api: Api,
    /// How the daemons log: text or JSON lines in the journal, and an optional push to Loki.
    #[serde(default, skip_serializing_if = "Logging::is_default")]
    pub logging: Logging,
}

/// How the daemons log. Logs always go to the journal; Loki gets a copy when `loki_url`
/// is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// Write JSON lines (`ts` in Unix seconds, `level`, `target`, `message` and the
    /// event's fields) to the journal instead of text. Read when a daemon starts.
    #[serde(skip_serializing_if = "is_false")]
    pub json: bool,
    /// Push a copy of the logs to Loki, like `http://192.168.1.20:3100/loki/api/v1/push`
    /// (a URL without a path gets `/loki/api/v1/push`). No credentials in the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loki_url: Option<HttpUrl>,
    /// Labels added to every stream pushed to Loki, like `{ site = "home" }`. The appliance
    /// sets `job = "appliance"`, `host` (system.hostname), `unit` (the daemon) and `level`;
    /// a label given here replaces `job` or `host`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub loki_labels: BTreeMap<LabelName, String>,
}

impl Logging {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Host name, time, and administrator access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct System {
    /// Host name of the appliance, also served by dnsd as `<hostname>.<domain>`.
    pub hostname: DomainName,
    /// Local domain for DHCP clients and local names.
    pub domain: DomainName,
    /// IANA time zone; schedules (install windows) use it, snapshot names use UTC.
    pub timezone: Timezone,
    /// NTP servers, by name or address.
    pub ntp_servers: Vec<Host>,
    /// Public keys allowed to log in as the administrator over SSH.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin_ssh_keys: Vec<SshPublicKey>,
}

impl Default for System {
    fn default() -> Self {
        let name = |s: &str| DomainName::parse(s).ok();
        Self {
            hostname: name("appliance").unwrap_or_else(|| unreachable_default("hostname")),
            domain: name("lan").unwrap_or_else(|| unreachable_default("domain")),
            timezone: Timezone::parse("UTC").unwrap_or_else(|_| unreachable_default("timezone")),
            ntp_servers: ["0.pool.ntp.org", "1.pool.ntp.org"]
                .iter()
                .filter_map(|s| Host::parse(s).ok())
                .collect(),
            admin_ssh_keys: Vec::new(),
        }
    }
}

/// Built-in defaults are literals checked by unit tests; reaching this is a programming
/// error in this crate, never a reaction to input.
#[allow(clippy::panic)]
pub(crate) fn unreachable_default(what: &str) -> ! {
    panic!("built-in default for {what} does not parse")
}

/// Serde helper: `true` for boolean fields that default to on.
pub(crate) fn yes() -> bool {
    true
}
pub(crate) fn is_true(b: &bool) -> bool {
    *b
}
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}
