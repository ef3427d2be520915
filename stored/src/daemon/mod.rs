//! `stored serve`: the control socket `/run/appliance/stored.sock` (docs/control.md) and
//! the scheduler.
//!
//! Applying generation N converges pools and datasets (imports the pools it finds, creates
//! what is declared and missing, sets properties back), then NFS exports and SMB shares.
//! Pools and datasets are never undone (undoing a create would be a destroy), so a failed
//! shares step leaves them in place; the shares module undoes its own files and users.
//!
//! The scheduler ([`schedule::tick`]) runs every minute against the applied generation:
//! snapshot policies, pruning, scheduled scrubs. It and the control requests share one
//! lock on ZFS, so a plan never reads a half-taken snapshot set.

pub mod replicate;
pub mod schedule;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use appliance::Config;
use appliance::control::{ApiError, GenerationRequest, Method, PlanReply, Reply, Request};
use appliance::model::ReplicationJob;
use appliance::store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::accounts::{AccountAction, AccountError, Accounts};
use crate::metrics::{self, DatasetSpaces, Prom, ReadHandle};
use crate::pools;
use crate::replication::{ReceiverConfig, ReceiverSettings};
use crate::shares::{self, EXPORTS_FILE, SMB_INCLUDE_FILE, ShareError, ShareOs};
use crate::snapshots::{KeepReason, SnapshotName, overlapping_policies, run_policy};
use crate::time::UtcTime;
use crate::zfs::Zfs;
pub use replicate::{JobState, NoReplicator, RealReplicator, Replicator};
pub use schedule::{Clock, FakeClock, ScheduleState, SystemClock, TickReport};

/// Where stored listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/stored.sock";
/// Group access lets applctl's read-only commands in (docs/control.md).
pub const SOCKET_MODE: u32 = 0o660;
/// How often the scheduler looks for due snapshots and scrubs.
pub const TICK: Duration = Duration::from_secs(60);
/// A tick that has not come back after this long means ZFS is wedged: the watchdog stops
/// being pinged and systemd restarts stored. Pruning 10k snapshots takes well under it.
pub const STALL: Duration = Duration::from_secs(15 * 60);

struct Inner<Z, S> {
    zfs: Z,
    shares: S,
    accounts: Accounts,
    applied: Option<(u64, Config)>,
    last_error: Option<String>,
    schedule: ScheduleState,
}

/// stored as its control socket and scheduler see it.
pub struct StoredDaemon<Z, S> {
    store: Store,
    inner: Mutex<Inner<Z, S>>,
    clock: Box<dyn Clock>,
    started: Instant,
    /// Unix time the scheduler last showed it is alive (start of a wait or end of a tick).
    alive: AtomicI64,
    /// The active generation failed at start: the scheduler tries it again every pass
    /// (until then nothing is snapshotted, pruned or replicated).
    start_failed: std::sync::atomic::AtomicBool,
    /// Its own lock: a replication run does not stop snapshots or control requests.
    replicator: Mutex<Box<dyn Replicator>>,
    jobs: Mutex<BTreeMap<String, JobState>>,
    /// Where the jobs' last successes are kept across restarts (none: memory only). Its
    /// lock also orders the writes of two runs that end together.
    jobs_file: Mutex<Option<std::path::PathBuf>>,
    /// The replication listener's last settings and their handle, which an apply updates.
    receiver: Mutex<Option<(ReceiverConfig, ReceiverSettings)>>,
}

impl<Z, S> std::fmt::Debug for StoredDaemon<Z, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredDaemon")
            .field("store", &self.store.dir())
            .finish_non_exhaustive()
    }
}

/// The body of `POST /v1/prune`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneRequest {
    dry_run: bool,
    #[serde(default)]
    policy: Option<String>,
}

/// The body of `POST /v1/replicate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicateRequest {
    job: String,
}

/// A config the accounts refuse is the admin's to fix (422); anything else is a failed step.
fn account_err(e: AccountError) -> ApiError {
    match e {
        AccountError::Conflict { .. }
        | AccountError::Reserved { .. }
        | AccountError::Exhausted { .. } => ApiError::Invalid(e.to_string()),
        other => ApiError::ApplyFailed {
            step: "accounts".into(),
            reason: other.to_string(),
        },
    }
}

fn zfs_err(what: &str) -> impl Fn(crate::zfs::ZfsError) -> ApiError + '_ {
    move |e| ApiError::Internal(format!("{what}: {e}"))
}

/// Decodes `%XX` and `+` of a query value.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn query_param(query: Option<&str>, key: &str) -> Result<Option<String>, ApiError> {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return percent_decode(v)
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("parameter {key}: bad encoding")));
        }
    }
    Ok(None)
}

