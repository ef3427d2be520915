//! The sender: one run of a job, over mutual TLS or an `ssh` child (`Conn`), or into a
//! pool on this box (`local.rs`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance::model::{ReplicationJob, Transport};
use rustls::pki_types::ServerName;

use super::plan::{self, PendingResume, Snap, Step, TargetState};
use super::proto::{self, RangeSnap, Reply, Request};
use super::tls::{self, Identity};
use super::{JobReport, ReplError, holds, local, receive};
use crate::zfs::lzc::SendFlags;
use crate::zfs::{RealZfs, Zfs as _, resume};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The byte stream to the receiver: mutual TLS over TCP, or the stdin and stdout of an
/// `ssh` child (`ssh.rs`). The protocol above it is the same.
pub(super) trait Conn: Read + Write {
    /// Ends the stream after `Bye`, so that the receiver sees a clean end.
    fn close(&mut self);
}

/// How long a sender waits, after `Bye`, for the receiver to end the connection.
const BYE_WAIT: Duration = Duration::from_secs(60);

impl Conn for Tls {
    fn close(&mut self) {
        wait_for_the_end(self, BYE_WAIT);
        self.conn.send_close_notify();
        let _ = self.conn.complete_io(&mut self.sock);
    }
}

/// Reads until the receiver closes its side (or `timeout` passes without a byte). At
/// `Bye` the receiver mounts the replicas a run left waiting and only then ends the
/// connection, so a run that returns after this has its replicas mounted: a check right
/// after `applctl storage replicate` otherwise raced the receiver's mount. A receiver
/// from before that mount ends the connection at `Bye` at once, as it always did.
fn wait_for_the_end(s: &mut Tls, timeout: Duration) {
    if let Err(e) = s.sock.set_read_timeout(Some(timeout)) {
        tracing::debug!(error = %e, "cannot bound the wait for the receiver's end");
        return;
    }
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A close without close_notify (the receiver's usual end) is an
                // UnexpectedEof here; a timeout is WouldBlock. Either way: done.
                if !matches!(e.kind(), io::ErrorKind::UnexpectedEof) {
                    tracing::warn!(error = %e, "the receiver did not end the connection after Bye");
                }
                return;
            }
        }
    }
}

/// The fewest consecutive incrementals sent as one `zfs send -I` stream: below it, the
/// two processes a range spawns cost more than the lzc sends they replace.
const RANGE_MIN: usize = 4;

/// Knobs of one run that are not in the job itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the job's bandwidth limit (bytes per second; 0 = unlimited).
    pub bandwidth_limit: Option<u64>,
}

/// A token bucket: `rate` bytes per second with a burst of a quarter second.
#[derive(Debug)]
pub(super) struct Limiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new(rate: u64) -> Option<Self> {
        (rate > 0).then(|| {
            let rate = rate as f64;
            let burst = (rate / 4.0).max(proto::CHUNK as f64);
            Self {
                rate,
                burst,
                tokens: burst,
                last: Instant::now(),
            }
        })
    }

    pub(super) fn take(&mut self, n: usize) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / self.rate));
        }
    }
}

struct Link<'a> {
    conn: Box<dyn Conn>,
    target: &'a str,
    /// This box's certificate fingerprint, for the hint when the receiver refuses it.
    fingerprint: String,
    /// Whether the receiver listed [`proto::FEATURE_RANGE`] in its answer to `Hello`.
    ranges: bool,
}

impl Link<'_> {
    fn broke(&self, source: io::Error) -> ReplError {
        // A TLS refusal (an unknown client certificate, a pin that does not match) shows
        // up as an I/O error on the first read or write; it is no broken link.
        if let Some(tls) = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return ReplError::Rejected {
                target: self.target.to_owned(),
                why: tls.to_string(),
                fingerprint: self.fingerprint.clone(),
            };
        }
        ReplError::Link {
            target: self.target.to_owned(),
            source,
        }
    }

    fn ask(&mut self, req: &Request) -> Result<Reply, ReplError> {
        if let Err(e) = proto::send_msg(&mut self.conn, req) {
            // A receiver that refuses this box's certificate sends its alert and closes;
            // the write can see the close first (EPIPE). The alert, queued before the
            // close, is the reason to report.
            let mut byte = [0u8; 1];
            if let Err(alert) = self.conn.read(&mut byte)
                && alert
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return Err(self.broke(alert));
            }
            return Err(self.broke(e));
        }
        let reply = proto::read_msg(&mut self.conn).map_err(|e| self.broke(e))?;
        match reply {
            Reply::Error { message } => Err(ReplError::Refused {
                target: self.target.to_owned(),
                message,
            }),
            r => Ok(r),
        }
    }
}

