//! stored: ZFS pools, datasets and snapshot policies (replication and shares come with
//! their own work). See README.md for what this crate owns.
//!
//! - [`zfs`]: the [`zfs::Zfs`] adapter over libzfs_core and the zfs/zpool tools, and its
//!   in-memory fake.
//! - [`snapshots`]: snapshot names, what is due, and the pruning plan (pure).
//! - [`pools`]: the pools and datasets plan (pure) and its apply.
//! - [`scrub`]: when a pool's scheduled scrub is due (pure).
//! - [`shares`]: NFS exports and SMB shares of datasets, and Samba users.
//! - [`accounts`]: the NAS users' Unix accounts (systemd user records in /run/userdb).
//! - [`daemon`]: `stored serve`: the control socket and the scheduler.
//! - [`metrics`]: pools, datasets and policies for the status and Prometheus.

pub mod accounts;
pub mod command;
pub mod daemon;
pub mod metrics;
pub mod pools;
pub mod replication;
pub mod scrub;
pub mod shares;
pub mod snapshots;
pub mod time;
pub mod zfs;