/// Whether the shares step has anything to look after: shares or NAS users declared, or
/// files left by an earlier generation that declared some.
fn shares_in_use(cfg: &Config, os: &impl ShareOs) -> Result<bool, ApiError> {
    if !cfg.shares.is_empty() || !cfg.storage.users.is_empty() {
        return Ok(true);
    }
    for f in [EXPORTS_FILE, SMB_INCLUDE_FILE] {
        let text = os
            .read_file(f)
            .map_err(|e| ApiError::Internal(format!("shares: {e}")))?;
        if text.is_some_and(|t| !t.trim().is_empty()) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl<Z, S> StoredDaemon<Z, S>
where
    Z: Zfs + DatasetSpaces + ReadHandle + Send + 'static,
    S: ShareOs + Send + 'static,
{
    pub fn new(
        store: Store,
        zfs: Z,
        shares: S,
        clock: Box<dyn Clock>,
        replicator: Box<dyn Replicator>,
    ) -> Arc<Self> {
        let now = clock.now().0;
        Arc::new(Self {
            store,
            inner: Mutex::new(Inner {
                zfs,
                shares,
                accounts: Accounts::system(),
                applied: None,
                last_error: None,
                schedule: ScheduleState::default(),
            }),
            clock,
            started: Instant::now(),
            alive: AtomicI64::new(now),
            start_failed: std::sync::atomic::AtomicBool::new(false),
            replicator: Mutex::new(replicator),
            jobs: Mutex::new(BTreeMap::new()),
            jobs_file: Mutex::new(None),
            receiver: Mutex::new(None),
        })
    }

    /// Where the NAS users' accounts go (the box's by default; a directory in tests).
    pub fn set_accounts(&self, accounts: Accounts) {
        self.inner().accounts = accounts;
    }

    /// Keeps the replication jobs' last successes in `path` from now on, and reads what
    /// the previous run of stored left there, so that lag and last success survive a
    /// restart. A file that cannot be read is logged and replaced at the next success.
    pub fn keep_job_state(&self, path: impl Into<std::path::PathBuf>) {
        let path = path.into();
        match replicate::load(&path) {
            Ok(saved) => {
                tracing::info!(path = %path.display(), jobs = saved.len(), "replication state read");
                let mut jobs = self.jobs();
                for (name, state) in saved {
                    jobs.entry(name).or_insert(state);
                }
            }
            Err(e) => tracing::warn!(error = %e, "replication lag is unknown until each job runs"),
        }
        *self.jobs_file.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    fn save_job_state(&self) {
        let file = self.jobs_file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = file.as_ref() else { return };
        let states = self.jobs().clone();
        if let Err(e) = replicate::save(path, &states) {
            tracing::error!(error = %e, "the jobs' last successes are not saved; after a restart their lag is unknown until they run");
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner<Z, S>> {
        // A panic inside an apply or a tick leaves ZFS wherever it got; everything here
        // plans from what ZFS holds, so the guard's data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self, generation: u64) -> Result<Config, ApiError> {
        appliance::control::load_generation(&self.store, generation)
    }

    /// Two policies over one dataset would prune each other's snapshots: refused before
    /// anything changes.
    fn check_policies(zfs: &Z, cfg: &Config) -> Result<(), ApiError> {
        let mut datasets: BTreeSet<String> = zfs
            .datasets()
            .map_err(zfs_err("listing datasets"))?
            .into_iter()
            .map(|d| d.name)
            .collect();
        datasets.extend(cfg.storage.datasets.keys().map(ToString::to_string));
        let datasets: Vec<String> = datasets.into_iter().collect();
        let overlaps = overlapping_policies(&cfg.snapshots, &datasets);
        if overlaps.is_empty() {
            return Ok(());
        }
        Err(ApiError::Invalid(
            overlaps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        ))
    }

    /// What applying `generation` would do now; changes nothing.
    pub fn plan(&self, generation: u64) -> Result<PlanReply, ApiError> {
        let cfg = self.load(generation)?;
        let inner = self.inner();
        Self::check_policies(&inner.zfs, &cfg)?;
        let observed = pools::observe(&inner.zfs, &cfg.storage).map_err(zfs_err("reading ZFS"))?;
        let plan = pools::plan(&cfg.storage, &observed).map_err(|errors| {
            ApiError::Invalid(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        let mut actions: Vec<String> = plan
            .actions
            .iter()
            .map(|a| format!("storage: {a}"))
            .collect();
        let nas_users = inner
            .accounts
            .names_with(&cfg.storage.users)
            .map_err(account_err)?;
        let accounts = inner
            .accounts
            .plan(&cfg.storage.users)
            .map_err(account_err)?;
        actions.extend(accounts.iter().map(|a| format!("accounts: {a}")));
        let created: BTreeSet<String> = accounts
            .iter()
            .filter_map(|a| match a {
                AccountAction::Create { user, .. } => Some(user.clone()),
                AccountAction::Remove { .. } => None,
            })
            .collect();
        if shares_in_use(&cfg, &inner.shares)? {
            match shares::plan_after_accounts(
                &inner.shares,
                &cfg.shares,
                &cfg.storage.users,
                &created,
                &nas_users,
            ) {
                Ok(p) => actions.extend(p.actions.iter().map(|a| format!("shares: {a}"))),
                // Datasets the plan creates are not mounted yet: say so rather than refuse.
                Err(ShareError::Refused(errors)) if !plan.actions.is_empty() => {
                    actions.extend(
                        errors
                            .iter()
                            .map(|e| format!("shares: after the storage steps, check again: {e}")),
                    );
                }
                Err(ShareError::Refused(errors)) => {
                    return Err(ApiError::Invalid(
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ));
                }
                Err(e) => return Err(ApiError::Internal(format!("shares: {e}"))),
            }
        }
        Ok(PlanReply {
            generation,
            actions,
        })
    }

    /// Applies `generation`: pools and datasets, then shares.
    pub fn apply(&self, generation: u64) -> Result<PlanReply, ApiError> {
        let cfg = self.load(generation)?;
        let mut inner = self.inner();
        let result = Self::apply_locked(&mut inner, generation, &cfg);
        match &result {
            Ok(_) => {
                self.start_failed.store(false, Ordering::SeqCst);
                let listener = cfg
                    .storage
                    .replication_listener
                    .as_ref()
                    .map(ReceiverConfig::from_model);
                Self::release_stale_holds(&mut inner, &cfg);
                inner.applied = Some((generation, cfg));
                inner.last_error = None;
                drop(inner);
                self.sync_receiver(listener.as_ref());
            }
            Err(e) => inner.last_error = Some(e.to_string()),
        }
        result
    }

    /// Releases the incremental-base holds of replication jobs the config no longer has,
    /// so that pruning can take those snapshots. It lists every snapshot, so only at the
    /// first apply (a job may have gone while stored was down) and when a job went away.
    /// A failure is logged, not the apply's: the holds only keep snapshots longer.
    fn release_stale_holds(inner: &mut Inner<Z, S>, cfg: &Config) {
        let jobs: BTreeSet<String> = cfg.replication.keys().map(|k| k.to_string()).collect();
        let a_job_went = match &inner.applied {
            None => true,
            Some((_, prev)) => prev.replication.keys().any(|k| !jobs.contains(k.as_str())),
        };
        if !a_job_went {
            return;
        }
        if let Err(e) = crate::replication::release_stale_holds(&mut inner.zfs, &jobs) {
            tracing::warn!(error = %e, "cannot release the holds of removed replication jobs; retried at the next apply that removes one");
        }
    }

    /// The running replication listener's settings, if one was started.
    pub fn receiver_settings(&self) -> Option<ReceiverSettings> {
        let running = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        running.as_ref().map(|(_, s)| s.clone())
    }

    /// Brings the replication listener to the applied generation's settings: started when
    /// it is declared and not running; its allowed clients, identity and datasets replaced
    /// in place when it runs (connections in flight keep theirs); no client allowed once
    /// it is no longer declared. A new `listen` address needs a restart of stored (the
    /// thread blocked in accept cannot be moved), which the log says.
    pub fn sync_receiver(&self, want: Option<&ReceiverConfig>) {
        let mut running = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        match (want, running.as_mut()) {
            (None, None) => {}
            (None, Some((last, settings))) => {
                let closed = ReceiverConfig {
                    allowed_clients: Vec::new(),
                    datasets: Vec::new(),
                    ..last.clone()
                };
                // Closing needs no identity: the file may have gone with the listener.
                match settings.restrict(&closed) {
                    Ok(()) => {
                        tracing::info!(listen = %last.listen, "replication listener no longer declared: every client is refused from now on")
                    }
                    Err(e) => {
                        tracing::error!(listen = %last.listen, error = %e, "cannot close the replication listener")
                    }
                }
            }
            (Some(cfg), Some((last, settings))) => {
                if last.listen != cfg.listen {
                    tracing::warn!(old = %last.listen, new = %cfg.listen, "the replication listener's address changed; it keeps the old one until stored restarts");
                }
                let listen = last.listen.clone();
                match settings.update(cfg) {
                    Ok(()) => {
                        *last = ReceiverConfig {
                            listen: listen.clone(),
                            ..cfg.clone()
                        };
                        tracing::info!(
                            %listen,
                            allowed_clients = cfg.allowed_clients.len(),
                            datasets = ?cfg.datasets,
                            "replication listener settings updated"
                        );
                    }
                    Err(e) => Self::restrict_receiver(last, settings, cfg, &listen, &e),
                }
            }
            (Some(cfg), None) => match crate::replication::Receiver::bind(cfg) {
                Ok(receiver) => {
                    *running = Some((cfg.clone(), receiver.settings()));
                    std::thread::spawn(move || {
                        if let Err(e) = receiver.serve() {
                            tracing::error!(error = %e, "the replication receiver stopped");
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "cannot start the replication receiver"),
            },
        }
    }

    /// The identity file of an updated listener could not be read (`e`): the listener
    /// keeps the identity it serves but takes the allowed clients and datasets of `cfg`,
    /// so that a client removed from the config is refused without a restart.
    fn restrict_receiver(
        last: &mut ReceiverConfig,
        settings: &ReceiverSettings,
        cfg: &ReceiverConfig,
        listen: &str,
        e: &dyn std::fmt::Display,
    ) {
        tracing::error!(error = %e, "cannot read the replication listener's identity; it keeps the identity it serves");
        match settings.restrict(cfg) {
            Ok(()) => {
                *last = ReceiverConfig {
                    listen: listen.to_owned(),
                    identity_file: last.identity_file.clone(),
                    ..cfg.clone()
                };
                tracing::info!(%listen, allowed_clients = cfg.allowed_clients.len(), datasets = ?cfg.datasets, "replication listener's clients and datasets updated");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot update the replication listener; it keeps its previous settings")
            }
        }
    }

    fn apply_locked(
        inner: &mut Inner<Z, S>,
        generation: u64,
        cfg: &Config,
    ) -> Result<PlanReply, ApiError> {
        Self::check_policies(&inner.zfs, cfg)?;
        let done = pools::converge(&mut inner.zfs, &cfg.storage).map_err(|e| match e {
            pools::ConvergeError::Plan(_) => ApiError::Invalid(e.to_string()),
            other => ApiError::ApplyFailed {
                step: "storage".into(),
                reason: other.to_string(),
            },
        })?;
        let mut actions: Vec<String> = done.iter().map(|a| format!("storage: {a}")).collect();
        let nas_users = inner
            .accounts
            .names_with(&cfg.storage.users)
            .map_err(account_err)?;
        // Before the shares: Samba needs the Unix account of every user it is given.
        let accounts = inner
            .accounts
            .converge(&cfg.storage.users)
            .map_err(account_err)?;
        actions.extend(accounts.iter().map(|a| format!("accounts: {a}")));
        if shares_in_use(cfg, &inner.shares)? {
            let done = shares::converge(
                &mut inner.shares,
                &cfg.shares,
                &cfg.storage.users,
                &nas_users,
            )
            .map_err(|e| {
                    // The accounts belong to the shares' transaction: a failed share step
                    // leaves /run/userdb as before, as the shares' undo leaves Samba's.
                    let not_undone = inner.accounts.undo(&accounts);
                    let accounts_note = match (accounts.is_empty(), not_undone.is_empty()) {
                        (true, _) => String::new(),
                        (false, true) => "; the account changes were undone".to_owned(),
                        (false, false) => {
                            format!("; account changes not undone: {}", not_undone.join("; "))
                        }
                    };
                    let storage_steps = actions.len().saturating_sub(accounts.len());
                    let pools_note = if storage_steps == 0 {
                        String::new()
                    } else {
                        format!(
                            "; the {storage_steps} storage steps done stay (stored never destroys a pool or dataset)"
                        )
                    };
                    ApiError::ApplyFailed {
                        step: "shares".into(),
                        reason: format!("{e}{accounts_note}{pools_note}"),
                    }
                })?;
            actions.extend(done.iter().map(|a| format!("shares: {a}")));
        }
        tracing::info!(generation, steps = actions.len(), "generation applied");
        Ok(PlanReply {
            generation,
            actions,
        })
    }

    /// On start: applies the active generation, which imports the pools at boot. A failure
    /// is logged and shown in the status; stored keeps serving.
    pub fn apply_active(&self) {
        match self.store.current() {
            Ok((Some(g), _)) => match self.apply(g.info.number) {
                Ok(r) => tracing::info!(
                    generation = g.info.number,
                    steps = r.actions.len(),
                    "active generation applied at start"
                ),
                Err(e) => {
                    self.start_failed.store(true, Ordering::SeqCst);
                    tracing::error!(generation = g.info.number, error = %e, "cannot apply the active generation at start; tried again at every scheduler pass")
                }
            },
            Ok((None, _)) => tracing::info!("no generation stored yet; waiting for applianced"),
            Err(e) => tracing::error!(error = %e, "cannot read the config store"),
        }
    }

    /// Applies the active generation again when it failed at start (a pool that was not
    /// there yet, a password file fixed since), so that a failure at boot does not stop
    /// snapshots and replication until the next change.
    pub fn retry_start(&self) {
        if self.start_failed.load(Ordering::SeqCst) {
            self.apply_active();
        }
    }

    /// One scheduler pass at the clock's time, against the applied generation (nothing
    /// runs before a generation is applied).
    pub fn tick(&self) -> TickReport {
        let now = self.clock.now();
        let mut guard = self.inner();
        let inner = &mut *guard;
        let report = match &inner.applied {
            Some((_, cfg)) => {
                let needed = self.in_flight(&inner.zfs, cfg);
                schedule::tick(&mut inner.zfs, cfg, now, &needed, &mut inner.schedule)
            }
            None => TickReport::default(),
        };
        self.alive.store(self.clock.now().0, Ordering::SeqCst);
        report
    }

    /// Whether the scheduler came back from its last tick within [`STALL`].
    pub fn healthy(&self) -> bool {
        let stall = i64::try_from(STALL.as_secs()).unwrap_or(i64::MAX);
        self.clock.now().0 - self.alive.load(Ordering::SeqCst) < stall
    }

    /// Returns once no apply or tick is in flight (they hold the lock), so that a stop
    /// does not cut one in the middle.
    pub fn wait_idle(&self) {
        drop(self.inner());
    }

    /// Every snapshot of the source datasets of the jobs running now (full names). A run
    /// plans its steps from the snapshots it listed at its start and sends them one by one
    /// for minutes or hours; one a policy prunes meanwhile would end the run at that step
    /// (a `1m` policy over a run of 1000 snapshots is enough). They are pruned by the first
    /// pass after the run. Called with the inner lock held, which [`Self::run_job`]
    /// waits for after marking its job running, so no pass misses a job that has listed.
    fn in_flight(&self, zfs: &Z, cfg: &Config) -> BTreeSet<String> {
        let running: Vec<String> = self
            .jobs()
            .values()
            .filter(|s| s.running)
            .map(|s| s.job.clone())
            .collect();
        let mut needed = BTreeSet::new();
        for (name, job) in &cfg.replication {
            if !running.iter().any(|r| r == name.as_str()) {
                continue;
            }
            for ds in &job.datasets {
                match zfs.snapshots(ds.as_str(), job.recursive) {
                    Ok(snaps) => needed.extend(snaps.iter().map(crate::zfs::Snapshot::full_name)),
                    // The policy's own listing of it fails the same way and is reported.
                    Err(e) => {
                        tracing::warn!(job = %name, dataset = %ds, error = %e, "cannot list what a running job may send")
                    }
                }
            }
        }
        if !needed.is_empty() {
            tracing::debug!(
                snapshots = needed.len(),
                "kept from pruning while their replication runs"
            );
        }
        needed
    }

    fn mark_alive(&self) {
        self.alive.store(self.clock.now().0, Ordering::SeqCst);
    }

    /// What a report needs from under the lock: a reader on ZFS and the daemon's state.
    /// The listing itself happens after the lock is let go.
    fn report_view(&self) -> ReportView<Z::Reader> {
        let inner = self.inner();
        ReportView {
            reader: inner.zfs.reader(),
            applied: inner.applied.clone(),
            last_error: inner.last_error.clone(),
            schedule: inner.schedule.clone(),
        }
    }

    /// The storage report and the daemon's own state. ZFS is read without the daemon's
    /// lock (a slow listing does not hold up applies and ticks).
    pub fn status(&self) -> Value {
        let now = self.clock.now();
        let view = self.report_view();
        let cfg = view.applied.as_ref().map(|(_, c)| c);
        let report = view.collect(now);
        json!({
            "daemon": "stored",
            "version": env!("CARGO_PKG_VERSION"),
            "generation": view.applied.as_ref().map(|(n, _)| *n),
            "last_error": view.last_error,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "now": now.to_string(),
            "pools": report.pools,
            "datasets": report.datasets,
            "policies": report.policies,
            "replication": self.job_states(cfg, now),
            "scheduler": view.schedule,
            "errors": report.errors,
        })
    }

    /// Prometheus text: the storage report plus the daemon's counters; read like
    /// [`Self::status`], without the daemon's lock.
    pub fn metrics(&self) -> String {
        let now = self.clock.now();
        let view = self.report_view();
        let report = view.collect(now);
        let cfg = view.applied.as_ref().map(|(_, c)| c);
        let mut m = Prom::default();
        m.family(
            "stored_applied_generation",
            "gauge",
            "The config generation stored applied last.",
        )
        .sample(
            "stored_applied_generation",
            &[],
            view.applied.as_ref().map_or(0, |(n, _)| *n),
        );
        m.family(
            "stored_apply_failed",
            "gauge",
            "Whether the last apply failed.",
        )
        .sample(
            "stored_apply_failed",
            &[],
            u8::from(view.last_error.is_some()),
        );
        let s = &view.schedule;
        for (name, help, v) in [
            ("stored_scheduler_ticks_total", "Scheduler passes.", s.ticks),
            (
                "stored_scheduler_errors_total",
                "Policy runs and scrubs that failed.",
                s.errors_total,
            ),
            (
                "stored_snapshots_taken_total",
                "Snapshots the scheduler took.",
                s.snapshots_taken_total,
            ),
            (
                "stored_snapshots_destroyed_total",
                "Snapshots the scheduler pruned.",
                s.snapshots_destroyed_total,
            ),
            (
                "stored_scrubs_started_total",
                "Scheduled scrubs started.",
                s.scrubs_started_total,
            ),
        ] {
            m.family(name, "counter", help).sample(name, &[], v);
        }
        m.family(
            "stored_collect_errors",
            "gauge",
            "Parts of the storage state that could not be read for this scrape.",
        )
        .sample("stored_collect_errors", &[], report.errors.len());
        report.prometheus(&mut m);
        replicate::prometheus(&mut m, &self.job_states(cfg, now));
        m.finish()
    }

    /// Snapshots of one dataset, or of every pool, with what stored makes of them; listed
    /// without the daemon's lock.
    pub fn snapshots(&self, dataset: Option<&str>) -> Result<Value, ApiError> {
        let zfs = self.inner().zfs.reader().map_err(zfs_err("opening ZFS"))?;
        let snaps = match dataset {
            Some(d) => {
                let exists = zfs
                    .datasets()
                    .map_err(zfs_err("listing datasets"))?
                    .iter()
                    .any(|x| x.name == d);
                if !exists {
                    return Err(ApiError::Invalid(format!(
                        "no dataset {d}; `zfs list` shows the datasets there are"
                    )));
                }
                zfs.snapshots(d, false)
                    .map_err(zfs_err("listing snapshots"))?
            }
            None => {
                let mut all = Vec::new();
                for p in zfs.pools().map_err(zfs_err("listing pools"))? {
                    all.extend(
                        zfs.snapshots(&p.name, true)
                            .map_err(zfs_err("listing snapshots"))?,
                    );
                }
                all
            }
        };
        let list: Vec<Value> = snaps
            .iter()
            .map(|s| {
                let ours = SnapshotName::parse(&s.name);
                json!({
                    "name": s.full_name(),
                    "dataset": s.dataset,
                    "ours": ours.is_some(),
                    "period": ours.map(|n| n.period.as_str()),
                    "time": ours.map(|n| n.time.to_string()),
                    "guid": s.guid.to_string(),
                    "createtxg": s.createtxg,
                    "creation": s.creation,
                    "holds": s.userrefs,
                })
            })
            .collect();
        Ok(json!({ "count": list.len(), "snapshots": list }))
    }

    /// One pass of each policy (or of one) now; `dry_run` shows the plan and changes
    /// nothing.
    pub fn prune(&self, dry_run: bool, only: Option<&str>) -> Result<Value, ApiError> {
        let now = self.clock.now();
        let mut guard = self.inner();
        let inner = &mut *guard;
        let Some((generation, cfg)) = &inner.applied else {
            return Err(ApiError::Conflict(
                "no config generation is applied yet, so there are no policies".into(),
            ));
        };
        if let Some(p) = only
            && !cfg.snapshots.keys().any(|k| k.as_str() == p)
        {
            return Err(ApiError::Invalid(format!(
                "no snapshot policy {p} in generation {generation}"
            )));
        }
        let needed = self.in_flight(&inner.zfs, cfg);
        let mut out = Vec::new();
        for (name, policy) in &cfg.snapshots {
            if only.is_some_and(|p| p != name.as_str()) {
                continue;
            }
            let run = run_policy(&mut inner.zfs, policy, now, &needed, dry_run)
                .map_err(zfs_err(&format!("policy {name}")))?;
            let kept: usize = run.plans.iter().map(|p| p.keep.len()).sum();
            let protected: Vec<Value> = run
                .plans
                .iter()
                .flat_map(|p| &p.keep)
                .filter_map(|k| match k.reason {
                    KeepReason::Held { holds } => {
                        Some(json!({ "name": k.name, "why": format!("{holds} hold(s)") }))
                    }
                    KeepReason::Needed => {
                        Some(json!({ "name": k.name, "why": "needed by replication" }))
                    }
                    KeepReason::Retained { .. } => None,
                })
                .collect();
            let destroy: Vec<&String> = run.plans.iter().flat_map(|p| &p.destroy).collect();
            let rpo_met = run.plans.iter().all(|p| p.rpo.met);
            out.push(json!({
                "policy": name.to_string(),
                "take": run.taken,
                "destroy": destroy,
                "destroyed": run.destroyed,
                "kept": kept,
                "protected": protected,
                "rpo_met": rpo_met,
            }));
        }
        Ok(json!({ "dry_run": dry_run, "now": now.to_string(), "policies": out }))
    }

    fn jobs(&self) -> MutexGuard<'_, BTreeMap<String, JobState>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every configured job's state, lag counted to `now`.
    fn job_states(&self, cfg: Option<&Config>, now: UtcTime) -> Vec<JobState> {
        let jobs = self.jobs();
        cfg.map(|c| {
            c.replication
                .keys()
                .map(|name| {
                    jobs.get(name.as_str()).map_or_else(
                        || JobState {
                            job: name.to_string(),
                            ..JobState::default()
                        },
                        |s| s.at(now),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// The receiver's settings of the applied generation, if it declares one.
    pub fn receiver_config(&self) -> Option<crate::replication::ReceiverConfig> {
        let inner = self.inner();
        let (_, cfg) = inner.applied.as_ref()?;
        cfg.storage
            .replication_listener
            .as_ref()
            .map(crate::replication::ReceiverConfig::from_model)
    }

    /// Runs one job now, unless it is running already.
    fn run_job(
        &self,
        name: &str,
        job: &ReplicationJob,
    ) -> Result<crate::replication::JobReport, ApiError> {
        let now = self.clock.now();
        {
            let mut jobs = self.jobs();
            let state = jobs.entry(name.to_owned()).or_insert_with(|| JobState {
                job: name.to_owned(),
                ..JobState::default()
            });
            if state.running {
                return Err(ApiError::Conflict(format!(
                    "replication job {name} is running already"
                )));
            }
            state.running = true;
            state.last_attempt = Some(now.to_string());
            state.last_attempt_at = Some(now);
        }
        // A scheduler pass in progress read the running jobs before this one was marked:
        // wait for it to end, so that no pass prunes what this run is about to list.
        self.wait_idle();
        let result = {
            let mut r = self.replicator.lock().unwrap_or_else(|e| e.into_inner());
            r.run(name, job)
        };
        let done = self.clock.now();
        {
            let mut jobs = self.jobs();
            if let Some(state) = jobs.get_mut(name) {
                state.running = false;
                state.record(done, &result);
            }
        }
        if result.is_ok() {
            self.save_job_state();
        }
        match &result {
            Ok(r) => tracing::info!(
                job = name,
                bytes = r.bytes,
                snapshots = r.snapshots,
                resumed = r.resumed,
                aborted = ?r.aborted,
                "replication run done"
            ),
            Err(e) => tracing::error!(job = name, error = %e, "replication run failed"),
        }
        result.map_err(|e| ApiError::ApplyFailed {
            step: format!("replication job {name}"),
            reason: e,
        })
    }

    /// Runs the jobs that are due, one after the other.
    pub fn replicate_due(&self) {
        let now = self.clock.now();
        let jobs = {
            let inner = self.inner();
            match &inner.applied {
                Some((_, cfg)) => cfg.replication.clone(),
                None => return,
            }
        };
        let states = self.jobs().clone();
        for (name, job) in replicate::due(&jobs, &states, now) {
            // The error is recorded in the job's state and logged.
            let _ = self.run_job(name, job);
        }
    }

    fn replicate(&self, name: &str) -> Result<Value, ApiError> {
        let job = {
            let inner = self.inner();
            let Some((generation, cfg)) = &inner.applied else {
                return Err(ApiError::Conflict(
                    "no config generation is applied yet, so there are no replication jobs".into(),
                ));
            };
            cfg.replication
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, j)| j.clone())
                .ok_or_else(|| {
                    ApiError::Invalid(format!(
                        "no replication job {name} in generation {generation}"
                    ))
                })?
        };
        // As `stored replicate` does: a paused job is the user's decision to keep.
        if !job.enabled {
            return Err(ApiError::Conflict(format!(
                "replication job {name} is paused (enabled = false); set enabled = true to run it"
            )));
        }
        let r = self.run_job(name, &job)?;
        Ok(json!({
            "job": r.job,
            "bytes": r.bytes,
            "seconds": r.duration.as_secs_f64(),
            "snapshots": r.snapshots,
            "resumed": r.resumed,
            "aborted_partial_receives": r.aborted,
            "lag_seconds": r.lag.map(|l| l.as_secs()),
            "datasets": r.datasets.iter().map(|(src, dst, steps)| json!({
                "source": src, "target": dst, "steps": steps,
            })).collect::<Vec<_>>(),
        }))
    }

    /// Answers one control request. Everything that touches ZFS blocks: it runs on the
    /// blocking pool, one at a time (the lock).
    pub async fn route(self: Arc<Self>, req: Request) -> Result<Reply, ApiError> {
        let path = req.path.clone();
        let blocking = move |f: Box<dyn FnOnce() -> Result<Reply, ApiError> + Send>| async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| ApiError::Internal(format!("the request's task ended: {e}")))?
        };
        match path.as_str() {
            "/v1/status" => {
                req.only(&Method::GET)?;
                blocking(Box::new(move || Ok(Reply::Json(self.status())))).await
            }
            "/metrics" => {
                req.only(&Method::GET)?;
                blocking(Box::new(move || Ok(Reply::Metrics(self.metrics())))).await
            }
            "/v1/plan" | "/v1/apply" => {
                req.only(&Method::POST)?;
                let GenerationRequest { generation } = req.json()?;
                let apply = path == "/v1/apply";
                blocking(Box::new(move || {
                    let r = if apply {
                        self.apply(generation)?
                    } else {
                        self.plan(generation)?
                    };
                    Ok(Reply::Json(json!(r)))
                }))
                .await
            }
            "/v1/snapshots" => {
                req.only(&Method::GET)?;
                let dataset = query_param(req.query.as_deref(), "dataset")?;
                blocking(Box::new(move || {
                    self.snapshots(dataset.as_deref()).map(Reply::Json)
                }))
                .await
            }
            "/v1/prune" => {
                req.only(&Method::POST)?;
                let r: PruneRequest = req.json()?;
                blocking(Box::new(move || {
                    self.prune(r.dry_run, r.policy.as_deref()).map(Reply::Json)
                }))
                .await
            }
            "/v1/replicate" => {
                req.only(&Method::POST)?;
                let r: ReplicateRequest = req.json()?;
                blocking(Box::new(move || self.replicate(&r.job).map(Reply::Json))).await
            }
            other => Err(ApiError::NotFound(other.to_owned())),
        }
    }
}

/// What [`StoredDaemon::status`] and [`StoredDaemon::metrics`] took from under the lock.
struct ReportView<R> {
    reader: Result<R, crate::zfs::ZfsError>,
    applied: Option<(u64, Config)>,
    last_error: Option<String>,
    schedule: ScheduleState,
}

impl<R: Zfs + DatasetSpaces> ReportView<R> {
    fn collect(&self, now: UtcTime) -> metrics::Report {
        match &self.reader {
            Ok(zfs) => metrics::collect(zfs, self.applied.as_ref().map(|(_, c)| c), now),
            Err(e) => metrics::Report {
                errors: vec![format!("cannot open ZFS for the report: {e}")],
                ..metrics::Report::default()
            },
        }
    }
}

/// Runs the scheduler forever: a tick at the start of every minute (so snapshot times
/// fall on the minute), each on the blocking pool.
pub async fn run_scheduler<Z, S>(daemon: Arc<StoredDaemon<Z, S>>)
where
    Z: Zfs + DatasetSpaces + ReadHandle + Send + 'static,
    S: ShareOs + Send + 'static,
{
    loop {
        daemon.mark_alive();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let tick = TICK.as_millis() as u64;
        let wait = tick - (now.as_millis() as u64 % tick);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let d = Arc::clone(&daemon);
        match tokio::task::spawn_blocking(move || {
            d.retry_start();
            d.tick()
        })
        .await
        {
            Ok(r) if !r.errors.is_empty() => {
                tracing::warn!(errors = ?r.errors, "scheduler pass had failures")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "scheduler pass panicked"),
        }
    }
}

/// Runs due replication jobs every minute, apart from the snapshot scheduler, so that a
/// long send does not delay snapshots.
pub async fn run_replication<Z, S>(daemon: Arc<StoredDaemon<Z, S>>)
where
    Z: Zfs + DatasetSpaces + ReadHandle + Send + 'static,
    S: ShareOs + Send + 'static,
{
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let d = Arc::clone(&daemon);
        if let Err(e) = tokio::task::spawn_blocking(move || d.replicate_due()).await {
            tracing::error!(error = %e, "replication pass panicked");
        }
    }
}

/// Pings systemd's watchdog at half its interval while the scheduler is not stuck.
pub async fn run_watchdog<Z, S>(daemon: Arc<StoredDaemon<Z, S>>, every: Duration)
where
    Z: Zfs + DatasetSpaces + ReadHandle + Send + 'static,
    S: ShareOs + Send + 'static,
{
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        if daemon.healthy() {
            appliance::sd::watchdog_ping();
        } else {
            tracing::error!(
                "the scheduler has not come back for {} s; not pinging the watchdog",
                STALL.as_secs()
            );
        }
    }
}