/// Where a run's streams go.
enum Dest<'a> {
    /// stored's receiver on another box, over TLS or ssh.
    Remote(Link<'a>),
    /// A pool on this box (`transport = "local"`).
    Local,
}

/// The plan's steps as sent: runs of [`RANGE_MIN`] or more incrementals joined into ranges
/// when the destination takes them (the local transport always; a receiver when it listed
/// the feature), else one stream per snapshot.
fn with_ranges(steps: Vec<Step>, ranges: bool) -> Vec<Step> {
    if ranges {
        plan::ranges(steps, RANGE_MIN)
    } else {
        steps
    }
}

/// The range's base and its snapshots, oldest first, from the source listing: every
/// snapshot after `from` up to `to`, by creation txg. `None` when either end is missing.
fn range_snaps(source: &[Snap], from: &str, to: &str) -> Option<(RangeSnap, Vec<RangeSnap>)> {
    let find = |name: &str| source.iter().find(|s| s.name == name);
    let (base, last) = (find(from)?, find(to)?);
    let mut snaps: Vec<&Snap> = source
        .iter()
        .filter(|s| s.createtxg > base.createtxg && s.createtxg <= last.createtxg)
        .collect();
    snaps.sort_by_key(|s| s.createtxg);
    let r = |s: &Snap| RangeSnap {
        name: s.name.clone(),
        guid: s.guid,
    };
    Some((r(base), snaps.into_iter().map(r).collect()))
}

impl Dest<'_> {
    fn takes_ranges(&self) -> bool {
        match self {
            Dest::Local => true,
            Dest::Remote(link) => link.ranges,
        }
    }

    fn target(&self) -> &str {
        match self {
            Dest::Remote(link) => link.target,
            Dest::Local => local::LOCAL,
        }
    }

    fn state(&mut self, zfs: &RealZfs, dataset: &str) -> Result<TargetState, ReplError> {
        let link = match self {
            Dest::Local => return local::state(zfs, dataset),
            Dest::Remote(link) => link,
        };
        match link.ask(&Request::State {
            dataset: dataset.to_owned(),
        })? {
            Reply::State(s) => Ok(s),
            other => Err(ReplError::Refused {
                target: link.target.to_owned(),
                message: format!("unexpected answer to State: {other:?}"),
            }),
        }
    }

    /// Aborts the target's interrupted receive of `toguid` (the planner found it stale).
    fn abort_partial(
        &mut self,
        zfs: &RealZfs,
        dataset: &str,
        toguid: u64,
    ) -> Result<(), ReplError> {
        match self {
            Dest::Local => {
                receive::abort_partial(zfs, dataset, toguid).map_err(|e| ReplError::Refused {
                    target: local::LOCAL.to_owned(),
                    message: e.to_string(),
                })
            }
            Dest::Remote(link) => link
                .ask(&Request::AbortPartial {
                    dataset: dataset.to_owned(),
                    toguid,
                })
                .map(drop),
        }
    }

    fn rollback(
        &mut self,
        zfs: &mut RealZfs,
        dataset: &str,
        to: &str,
        destroy: &[String],
    ) -> Result<(), ReplError> {
        match self {
            Dest::Local => local::rollback(zfs, dataset, to, destroy),
            Dest::Remote(link) => link
                .ask(&Request::Rollback {
                    dataset: dataset.to_owned(),
                    to: to.to_owned(),
                    destroy: destroy.to_vec(),
                })
                .map(drop),
        }
    }
}

fn config_err(job: &str, what: impl Into<String>) -> ReplError {
    ReplError::Config {
        job: job.to_owned(),
        what: what.into(),
    }
}

/// The job's source datasets, each with its descendants when the job is recursive,
/// parents first, paired with their root.
fn source_datasets(
    zfs: &RealZfs,
    job: &ReplicationJob,
) -> Result<Vec<(String, String)>, ReplError> {
    let mut out = Vec::new();
    let all = if job.recursive {
        zfs.datasets()?.into_iter().map(|d| d.name).collect()
    } else {
        Vec::new()
    };
    for root in &job.datasets {
        let root = root.as_str();
        out.push((root.to_owned(), root.to_owned()));
        let prefix = format!("{root}/");
        let mut children: Vec<&String> = all.iter().filter(|d| d.starts_with(&prefix)).collect();
        children.sort();
        out.extend(children.into_iter().map(|c| (root.to_owned(), c.clone())));
    }
    Ok(out)
}

