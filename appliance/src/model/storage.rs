//! ZFS storage, shares, snapshot policies and replication.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_false, is_true, yes};
use crate::types::{
    AbsPath, Cidr, DatasetName, DiskPath, Duration, Endpoint, Fingerprint, Name, SecretPath, Size,
};

/// ZFS pools, datasets and NAS users (stored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Pools, keyed by pool name. A pool that holds data is never destroyed or reshaped.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<DatasetName, Pool>,
    /// Datasets, keyed by full name (`[storage.datasets."tank/media"]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub datasets: BTreeMap<DatasetName, Dataset>,
    /// Local accounts for SMB and NFS file ownership.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<Name, NasUser>,
    /// Receive replication from other boxes (stored's mutual-TLS listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_listener: Option<ReplicationListener>,
}

/// stored's replication receiver: other boxes push their snapshots here over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationListener {
    /// Address and port to listen on, like `0.0.0.0:7410`.
    pub listen: Endpoint,
    /// This box's key and certificate, PEM in one file (made by `stored replication
    /// identity FILE`, which prints the fingerprint senders pin).
    pub identity_file: SecretPath,
    /// SHA-256 fingerprints of the senders' certificates allowed to push.
    pub allowed_clients: Vec<Fingerprint>,
    /// Datasets under which senders may receive (a job's `target_dataset` must be one of
    /// them or below one).
    pub datasets: Vec<DatasetName>,
}

/// A ZFS pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Top-level vdevs. The pool is created only on empty disks.
    pub vdevs: Vec<Vdev>,
    /// Hot spares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spares: Vec<DiskPath>,
    /// log2 of the sector size, 9..=16. Default: 12 (4 KiB sectors).
    #[serde(default = "default_ashift")]
    pub ashift: u8,
    /// How often to scrub; `0s` turns scheduled scrubs off.
    #[serde(default = "default_scrub")]
    pub scrub_interval: Duration,
}

fn default_ashift() -> u8 {
    12
}
fn default_scrub() -> Duration {
    Duration::from_secs(30 * 86_400)
}

/// Redundancy of a vdev.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VdevLayout {
    /// One disk, no redundancy.
    Single,
    /// Two or more disks holding the same data.
    Mirror,
    /// Single parity, at least 2 disks (3 or more recommended).
    Raidz1,
    /// Double parity, at least 3 disks.
    Raidz2,
    /// Triple parity, at least 4 disks.
    Raidz3,
}

impl VdevLayout {
    /// Fewest disks `zpool create` accepts for this layout.
    pub fn min_disks(self) -> usize {
        match self {
            Self::Single => 1,
            Self::Mirror | Self::Raidz1 => 2,
            Self::Raidz2 => 3,
            Self::Raidz3 => 4,
        }
    }
    /// Most disks in one vdev of this layout.
    pub fn max_disks(self) -> usize {
        match self {
            Self::Single => 1,
            _ => 255,
        }
    }
}

/// A top-level vdev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vdev {
    /// `single`, `mirror`, `raidz1`, `raidz2` or `raidz3`.
    pub layout: VdevLayout,
    /// Disks by stable path (`/dev/disk/by-id/...`).
    pub disks: Vec<DiskPath>,
}

/// Compression algorithm of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Off,
    Lz4,
    Zstd,
    Gzip,
    Zle,
}

/// A dataset and its properties. Unset properties are inherited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Dataset {
    /// Compression: `off`, `lz4`, `zstd`, `gzip` or `zle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Update access times on reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atime: Option<bool>,
    /// Record size, a power of two from 512 to 16M (`1M` for media).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recordsize: Option<Size>,
    /// Most space the dataset and its children may use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Size>,
    /// Space guaranteed to the dataset and its children.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Size>,
    /// Where to mount it. Default: `/mnt/<dataset>`. A dataset removed from the config is
    /// left alone and reported; stored never destroys one (`zfs destroy` it by hand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<AbsPath>,
}

/// A local account for file shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NasUser {
    /// Numeric user id. Default: assigned from 2000 up, stable across reboots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// File with the SMB password (mode 0600); without it the user cannot log in over SMB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smb_password_file: Option<SecretPath>,
}

/// A dataset shared over NFS, SMB or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// The dataset to share; its pool must be declared.
    pub dataset: DatasetName,
    /// Share read-only for everyone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// NFS export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsShare>,
    /// SMB share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smb: Option<SmbShare>,
    /// A NAS user (from `storage.users`) who owns the share's root directory; it is
    /// chowned to that user and group on apply. Default: left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Name>,
}

