//! Replication: push snapshots of datasets to another box running stored.
//!
//! - [`plan`]: what one dataset sends (pure): full, or incremental from the newest common
//!   snapshot matched by GUID, a pending resume first, divergence refused or rolled back.
//! - [`holds`]: the incremental base on the source carries the hold `stored-repl:<job>`
//!   (and a bookmark as fallback), moved forward after each run; stale holds released.
//! - [`run_job`] (sender) and [`serve_receiver`] (receiver): the TLS transport, a framed
//!   protocol ([`proto`]) inside mutual TLS pinned by certificate fingerprints ([`tls`]).
//!   The receiver runs `lzc_receive_resumable`, so a cut link leaves a resume token that
//!   the next run continues from.
//! - [`ssh`]: the same protocol over the system `ssh` client's stdin and stdout, to
//!   `stored replication serve-stdio` on the target; host key pinned by fingerprint.
//! - `local`: a target pool on this box; lzc send into lzc receive through pipes joined
//!   by splice(2), no protocol and no TLS.

pub mod cli;
pub mod holds;
mod local;
pub mod plan;
pub mod proto;
mod receive;
mod send;
pub mod ssh;
pub mod tls;

use std::io;
use std::time::Duration;

pub use holds::{HOLD_PREFIX, hold_tag, job_base, move_hold, release_stale_holds};
pub use receive::{Receiver, ReceiverConfig, ReceiverSettings, serve_receiver};
pub use send::{RunOptions, run_job};

use crate::zfs::ZfsError;

/// What one run of a job did, for the scheduler, `applctl storage`, metrics and the bench.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    pub job: String,
    /// Stream bytes sent (after a resume: only what was still missing).
    pub bytes: u64,
    pub duration: Duration,
    /// Snapshots that landed on the target.
    pub snapshots: usize,
    /// Whether an interrupted receive was continued rather than restarted.
    pub resumed: bool,
    /// Interrupted receives the source could not continue, aborted on the target before
    /// the run sent afresh: `target dataset: why`.
    pub aborted: Vec<String>,
    /// Age of the oldest "newest snapshot on the target" among the job's datasets: the
    /// recovery point the target offers (RPO lag). `None` when nothing is on the target.
    pub lag: Option<Duration>,
    /// Per dataset: `(source, target, steps sent)`.
    pub datasets: Vec<(String, String, usize)>,
    /// Per dataset the job names: the newest snapshot the target has, as the job's hold
    /// marks it on the source after the run (filled by the daemon's replicator).
    pub bases: Vec<ReplicatedSnapshot>,
}

/// A snapshot that is on both sides: a job's incremental base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicatedSnapshot {
    /// The source dataset.
    pub dataset: String,
    /// The part after `@`.
    pub snapshot: String,
    /// Decimal, as `zfs get guid` prints it (JSON readers lose precision on a u64).
    pub guid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    #[error("job {job}: {what}")]
    Config { job: String, what: String },
    #[error(transparent)]
    Zfs(#[from] ZfsError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(
        "cannot reach replication target {target}: {source}; is stored's receiver running \
         there (storage.replication_listener) and the port open?"
    )]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("link to {target} broke: {source}; an interrupted stream resumes on the next run")]
    Link {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "TLS with {target} failed: {why}; the receiver's allowed_clients must list this \
         box's fingerprint {fingerprint}, and the job's target_fingerprint must be the \
         receiver's (`stored replication identity FILE` prints either)"
    )]
    Rejected {
        target: String,
        why: String,
        fingerprint: String,
    },
    #[error("target {target} refused: {message}")]
    Refused { target: String, message: String },
    #[error("sending {snapshot} failed: {source}")]
    Send {
        snapshot: String,
        #[source]
        source: ZfsError,
    },
    #[error(
        "receiving {snapshot} failed: {source}; an interrupted receive resumes on the next run"
    )]
    Receive {
        snapshot: String,
        #[source]
        source: ZfsError,
    },
    #[error(
        "the pipe between lzc_send and lzc_receive failed while sending {snapshot}: {source}; \
         an interrupted receive resumes on the next run"
    )]
    Relay {
        snapshot: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for replication on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
}