/// One run of `job` (named `name`): for every dataset, what the target lacks, as planned by
/// [`plan::plan`]; holds moved forward; a report of bytes, snapshots, resume and lag.
pub fn run_job(
    zfs: &mut RealZfs,
    name: &str,
    job: &ReplicationJob,
    options: &RunOptions,
) -> Result<JobReport, ReplError> {
    let started = Instant::now();
    let target = job
        .target
        .as_ref()
        .map_or_else(|| local::LOCAL.to_owned(), ToString::to_string);
    let remote = |(conn, fingerprint)| {
        Dest::Remote(Link {
            conn,
            target: &target,
            fingerprint,
            ranges: false,
        })
    };
    let mut dest = match job.transport {
        Transport::Local => Dest::Local,
        Transport::Ssh => remote((super::ssh::connect(name, job)?, String::new())),
        Transport::Tls if job.target.is_none() => {
            return Err(config_err(
                name,
                "target is not set; give the receiving box as host:port, or set \
                 transport = \"local\" for a pool on this box",
            ));
        }
        Transport::Tls => remote(connect_tls(name, job, &target)?),
    };
    let datasets = source_datasets(zfs, job)?;
    let roots: Vec<String> = job
        .datasets
        .iter()
        .map(|d| plan::target_name(job.target_dataset.as_str(), d.as_str(), d.as_str()))
        .collect();
    if let Dest::Remote(link) = &mut dest {
        let welcome = link.ask(&Request::Hello {
            version: proto::VERSION,
            job: name.to_owned(),
            datasets: roots.clone(),
        })?;
        link.ranges = welcome.has_feature(proto::FEATURE_RANGE);
        if !link.ranges {
            tracing::info!(
                job = name,
                target = link.target,
                "the receiver takes no range streams (a stored older than them): one \
                 stream per snapshot"
            );
        }
    }
    let rate = options
        .bandwidth_limit
        .or(job.bandwidth_limit.map(|b| b.bytes()))
        .unwrap_or(0);
    let mut limiter = Limiter::new(rate);
    let mut report = JobReport {
        job: name.to_owned(),
        ..JobReport::default()
    };
    let mut oldest_newest: Option<i64> = None;
    for (root, dataset) in &datasets {
        let target_ds = plan::target_name(job.target_dataset.as_str(), root, dataset);
        let landed = match replicate_dataset(
            zfs,
            name,
            job,
            &mut dest,
            dataset,
            &target_ds,
            &mut limiter,
            &mut report,
        ) {
            // A child made since the last snapshot of a recursive policy has none yet:
            // the rest of the tree still goes, and the child follows once it has one.
            Err(ReplError::Plan(plan::PlanError::NoSnapshots { .. })) if root != dataset => {
                tracing::warn!(
                    job = name,
                    dataset = dataset.as_str(),
                    "no snapshot of this child dataset yet; skipped this run"
                );
                continue;
            }
            other => other?,
        };
        if let Some(c) = landed {
            oldest_newest = Some(oldest_newest.map_or(c, |o| o.min(c)));
        }
    }
    if let Dest::Local = dest {
        // What the remote receiver does at `Bye`.
        receive::mount_waiting_replicas(zfs, &roots);
    }
    if let Dest::Remote(link) = &mut dest {
        let _ = proto::send_msg(&mut link.conn, &Request::Bye);
        link.conn.close();
    }
    report.duration = started.elapsed();
    // The lag as the run ends: the daemon subtracts it from the run's end to get the
    // recovery point, so a long run must not look fresher than its data.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    report.lag = oldest_newest.map(|c| Duration::from_secs(now.saturating_sub(c).max(0) as u64));
    tracing::info!(
        job = name,
        bytes = report.bytes,
        snapshots = report.snapshots,
        resumed = report.resumed,
        secs = report.duration.as_secs_f64(),
        "replication run done"
    );
    Ok(report)
}

/// Mutual TLS to stored's listener, both sides pinned by certificate fingerprint; returns
/// the stream and this box's fingerprint (for the hint when the receiver refuses it).
fn connect_tls(
    name: &str,
    job: &ReplicationJob,
    target: &str,
) -> Result<(Box<dyn Conn>, String), ReplError> {
    let identity_file = job.identity_file.as_ref().ok_or_else(|| {
        config_err(
            name,
            "identity_file is not set; make one with `stored replication identity FILE`",
        )
    })?;
    let pin = job.target_fingerprint.as_ref().ok_or_else(|| {
        config_err(
            name,
            "target_fingerprint is not set; `stored replication identity FILE` on the target \
             prints it",
        )
    })?;
    let identity = Identity::load(Path::new(identity_file.as_str()))?;
    let fingerprint = identity.fingerprint();
    let config = tls::client_config(identity, &pin.to_string())?;
    let tcp = TcpStream::connect(target).map_err(|source| ReplError::Connect {
        target: target.to_owned(),
        source,
    })?;
    tcp.set_nodelay(true).ok();
    if let Err(e) = tls::detect_dead_peer(&tcp) {
        tracing::warn!(error = %e, "cannot set TCP keepalive; a vanished peer is noticed only by the kernel's defaults");
    }
    let server_name = ServerName::try_from(tls::SERVER_NAME)
        .map_err(|e| config_err(name, format!("TLS name: {e}")))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), server_name)
        .map_err(tls::TlsError::from)?;
    Ok((Box::new(rustls::StreamOwned::new(conn, tcp)), fingerprint))
}