/// An NFS export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NfsShare {
    /// Who may mount it.
    pub clients: Vec<NfsClient>,
    /// Map a client's root to nobody (exports(5) `root_squash`). `false` lets root on
    /// the clients act as root on the share (`no_root_squash`, TrueNAS's "Maproot User"
    /// root) for clients whose options name neither.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub root_squash: bool,
}

/// Export options for NFS clients, as in exports(5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NfsOption {
    Rw,
    Ro,
    Sync,
    Async,
    RootSquash,
    NoRootSquash,
    AllSquash,
    Secure,
    Insecure,
    NoSubtreeCheck,
}

/// One client entry of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NfsClient {
    /// Client network, like `192.168.1.0/24`.
    pub network: Cidr,
    /// Options. Default: `rw` (or `ro` for a read-only share), `sync`, `root_squash`,
    /// `no_subtree_check`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<NfsOption>,
}

/// An SMB share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmbShare {
    /// Users (from `storage.users`) who may read and write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Name>,
    /// Users who may only read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_users: Vec<Name>,
    /// Allow guests without a password (read-only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub guest: bool,
    /// Show the share in network browsing.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub browseable: bool,
    /// Advertise the share as a Time Machine target.
    #[serde(default, skip_serializing_if = "is_false")]
    pub time_machine: bool,
}

/// How many snapshots to keep per period; a period with 0 takes none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPolicy {
    /// Datasets the policy covers; their pools must be declared.
    pub datasets: Vec<DatasetName>,
    /// Include child datasets (one atomic snapshot of the whole tree).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recursive: bool,
    /// Snapshots taken every `frequent_interval`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frequently: u32,
    /// Interval of the frequent snapshots, dividing an hour.
    #[serde(default = "default_frequent")]
    pub frequent_interval: Duration,
    /// Hourly snapshots to keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hourly: u32,
    /// Daily snapshots to keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub daily: u32,
    /// Weekly snapshots to keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weekly: u32,
    /// Monthly snapshots to keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub monthly: u32,
    /// Yearly snapshots to keep.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub yearly: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
fn default_frequent() -> Duration {
    Duration::from_secs(15 * 60)
}

/// How replication reaches the target box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// stored's own listener, with mutual TLS.
    #[default]
    Tls,
    /// the system ssh client to `stored replication serve-stdio` on the target (the same
    /// protocol; the target's host key pinned by `target_fingerprint`).
    Ssh,
    /// another pool on this box: lzc send into lzc receive through a pipe, no network and
    /// no encryption. The job has no `target`.
    Local,
}

/// A job that pushes snapshots of datasets to another box.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicationJob {
    /// The receiving box, `host:port`. Required for tls and ssh; a local job has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Endpoint>,
    /// `tls` (stored on the other side), `ssh`, or `local` (a pool on this box).
    #[serde(default)]
    pub transport: Transport,
    /// Dataset on the target (for a local job: on this box) under which the sources are
    /// received.
    pub target_dataset: DatasetName,
    /// Source datasets; their pools must be declared.
    pub datasets: Vec<DatasetName>,
    /// Include child datasets.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recursive: bool,
    /// How often to replicate.
    #[serde(default = "default_repl_interval")]
    pub interval: Duration,
    /// Bandwidth limit in bytes per second, like `10M`. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<Size>,
    /// SHA-256 fingerprint of the target's certificate (tls) or host key (ssh, as
    /// `ssh-keygen -l` prints it: `SHA256:...`). Required for ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_fingerprint: Option<Fingerprint>,
    /// File with this box's client key (tls: PEM key and certificate; ssh: OpenSSH
    /// private key, mode 0600). Required for ssh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<SecretPath>,
    /// The user ssh logs in as on the target (ssh only). Default: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user: Option<Name>,
    /// Set to false to keep the job in the file but paused.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// What to do when the target changed after the newest common snapshot: `refuse`
    /// (report it, change nothing) or `rollback` (roll the target back to the common
    /// snapshot, destroying its newer snapshots; a dataset is never destroyed).
    #[serde(default, skip_serializing_if = "OnDivergence::is_refuse")]
    pub on_divergence: OnDivergence,
}

/// A replication job's answer to a target that diverged from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDivergence {
    /// Report the divergence and send nothing.
    #[default]
    Refuse,
    /// Roll the target back to the newest common snapshot, then send.
    Rollback,
}

impl OnDivergence {
    fn is_refuse(&self) -> bool {
        *self == Self::Refuse
    }
}

fn default_repl_interval() -> Duration {
    Duration::from_secs(3600)
}