/// Replicates one dataset; returns the creation time of the newest source snapshot that
/// is now on the target.
#[allow(clippy::too_many_arguments)]
fn replicate_dataset(
    zfs: &mut RealZfs,
    job_name: &str,
    job: &ReplicationJob,
    dest: &mut Dest<'_>,
    dataset: &str,
    target_ds: &str,
    limiter: &mut Option<Limiter>,
    report: &mut JobReport,
) -> Result<Option<i64>, ReplError> {
    let started = Instant::now();
    // Snapshots, bookmarks and `encryption` in one `zfs list`: the listing is read again
    // at the end (hold, bookmark) rather than listed again.
    let listing = zfs.cli().listing(dataset, &["encryption"])?;
    let source: Vec<Snap> = listing.snapshots.iter().cloned().map(Snap::from).collect();
    let bookmarks: Vec<Snap> = listing
        .bookmarks
        .iter()
        .map(|(name, guid, createtxg)| Snap {
            name: name.clone(),
            guid: *guid,
            createtxg: *createtxg,
            creation: 0,
        })
        .collect();
    let listed = started.elapsed();
    let state = dest.state(zfs, target_ds)?;
    let stated = started.elapsed();
    let token = state
        .resume_token
        .as_deref()
        .map(resume::decode)
        .transpose()
        .map_err(|e| ReplError::Refused {
            target: dest.target().to_owned(),
            message: format!("{target_ds}: {e}"),
        })?;
    let pending = token.as_ref().map(|t| PendingResume {
        toguid: t.toguid,
        fromguid: t.fromguid,
    });
    let plan = plan::plan(
        dataset,
        target_ds,
        &source,
        &bookmarks,
        &state,
        pending,
        job.on_divergence,
    )?;
    if let Some(stale) = &plan.abort_partial {
        tracing::warn!(job = job_name, target = target_ds, reason = %stale, "aborting the target's interrupted receive; sending afresh from the newest common snapshot");
        dest.abort_partial(zfs, target_ds, stale.toguid)?;
        report.aborted.push(format!("{target_ds}: {stale}"));
    }
    if let Some(rb) = &plan.rollback {
        tracing::warn!(target = target_ds, to = %rb.to, destroy = ?rb.destroy, "rolling the diverged target back (on_divergence = rollback)");
        dest.rollback(zfs, target_ds, &rb.to, &rb.destroy)?;
    }
    let raw = listing
        .props
        .first()
        .is_some_and(|e| e != "off" && e != "-");
    let planned = started.elapsed();
    let flags = SendFlags {
        embed_data: true,
        large_block: true,
        compress: true,
        raw,
    };
    let mut landed: Option<String> = newest_common(&source, &state);
    let mut result = Ok(());
    let mut steps = 0;
    // The snapshots a cut stream may have left a resume token for.
    let mut cut: Vec<String> = Vec::new();
    let planned_steps = with_ranges(plan.steps.clone(), dest.takes_ranges());
    for step in &planned_steps {
        if let Step::Range { from, to, count } = step {
            tracing::info!(job = job_name, %step, target = target_ds, "sending");
            let sent = match dest {
                Dest::Local => local::range(zfs, dataset, (from, to), target_ds, raw, limiter),
                Dest::Remote(link) => match range_snaps(&source, from, to) {
                    Some((base, snaps)) => {
                        let range = RemoteRange {
                            dataset,
                            target_ds,
                            base: &base,
                            snapshots: &snaps,
                            raw,
                        };
                        remote_range(zfs, link, &range, limiter)
                    }
                    None => Err(config_err(
                        job_name,
                        format!("{dataset}: the range @{from} -> @{to} is not in its listing"),
                    )),
                },
            };
            match sent {
                Ok(bytes) => {
                    report.bytes += bytes;
                    report.snapshots += count;
                    steps += count;
                    landed = Some(to.clone());
                }
                Err(e) => {
                    // The snapshots before the one in flight landed: the target says which.
                    // A broken link cannot say: then every snapshot not known to have
                    // landed may be the one in flight.
                    let after_state = dest.state(zfs, target_ds).ok();
                    let after = after_state.as_ref().and_then(|t| newest_common(&source, t));
                    let txg = |name: &str| {
                        source
                            .iter()
                            .find(|s| s.name == name)
                            .map_or(0, |s| s.createtxg)
                    };
                    let base_txg = txg(from);
                    let reached = after.as_deref().map_or(base_txg, txg).max(base_txg);
                    let arrived = source
                        .iter()
                        .filter(|s| s.createtxg > base_txg && s.createtxg <= reached)
                        .count();
                    report.snapshots += arrived;
                    steps += arrived;
                    if arrived > 0 {
                        landed = after;
                    }
                    cut = match &after_state {
                        // The snapshot the target's token names, if any: a range refused
                        // before its stream, or whose receive failed whole, left none.
                        Some(t) => in_flight(&source, t).into_iter().collect(),
                        // Any snapshot not known to have landed may be the one the token
                        // names (the receiver commits each before the next arrives), so
                        // all of them are held until a run lands them.
                        None => source
                            .iter()
                            .filter(|s| s.createtxg > reached && s.createtxg <= txg(to))
                            .map(|s| s.name.clone())
                            .collect(),
                    };
                    tracing::warn!(job = job_name, target = target_ds, arrived, in_flight = ?cut, error = %e, "a range stream was cut");
                    result = Err(e);
                    break;
                }
            }
            continue;
        }
        let to_full = format!("{dataset}@{}", step.to());
        let target_snap = format!("{target_ds}@{}", step.to());
        let (from, flags, object, offset, resume) = match step {
            Step::Full { .. } => (None, flags, 0, 0, false),
            Step::Incremental { from, .. } => (
                Some(format!("{dataset}{}", from.suffix())),
                flags,
                0,
                0,
                false,
            ),
            Step::Range { .. } => continue,
            Step::Resume { .. } => {
                let Some(t) = &token else { continue };
                let from = t.fromguid.and_then(|g| {
                    source
                        .iter()
                        .find(|s| s.guid == g)
                        .map(|s| format!("{dataset}@{}", s.name))
                        .or_else(|| {
                            bookmarks
                                .iter()
                                .find(|b| b.guid == g)
                                .map(|b| format!("{dataset}#{}", b.name))
                        })
                });
                let f = SendFlags {
                    embed_data: t.embed_ok,
                    large_block: t.large_block_ok,
                    compress: t.compress_ok,
                    raw: t.raw_ok,
                };
                (from, f, t.object, t.offset, true)
            }
        };
        tracing::info!(job = job_name, %step, target = %target_snap, "sending");
        let spec = StreamSpec {
            snapshot: &to_full,
            from: from.as_deref(),
            flags,
            resume_at: (object, offset),
            target_snapshot: &target_snap,
            resume,
        };
        let sent = match dest {
            Dest::Remote(link) => stream(zfs, link, &spec, limiter),
            Dest::Local => local::stream(zfs, &spec, limiter),
        };
        match sent {
            Ok(bytes) => {
                report.bytes += bytes;
                report.snapshots += 1;
                report.resumed |= resume;
                steps += 1;
                landed = Some(step.to().to_owned());
            }
            Err(e) => {
                cut = vec![step.to().to_owned()];
                result = Err(e);
                break;
            }
        }
    }
    report
        .datasets
        .push((dataset.to_owned(), target_ds.to_owned(), steps));
    let streamed = started.elapsed();
    // Even after a failure, the snapshots that landed are the new base.
    if let Some(base) = &landed {
        holds::move_hold_among(zfs, dataset, job_name, base, &listing.snapshots)?;
        bookmark_base(zfs, dataset, job_name, base, &source, &listing.bookmarks);
    }
    // The snapshot whose stream was cut is what the target's resume token names: held
    // too, so that no prune before the next run can make the token useless. The next run
    // that lands it moves the hold on as usual.
    hold_cut_snapshots(zfs, dataset, job_name, &cut);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    tracing::info!(
        job = job_name,
        dataset,
        steps,
        list_ms = ms(listed),
        target_state_ms = ms(stated - listed),
        plan_ms = ms(planned - stated),
        streams_ms = ms(streamed - planned),
        hold_and_bookmark_ms = ms(started.elapsed() - streamed),
        "replication phases"
    );
    result?;
    Ok(landed.and_then(|l| source.iter().find(|s| s.name == l).map(|s| s.creation)))
}

fn hold_cut_snapshots(zfs: &mut RealZfs, dataset: &str, job: &str, snaps: &[String]) {
    let tag = holds::hold_tag(job);
    let missing: Vec<(String, String)> = snaps
        .iter()
        .map(|snap| format!("{dataset}@{snap}"))
        .filter(|full| {
            !zfs.holds(full)
                .map(|h| h.contains_key(&tag))
                .unwrap_or(false)
        })
        .map(|full| (full, tag.clone()))
        .collect();
    if missing.is_empty() {
        return;
    }
    let names: Vec<&str> = missing.iter().map(|(s, _)| s.as_str()).collect();
    match zfs.hold(&missing) {
        Ok(()) => {
            tracing::info!(snapshots = ?names, "held the snapshots a cut stream may resume, for the resume")
        }
        Err(e) => {
            tracing::warn!(snapshots = ?names, error = %e, "cannot hold the snapshots a cut stream may resume; a prune may make the resume token stale")
        }
    }
}

/// The source snapshot an interrupted receive on the target was receiving (its token's
/// `toguid`), if the target has one.
fn in_flight(source: &[Snap], state: &TargetState) -> Option<String> {
    let token = resume::decode(state.resume_token.as_deref()?).ok()?;
    source
        .iter()
        .find(|s| s.guid == token.toguid)
        .map(|s| s.name.clone())
}

fn newest_common(source: &[Snap], state: &TargetState) -> Option<String> {
    let common = plan::common_snapshots(source, state);
    source
        .iter()
        .filter(|s| common.contains(&s.name))
        .max_by_key(|s| s.createtxg)
        .map(|s| s.name.clone())
}

/// A bookmark of the base, `#stored-repl_<job>_<txg>`, and the job's older ones removed:
/// if the held snapshot is destroyed anyway (`zfs release` by hand), the bookmark is still
/// a valid incremental source. Failures only warn: the hold is the main protection.
/// `existing` is the dataset's bookmarks as listed at the start of the run (only this job
/// makes or removes its own).
fn bookmark_base(
    zfs: &RealZfs,
    dataset: &str,
    job: &str,
    base: &str,
    source: &[Snap],
    existing: &[(String, u64, u64)],
) {
    let Some(snap) = source.iter().find(|s| s.name == base) else {
        return;
    };
    let prefix = format!("stored-repl_{job}_");
    let name = format!("{prefix}{}", snap.createtxg);
    if !existing.iter().any(|(n, _, _)| *n == name) {
        let bm = (format!("{dataset}#{name}"), format!("{dataset}@{base}"));
        if let Err(e) = zfs.lzc().bookmark(&[bm]) {
            tracing::warn!(dataset, error = %e, "cannot bookmark the replication base");
            return;
        }
    }
    let old: Vec<String> = existing
        .iter()
        .filter(|(old, _, _)| old.starts_with(&prefix) && *old != name)
        .map(|(old, _, _)| format!("{dataset}#{old}"))
        .collect();
    if !old.is_empty()
        && let Err(e) = zfs.lzc().destroy_bookmarks(&old)
    {
        tracing::warn!(dataset, bookmarks = ?old, error = %e, "cannot remove old replication bookmarks");
    }
}

/// One stream of a run, whatever carries it: what `lzc_send_resume` sends and where the
/// receive puts it.
pub(super) struct StreamSpec<'a> {
    /// The source snapshot, `pool/fs@snap`.
    pub snapshot: &'a str,
    /// The incremental source (`@snap` or `#bookmark`, full name); none for a full stream.
    pub from: Option<&'a str>,
    pub flags: SendFlags,
    /// `(object, offset)` of a resumed stream, from the target's token; `(0, 0)` otherwise.
    pub resume_at: (u64, u64),
    /// The snapshot it lands as on the target.
    pub target_snapshot: &'a str,
    /// Whether this continues an interrupted receive.
    pub resume: bool,
}

/// Sends one stream: `lzc_send_resume` writes into a pipe in a thread, this thread frames
/// it to the receiver through the limiter. Returns the stream bytes.
fn stream(
    zfs: &RealZfs,
    link: &mut Link<'_>,
    spec: &StreamSpec<'_>,
    limiter: &mut Option<Limiter>,
) -> Result<u64, ReplError> {
    let &StreamSpec {
        snapshot,
        from,
        flags,
        resume_at: (object, offset),
        target_snapshot,
        resume,
    } = spec;
    let (mut reader, writer) = io::pipe().map_err(|e| link.broke(e))?;
    proto::widen_pipe(&reader);
    proto::send_msg(
        &mut link.conn,
        &Request::Receive {
            snapshot: target_snapshot.to_owned(),
            raw: flags.raw,
            resume,
        },
    )
    .map_err(|e| link.broke(e))?;
    let lzc = zfs.lzc();
    let mut bytes = 0u64;
    let (sent, link_result) = std::thread::scope(|s| {
        let sender = s.spawn(move || {
            let r = lzc.send_resume(snapshot, from, writer.as_fd(), flags, object, offset);
            drop(writer);
            r
        });
        let link_result = proto::send_stream(&mut reader, &mut link.conn, |n| {
            if let Some(l) = limiter.as_mut() {
                l.take(n);
            }
        })
        .map(|n| bytes = n);
        // Closing our end makes a blocked lzc_send fail with EPIPE instead of hanging.
        drop(reader);
        let sent = sender.join();
        (sent, link_result)
    });
    let sent = match sent {
        Ok(r) => r,
        Err(_) => {
            return Err(ReplError::Send {
                snapshot: snapshot.to_owned(),
                source: crate::zfs::ZfsError::Parse {
                    command: "lzc_send".into(),
                    line: String::new(),
                    why: "the send thread panicked".into(),
                },
            });
        }
    };
    link_result.map_err(|e| link.broke(e))?;
    proto::send_end(&mut link.conn, sent.is_ok()).map_err(|e| link.broke(e))?;
    let reply: Reply = proto::read_msg(&mut link.conn).map_err(|e| link.broke(e))?;
    if let Err(e) = sent {
        return Err(ReplError::Send {
            snapshot: snapshot.to_owned(),
            source: e.into(),
        });
    }
    match reply {
        Reply::Received { .. } => Ok(bytes),
        Reply::Error { message } => Err(ReplError::Refused {
            target: link.target.to_owned(),
            message,
        }),
        other => Err(ReplError::Refused {
            target: link.target.to_owned(),
            message: format!("unexpected answer to a stream: {other:?}"),
        }),
    }
}

/// A range for a remote receiver: what [`remote_range`] sends.
struct RemoteRange<'a> {
    dataset: &'a str,
    target_ds: &'a str,
    base: &'a RangeSnap,
    /// Oldest first.
    snapshots: &'a [RangeSnap],
    raw: bool,
}

/// Sends a range to a receiver that takes them: `ReceiveRange`, and after its `Ok` the
/// stream of `zfs send -L -e -c [-w] -I` framed through the limiter (the receiver runs
/// `zfs receive -s -u`). Returns the stream bytes.
fn remote_range(
    zfs: &RealZfs,
    link: &mut Link<'_>,
    range: &RemoteRange<'_>,
    limiter: &mut Option<Limiter>,
) -> Result<u64, ReplError> {
    let Some(last) = range.snapshots.last() else {
        return Ok(0);
    };
    link.ask(&Request::ReceiveRange {
        dataset: range.target_ds.to_owned(),
        base: range.base.clone(),
        snapshots: range.snapshots.to_vec(),
        raw: range.raw,
    })?;
    let mut send = match local::RangeSend::spawn(
        zfs,
        range.dataset,
        (&range.base.name, &last.name),
        range.raw,
    ) {
        Ok(s) => s,
        Err(e) => {
            // The receiver waits for a stream: an empty one, aborted, keeps the link usable.
            proto::send_end(&mut link.conn, false).map_err(|e| link.broke(e))?;
            let _: Result<Reply, _> = proto::read_msg(&mut link.conn);
            return Err(e);
        }
    };
    let link_result = match send.stdout.take() {
        Some(mut out) => proto::send_stream(&mut out, &mut link.conn, |n| {
            if let Some(l) = limiter.as_mut() {
                l.take(n);
            }
        }),
        None => Err(io::Error::other("zfs send has no stdout")),
    };
    let snapshot = send.snapshot.clone();
    // Its stream read to the end or dropped: a send still writing fails with EPIPE.
    let sent = send.finish();
    let bytes = link_result.map_err(|e| link.broke(e))?;
    proto::send_end(&mut link.conn, sent.is_ok()).map_err(|e| link.broke(e))?;
    let reply: Reply = proto::read_msg(&mut link.conn).map_err(|e| link.broke(e))?;
    if let Err(source) = sent {
        return Err(ReplError::Send { snapshot, source });
    }
    match reply {
        Reply::Received { .. } => Ok(bytes),
        Reply::Error { message } => Err(ReplError::Refused {
            target: link.target.to_owned(),
            message,
        }),
        other => Err(ReplError::Refused {
            target: link.target.to_owned(),
            message: format!("unexpected answer to a range: {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::Base;
    use super::*;

    /// A run ends only once the receiver has finished what it does at `Bye` (mounting the
    /// replicas left waiting) and closed the connection.
    #[test]
    fn the_sender_waits_for_the_receiver_to_finish_after_bye() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let receiver = Identity::create(&dir.path().join("receiver.pem")).unwrap();
        let sender = Identity::create(&dir.path().join("sender.pem")).unwrap();
        let (rfp, sfp) = (receiver.fingerprint(), sender.fingerprint());
        let server = Arc::new(tls::server_config(receiver, vec![sfp]).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let finished = Arc::clone(&done);
        let receiver = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(server).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            assert_eq!(proto::read_msg::<Request>(&mut s).unwrap(), Request::Bye);
            // The receiver's work at Bye, slow enough to be missed by a sender that
            // does not wait.
            std::thread::sleep(Duration::from_millis(300));
            finished.store(true, Ordering::SeqCst);
        });
        let config = tls::client_config(sender, &rfp).unwrap();
        let name = ServerName::try_from(tls::SERVER_NAME).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut s: Tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap());
        proto::send_msg(&mut s, &Request::Bye).unwrap();
        s.close();
        assert!(
            done.load(Ordering::SeqCst),
            "the sender closed before the receiver was done with Bye"
        );
        receiver.join().unwrap();
    }

    #[test]
    fn the_limiter_lets_a_burst_through_then_paces() {
        let mut l = Limiter::new(4 * 1024 * 1024).unwrap();
        // Within the burst: no sleep is owed.
        l.take(1024);
        assert!(l.tokens > 0.0);
        l.take(2 * 1024 * 1024);
        // The debt was slept off: the bucket is at most empty afterwards, never refilled
        // beyond the burst.
        assert!(l.tokens <= l.burst);
        assert!(Limiter::new(0).is_none());
    }

    #[test]
    fn base_suffixes() {
        assert_eq!(Base::Snapshot("a".into()).suffix(), "@a");
        assert_eq!(Base::Bookmark("b".into()).suffix(), "#b");
    }

    fn snap(name: &str, guid: u64, createtxg: u64) -> Snap {
        Snap {
            name: name.into(),
            guid,
            createtxg,
            creation: 0,
        }
    }

    fn incs(n: usize) -> Vec<Step> {
        (1..=n)
            .map(|i| Step::Incremental {
                from: Base::Snapshot(format!("s{}", i - 1)),
                to: format!("s{i}"),
            })
            .collect()
    }

    /// A receiver that did not list the range feature (a stored older than it) gets the
    /// plan's single streams untouched; one that did, and the local transport, a range.
    #[test]
    fn ranges_only_for_a_destination_that_takes_them() {
        assert_eq!(with_ranges(incs(12), false), incs(12));
        assert_eq!(
            with_ranges(incs(12), true),
            vec![Step::Range {
                from: "s0".into(),
                to: "s12".into(),
                count: 12
            }]
        );
        // Below RANGE_MIN a range costs more than it saves, whoever receives.
        assert_eq!(with_ranges(incs(RANGE_MIN - 1), true), incs(RANGE_MIN - 1));
    }

    /// The list a range request carries: every snapshot after the base up to the newest,
    /// by txg whatever the listing's order, with GUIDs; nothing for an unknown end.
    #[test]
    fn a_range_carries_its_snapshots_in_txg_order() {
        let source = [
            snap("s3", 3, 30),
            snap("s0", 100, 1),
            snap("s1", 1, 10),
            snap("s2", 2, 20),
            snap("s4", 4, 40),
        ];
        let (base, snaps) = range_snaps(&source, "s1", "s3").unwrap();
        assert_eq!(
            base,
            RangeSnap {
                name: "s1".into(),
                guid: 1
            }
        );
        let names: Vec<(&str, u64)> = snaps.iter().map(|s| (s.name.as_str(), s.guid)).collect();
        assert_eq!(names, vec![("s2", 2), ("s3", 3)]);
        assert!(range_snaps(&source, "gone", "s3").is_none());
        assert!(range_snaps(&source, "s1", "gone").is_none());
    }

    /// After a failed range, the snapshot the target's token names is the one held for
    /// the resume; without a token (a refusal before the stream) none is.
    #[test]
    fn the_snapshot_in_flight_is_the_one_the_token_names() {
        let source = [snap("s1", 1, 10), snap("s2", 2, 20), snap("s3", 3, 30)];
        let mut t = TargetState {
            exists: true,
            snapshots: vec![snap("s1", 1, 2)],
            resume_token: Some(crate::zfs::resume::token_for_tests(1, 2)),
            written: 0,
        };
        assert_eq!(in_flight(&source, &t), Some("s2".to_owned()));
        t.resume_token = Some(crate::zfs::resume::token_for_tests(2, 99));
        assert_eq!(in_flight(&source, &t), None);
        t.resume_token = None;
        assert_eq!(in_flight(&source, &t), None);
    }
}
