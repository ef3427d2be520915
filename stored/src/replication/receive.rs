//! The receiver: stored's listener that takes streams from allowed senders and receives
//! them with `lzc_receive_resumable`, one thread per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::Arc;

use appliance::model::ReplicationListener;

use super::ReplError;
use super::plan::{Snap, TargetState};
use super::proto::{self, Frame, RangeSnap, Reply, Request};
use super::tls::{self, Identity};
use crate::zfs::{RealZfs, Zfs as _, ZfsError};

/// What the listener needs, from `storage.replication_listener`.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// `host:port` to bind.
    pub listen: String,
    pub identity_file: PathBuf,
    /// `sha256:<hex>` fingerprints of the senders' certificates.
    pub allowed_clients: Vec<String>,
    /// Datasets under which senders may receive.
    pub datasets: Vec<String>,
}

impl ReceiverConfig {
    pub fn from_model(l: &ReplicationListener) -> Self {
        Self {
            listen: l.listen.to_string(),
            identity_file: PathBuf::from(l.identity_file.as_str()),
            allowed_clients: l.allowed_clients.iter().map(ToString::to_string).collect(),
            datasets: l.datasets.iter().map(|d| d.as_str().to_owned()).collect(),
        }
    }
}

/// A bound listener, so that a caller can learn the port before serving.
#[derive(Debug)]
pub struct Receiver {
    listener: TcpListener,
    settings: ReceiverSettings,
}

/// The listener's allowed clients, identity and datasets, which an apply replaces while it
/// listens: each new connection takes the settings current when it is accepted.
#[derive(Debug, Clone)]
pub struct ReceiverSettings(Arc<std::sync::RwLock<Settings>>);

/// The TLS config (identity and allowed clients) and the datasets.
type Settings = (Arc<rustls::ServerConfig>, Arc<Vec<String>>);

impl ReceiverSettings {
    fn load(cfg: &ReceiverConfig) -> Result<Settings, ReplError> {
        let identity = Identity::load(&cfg.identity_file)?;
        tracing::info!(fingerprint = %identity.fingerprint(), "replication receiver identity");
        let tls = tls::server_config(identity, cfg.allowed_clients.clone())?;
        Ok((Arc::new(tls), Arc::new(cfg.datasets.clone())))
    }

    /// Replaces the settings (`cfg.listen` is not rebound); on an error the old ones stay.
    pub fn update(&self, cfg: &ReceiverConfig) -> Result<(), ReplError> {
        let new = Self::load(cfg)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }

    /// Sets the allowed clients and datasets of `cfg` with the identity in use, not read
    /// again: what an apply falls back to when the identity file cannot be read, so that
    /// a client removed from the config (or the whole listener) is refused at once.
    pub fn restrict(&self, cfg: &ReceiverConfig) -> Result<(), ReplError> {
        let mut s = self.0.write().unwrap_or_else(|e| e.into_inner());
        let tls = tls::server_config_keeping_identity(
            Arc::clone(&s.0.cert_resolver),
            cfg.allowed_clients.clone(),
        )?;
        *s = (Arc::new(tls), Arc::new(cfg.datasets.clone()));
        Ok(())
    }

    /// The TLS config and datasets a connection accepted now gets.
    pub fn current(&self) -> Settings {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Receiver {
    pub fn bind(cfg: &ReceiverConfig) -> Result<Self, ReplError> {
        let settings = ReceiverSettings(Arc::new(std::sync::RwLock::new(ReceiverSettings::load(
            cfg,
        )?)));
        let listener = TcpListener::bind(&cfg.listen).map_err(|source| ReplError::Listen {
            addr: cfg.listen.clone(),
            source,
        })?;
        Ok(Self { listener, settings })
    }

    /// A handle that replaces the settings of this listener while it serves.
    pub fn settings(&self) -> ReceiverSettings {
        self.settings.clone()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the listener fails; each is served in its own thread.
    pub fn serve(self) -> Result<(), ReplError> {
        let addr = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%addr, "replication receiver listening");
        loop {
            let (tcp, peer) = self.listener.accept().map_err(|source| ReplError::Listen {
                addr: addr.clone(),
                source,
            })?;
            let (tls, datasets) = self.settings.current();
            std::thread::spawn(move || {
                if let Err(e) = connection(tcp, tls, &datasets) {
                    tracing::warn!(%peer, error = %e, "replication connection ended with an error");
                }
            });
        }
    }
}

/// Binds `cfg.listen` and serves forever (what `stored receive` and the daemon run).
pub fn serve_receiver(cfg: &ReceiverConfig) -> Result<(), ReplError> {
    Receiver::bind(cfg)?.serve()
}

fn under(dataset: &str, roots: &[String]) -> bool {
    roots.iter().any(|r| {
        dataset == r
            || dataset
                .strip_prefix(r.as_str())
                .is_some_and(|t| t.starts_with('/'))
    })
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn connection(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    allowed: &[String],
) -> Result<(), ReplError> {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    tcp.set_nodelay(true).ok();
    if let Err(e) = tls::detect_dead_peer(&tcp) {
        tracing::warn!(error = %e, "cannot set TCP keepalive; a vanished peer is noticed only by the kernel's defaults");
    }
    let conn = rustls::ServerConnection::new(config).map_err(tls::TlsError::from)?;
    let mut tls: Tls = rustls::StreamOwned::new(conn, tcp);
    serve_conn(&mut tls, &peer, allowed, None)?;
    // A clean end, after the work of `Bye`: the sender waits for it.
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    Ok(())
}

/// Answers one sender's requests on `conn` (TLS, or `stored replication serve-stdio`'s
/// stdin and stdout) until it says `Bye` or the stream ends. Only datasets under `allowed`
/// are touched; with `only_job` set, a hello from another job is refused.
pub(super) fn serve_conn(
    conn: &mut (impl Read + Write),
    peer: &str,
    allowed: &[String],
    only_job: Option<&str>,
) -> Result<(), ReplError> {
    let link = |source| ReplError::Link {
        target: peer.to_owned(),
        source,
    };
    let mut tls = conn;
    let mut zfs = RealZfs::open()?;
    let mut job = String::new();
    let mut declared: Vec<String> = Vec::new();
    loop {
        let req: Request = match proto::read_msg(&mut tls) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(link(e)),
        };
        let reply = match req {
            Request::Hello {
                version,
                job: j,
                datasets,
            } => {
                if let Some(only) = only_job.filter(|o| *o != j) {
                    Reply::Error {
                        message: format!(
                            "this key may only replicate job {only}, not {j} (the forced \
                             command in the target's authorized_keys)"
                        ),
                    }
                } else if version != proto::VERSION {
                    Reply::Error {
                        message: format!(
                            "protocol version {version} is not {}; update stored on both boxes",
                            proto::VERSION
                        ),
                    }
                } else if let Some(bad) = datasets.iter().find(|d| !under(d, allowed)) {
                    Reply::Error {
                        message: format!(
                            "{bad} is not under the receiver's datasets ({}); set the job's \
                             target_dataset to one of them",
                            allowed.join(", ")
                        ),
                    }
                } else {
                    tracing::info!(%peer, job = %j, ?datasets, "replication job connected");
                    job = j;
                    declared = datasets;
                    Reply::welcome()
                }
            }
            Request::Bye => {
                mount_waiting_replicas(&zfs, &declared);
                return Ok(());
            }
            Request::State { dataset } => {
                guard(&dataset, &declared).unwrap_or_else(|| match state(&zfs, &dataset) {
                    Ok(s) => Reply::State(s),
                    Err(e) => error(e),
                })
            }
            Request::Rollback {
                dataset,
                to,
                destroy,
            } => guard(&dataset, &declared).unwrap_or_else(|| {
                match rollback(&mut zfs, &dataset, &to, &destroy) {
                    Ok(()) => {
                        tracing::warn!(%job, %dataset, %to, destroyed = destroy.len(), "rolled a diverged replica back");
                        Reply::ok()
                    }
                    Err(e) => error(e),
                }
            }),
            Request::AbortPartial { dataset, toguid } => guard(&dataset, &declared)
                .unwrap_or_else(|| match abort_partial(&zfs, &dataset, toguid) {
                    Ok(()) => {
                        tracing::warn!(%job, %dataset, toguid = format_args!("{toguid:#x}"), "aborted an interrupted receive the sender cannot continue");
                        Reply::ok()
                    }
                    Err(e) => Reply::Error {
                        message: e.to_string(),
                    },
                }),
            Request::Receive {
                snapshot,
                raw,
                resume,
            } => {
                let dataset = snapshot.split('@').next().unwrap_or("").to_owned();
                match guard(&dataset, &declared) {
                    Some(refusal) => {
                        drain(&mut tls).map_err(link)?;
                        refusal
                    }
                    None => receive(&zfs, &mut tls, &snapshot, raw, resume).map_err(link)?,
                }
            }
            Request::ReceiveRange {
                dataset,
                base,
                snapshots,
                raw: _,
            } => {
                // Checked before the stream, which follows only an `Ok`: a refused range
                // costs no transfer.
                let refusal = guard(&dataset, &declared).or_else(|| {
                    match state(&zfs, &dataset) {
                        Ok(s) => range_refusal(&dataset, &s, &base, &snapshots),
                        Err(e) => Some(e.to_string()),
                    }
                    .map(|message| Reply::Error { message })
                });
                match refusal {
                    Some(refusal) => refusal,
                    None => {
                        proto::send_msg(&mut tls, &Reply::ok()).map_err(link)?;
                        receive_range(&zfs, &mut tls, &dataset, &base, &snapshots)
                            .map_err(link)?
                    }
                }
            }
        };
        proto::send_msg(&mut tls, &reply).map_err(link)?;
    }
}

fn guard(dataset: &str, declared: &[String]) -> Option<Reply> {
    (!under(dataset, declared)).then(|| Reply::Error {
        message: format!(
            "{dataset} is not below a dataset the job declared in its hello ({})",
            declared.join(", ")
        ),
    })
}

fn error(e: ZfsError) -> Reply {
    Reply::Error {
        message: e.to_string(),
    }
}

pub(super) fn state(zfs: &RealZfs, dataset: &str) -> Result<TargetState, ZfsError> {
    if !zfs.lzc().exists(dataset)? {
        return Ok(TargetState::default());
    }
    // Snapshots, token and `written` from one `zfs list`, not three tools.
    let listing = zfs
        .cli()
        .listing(dataset, &["receive_resume_token", "written"])?;
    let values = listing.props;
    let token = values.first().filter(|t| t.as_str() != "-").cloned();
    let written = values.get(1).and_then(|w| w.parse().ok()).unwrap_or(0);
    Ok(TargetState {
        exists: true,
        snapshots: listing.snapshots.into_iter().map(Snap::from).collect(),
        resume_token: token,
        written,
    })
}

pub(super) fn rollback(
    zfs: &mut RealZfs,
    dataset: &str,
    to: &str,
    destroy: &[String],
) -> Result<(), ZfsError> {
    let names: Vec<String> = destroy.iter().map(|s| format!("{dataset}@{s}")).collect();
    if !names.is_empty() {
        zfs.destroy_snapshots(&names)?;
    }
    zfs.lzc().rollback_to(dataset, &format!("{dataset}@{to}"))?;
    // Whoever wrote to the replica turned readonly off: back on, or reads (atime) would
    // make it diverge again before the next run.
    zfs.cli().set_value(dataset, "readonly", "on")?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AbortError {
    #[error(
        "{dataset} has no interrupted receive to abort (no receive_resume_token); nothing \
         was changed"
    )]
    NoPartial { dataset: String },
    #[error(
        "{dataset} holds an interrupted receive of GUID {have:#x}, not {want:#x} as the \
         sender planned; nothing was aborted, run the job again"
    )]
    OtherPartial {
        dataset: String,
        want: u64,
        have: u64,
    },
    #[error("{dataset}: {source}")]
    Token {
        dataset: String,
        #[source]
        source: crate::zfs::resume::TokenError,
    },
    #[error(transparent)]
    Zfs(#[from] ZfsError),
}

/// Whether the partial receive a token names (`have`, `None` without a token) is the one
/// the sender asked to abort: never anything else, so that a newer partial receive (another
/// run got there first) is kept.
fn may_abort(dataset: &str, have: Option<u64>, want: u64) -> Result<(), AbortError> {
    match have {
        None => Err(AbortError::NoPartial {
            dataset: dataset.to_owned(),
        }),
        Some(have) if have != want => Err(AbortError::OtherPartial {
            dataset: dataset.to_owned(),
            want,
            have,
        }),
        Some(_) => Ok(()),
    }
}

/// Aborts the interrupted receive into `dataset` when its token names `toguid`: the
/// partial state only (`zfs receive -A`), never a received snapshot. What the local
/// transport runs directly and the listener on a sender's `AbortPartial`.
pub(super) fn abort_partial(zfs: &RealZfs, dataset: &str, toguid: u64) -> Result<(), AbortError> {
    let have = if zfs.lzc().exists(dataset).map_err(ZfsError::from)? {
        let values = zfs.cli().get_values(dataset, &["receive_resume_token"])?;
        match values.first().filter(|t| t.as_str() != "-") {
            Some(t) => Some(
                crate::zfs::resume::decode(t)
                    .map_err(|source| AbortError::Token {
                        dataset: dataset.to_owned(),
                        source,
                    })?
                    .toguid,
            ),
            None => None,
        }
    } else {
        None
    };
    may_abort(dataset, have, toguid)?;
    zfs.cli().abort_receive(dataset)?;
    Ok(())
}

/// Skips a refused stream up to its end, so that the connection stays usable.
fn drain(tls: &mut impl Read) -> io::Result<()> {
    loop {
        match proto::read_frame(tls)? {
            Frame::Data(_) => {}
            Frame::End | Frame::Abort => return Ok(()),
            Frame::Msg(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message inside a stream",
                ));
            }
        }
    }
}

/// Whether a receive into `dataset` creates the replica (a resumed first receive too).
pub(super) fn first_receive(zfs: &RealZfs, dataset: &str, resume: bool) -> bool {
    !zfs.lzc().exists(dataset).unwrap_or(true)
        || (resume && zfs.snapshots(dataset, false).is_ok_and(|s| s.is_empty()))
}

/// After a replica's first receive: read-only and mounted.
pub(super) fn settle_new_replica(zfs: &RealZfs, dataset: &str) {
    // A replica is read-only: a change on it (even an atime update) would make the next
    // incremental refuse it as diverged.
    if let Err(e) = zfs.cli().set_value(dataset, "readonly", "on") {
        tracing::warn!(dataset, error = %e, "cannot make the replica read-only");
    }
    // lzc leaves a received filesystem unmounted; mounted, it can be browsed and restored
    // from.
    if let Err(e) = zfs.cli().mount(dataset) {
        tracing::warn!(dataset, error = %e, "cannot mount the replica");
    }
}

/// Unmounted replicas under `roots` that could be mounted (`canmount=on`, a path as
/// mountpoint): from `zfs list -H -o name,mounted,canmount,mountpoint` output.
fn unmounted(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, mounted, canmount, mountpoint) =
                (f.next()?, f.next()?, f.next()?, f.next()?);
            (mounted == "no" && canmount == "on" && mountpoint.starts_with('/')).then_some(name)
        })
        .collect()
}

/// Mounts what a run left unmounted under `roots`, once per run. A replica received into a
/// read-only parent whose replicated snapshot predates the child has no directory to be
/// mounted on (EROFS on mkdir), so its first mount fails; the parent's next snapshot brings
/// the directory (the source made it when it mounted the child), and the run that lands it
/// mounts the child here. Failures are logged: the data is received either way.
pub(super) fn mount_waiting_replicas(zfs: &RealZfs, roots: &[String]) {
    for root in roots {
        if !zfs.lzc().exists(root).unwrap_or(false) {
            continue;
        }
        let argv = [
            zfs.cli().zfs.as_str(),
            "list",
            "-H",
            "-t",
            "filesystem",
            "-o",
            "name,mounted,canmount,mountpoint",
            "-r",
            root.as_str(),
        ];
        let listing = match crate::command::run(&argv) {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(root, error = %e, "cannot list the replicas to mount");
                continue;
            }
        };
        for dataset in unmounted(&listing) {
            match zfs.cli().mount(dataset) {
                Ok(()) => tracing::info!(
                    dataset,
                    "mounted a replica its parent had no directory for before"
                ),
                Err(e) => {
                    tracing::warn!(dataset, error = %e, "replica received but not mounted: its read-only parent has no directory for it until the parent's next snapshot made after the child lands")
                }
            }
        }
    }
}

/// Receives one stream. The frames are copied into a pipe that `lzc_receive_resumable`
/// reads in a thread. A broken link closes the pipe early: the kernel keeps what arrived
/// and sets `receive_resume_token`, and the error goes up (the connection is over).
fn receive(
    zfs: &RealZfs,
    tls: &mut impl Read,
    snapshot: &str,
    raw: bool,
    resume: bool,
) -> io::Result<Reply> {
    let dataset = snapshot.split('@').next().unwrap_or(snapshot);
    let lzc = zfs.lzc();
    let new = first_receive(zfs, dataset, resume);
    let (reader, mut writer) = io::pipe()?;
    proto::widen_pipe(&writer);
    let mut bytes = 0u64;
    let (received, outcome) = std::thread::scope(|s| {
        let receiver = s.spawn(move || {
            let r = lzc.receive_resumable(snapshot, None, false, raw, reader.as_fd());
            drop(reader);
            r
        });
        let outcome = proto::receive_stream(tls, &mut writer, &mut bytes);
        drop(writer);
        (receiver.join(), outcome)
    });
    let received = received.map_err(|_| io::Error::other("the receive thread panicked"))?;
    match outcome {
        Err(e) => {
            tracing::warn!(%snapshot, bytes, error = %e, receive = ?received.as_ref().err().map(ToString::to_string), "stream cut; the partial receive stays resumable");
            Err(e)
        }
        Ok(false) => Ok(Reply::Error {
            message: format!("the sender aborted the stream of {snapshot}"),
        }),
        Ok(true) => match received {
            Ok(()) => {
                tracing::info!(%snapshot, bytes, resume, "received");
                if new {
                    settle_new_replica(zfs, dataset);
                }
                Ok(Reply::Received { bytes })
            }
            Err(e) => Ok(Reply::Error {
                message: format!("receive of {snapshot}: {e}"),
            }),
        },
    }
}

/// Why a range from `base` cannot go into `dataset` as the target is now (`None`: it
/// can): the same conditions a single incremental meets in the sender's plan, checked
/// again here because the state may have changed since the sender read it, and because
/// `zfs receive` of a package would refuse only after the stream was sent.
fn range_refusal(
    dataset: &str,
    target: &TargetState,
    base: &RangeSnap,
    snapshots: &[RangeSnap],
) -> Option<String> {
    if snapshots.is_empty() {
        return Some(format!("an empty range for {dataset}; nothing to receive"));
    }
    if !target.exists {
        return Some(format!(
            "{dataset} does not exist; a range is incremental and needs its base @{}",
            base.name
        ));
    }
    if target.resume_token.is_some() {
        return Some(format!(
            "{dataset} holds an interrupted receive; it is resumed (or aborted) before a \
             range; run the job again"
        ));
    }
    let Some(on_target) = target.snapshots.iter().find(|s| s.guid == base.guid) else {
        return Some(format!(
            "{dataset} lacks the range's base @{} (GUID {:#x}); nothing was received, run the \
             job again",
            base.name, base.guid
        ));
    };
    let newer: Vec<&str> = target
        .snapshots
        .iter()
        .filter(|s| s.createtxg > on_target.createtxg)
        .map(|s| s.name.as_str())
        .collect();
    if !newer.is_empty() || target.written > 0 {
        let mut what = Vec::new();
        if !newer.is_empty() {
            let shown: Vec<String> = newer.iter().take(5).map(|n| format!("@{n}")).collect();
            what.push(format!(
                "{} newer snapshot(s) {}",
                newer.len(),
                shown.join(", ")
            ));
        }
        if target.written > 0 {
            what.push(format!(
                "{} bytes written since its newest snapshot",
                target.written
            ));
        }
        return Some(format!(
            "{dataset} diverged after the range's base @{}: {}; nothing was received",
            on_target.name,
            what.join(" and ")
        ));
    }
    None
}

/// The range's snapshots that are not on the target with their GUID after its receive.
fn missing_from(target: &TargetState, snapshots: &[RangeSnap]) -> Vec<String> {
    snapshots
        .iter()
        .filter(|r| {
            !target
                .snapshots
                .iter()
                .any(|s| s.guid == r.guid && s.name == r.name)
        })
        .map(|r| format!("@{} ({:#x})", r.name, r.guid))
        .collect()
}

/// Receives a range's stream with `zfs receive -s -u dataset` (libzfs_core receives one
/// snapshot per call; the tool loops over a package's). The frames are written into its
/// stdin. A broken link closes the stdin early: the snapshots before the one in flight
/// stay, the kernel keeps what arrived of that one and sets `receive_resume_token`, and
/// the error goes up (the connection is over).
fn receive_range(
    zfs: &RealZfs,
    tls: &mut impl Read,
    dataset: &str,
    base: &RangeSnap,
    snapshots: &[RangeSnap],
) -> io::Result<Reply> {
    let bin = zfs.cli().zfs.as_str();
    let argv = [bin, "receive", "-s", "-u", dataset];
    let last = snapshots.last().map_or("", |s| s.name.as_str());
    let mut child = match super::local::spawn_resumable_receive(&argv) {
        Ok(c) => c,
        Err(e) => {
            drain(tls)?;
            return Ok(Reply::Error {
                message: format!("cannot run {}: {e}", argv.join(" ")),
            });
        }
    };
    let Some(mut stdin) = child.stdin.take() else {
        let _ = child.kill();
        let _ = child.wait();
        drain(tls)?;
        return Ok(Reply::Error {
            message: format!("{} has no stdin", argv.join(" ")),
        });
    };
    proto::widen_pipe(&stdin);
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let mut bytes = 0u64;
    let outcome = proto::receive_stream(tls, &mut stdin, &mut bytes);
    // The end of its stdin: a complete package is finished, a cut one kept resumable.
    drop(stdin);
    let status = child.wait();
    let errors = errors.join().unwrap_or_default();
    let failed = match &status {
        Ok(st) if st.success() => None,
        Ok(st) => Some(format!(
            "`{}` exited {st}: {}",
            argv.join(" "),
            errors.trim()
        )),
        Err(e) => Some(format!("`{}`: {e}", argv.join(" "))),
    };
    match outcome {
        Err(e) => {
            tracing::warn!(%dataset, from = %base.name, to = last, bytes, error = %e, receive = ?failed, "range stream cut; what landed stays, the snapshot in flight is resumable");
            Err(e)
        }
        Ok(false) => Ok(Reply::Error {
            message: format!(
                "the sender aborted the range of {dataset} @{} -> @{last} (its zfs send \
                 failed); the snapshots that arrived stay",
                base.name
            ),
        }),
        Ok(true) => {
            if let Some(message) = failed {
                return Ok(Reply::Error { message });
            }
            let after = state(zfs, dataset).map_err(io::Error::other)?;
            let missing = missing_from(&after, snapshots);
            if !missing.is_empty() {
                return Ok(Reply::Error {
                    message: format!(
                        "the range into {dataset} ended but {} of its {} snapshots are not \
                         there by name and GUID: {}",
                        missing.len(),
                        snapshots.len(),
                        missing
                            .iter()
                            .take(5)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            tracing::info!(%dataset, from = %base.name, to = last, snapshots = snapshots.len(), bytes, "received a range");
            Ok(Reply::Received { bytes })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_must_lie_under_an_allowed_root() {
        let roots = vec!["backup".to_owned(), "pool2/r".to_owned()];
        assert!(under("backup", &roots));
        assert!(under("backup/media/x", &roots));
        assert!(under("pool2/r/a", &roots));
        assert!(!under("backupx/a", &roots));
        assert!(!under("pool2", &roots));
    }

    #[test]
    fn only_mountable_unmounted_replicas_are_mounted() {
        let listing = "vault/box\tyes\ton\t/mnt/vault/box\n\
                       vault/box/late\tno\ton\t/mnt/vault/box/late\n\
                       vault/box/off\tno\toff\t/mnt/vault/box/off\n\
                       vault/box/legacy\tno\ton\tlegacy\n\
                       vault/box/none\tno\ton\tnone\n";
        assert_eq!(unmounted(listing), vec!["vault/box/late"]);
    }

    #[test]
    fn only_the_partial_receive_the_sender_saw_is_aborted() {
        assert!(may_abort("b/a", Some(7), 7).is_ok());
        let e = may_abort("b/a", Some(8), 7).unwrap_err().to_string();
        assert!(
            e.contains("0x8") && e.contains("nothing was aborted"),
            "{e}"
        );
        let e = may_abort("b/a", None, 7).unwrap_err().to_string();
        assert!(e.contains("no interrupted receive"), "{e}");
    }

    fn snap(name: &str, guid: u64, createtxg: u64) -> Snap {
        Snap {
            name: name.into(),
            guid,
            createtxg,
            creation: 0,
        }
    }

    fn r(name: &str, guid: u64) -> RangeSnap {
        RangeSnap {
            name: name.into(),
            guid,
        }
    }

    /// A range goes only onto its base as the target's newest snapshot: not into a missing
    /// dataset, not over an interrupted receive, not without the base (by GUID, whatever
    /// its name), not over newer snapshots or written bytes (divergence).
    #[test]
    fn a_range_is_received_only_onto_its_base_as_the_newest_snapshot() {
        let good = TargetState {
            exists: true,
            snapshots: vec![snap("s0", 10, 5), snap("s1", 11, 6)],
            resume_token: None,
            written: 0,
        };
        let range = [r("s2", 12), r("s3", 13)];
        assert_eq!(range_refusal("b/a", &good, &r("s1", 11), &range), None);
        let refused = |t: &TargetState, base: RangeSnap, snaps: &[RangeSnap]| {
            range_refusal("b/a", t, &base, snaps).unwrap_or_default()
        };
        assert!(refused(&good, r("s1", 11), &[]).contains("empty range"));
        let e = refused(&TargetState::default(), r("s1", 11), &range);
        assert!(e.contains("does not exist"), "{e}");
        let mut partial = good.clone();
        partial.resume_token = Some("1-abc".into());
        assert!(refused(&partial, r("s1", 11), &range).contains("interrupted receive"));
        // Same name, another GUID: not the base.
        let e = refused(&good, r("s1", 99), &range);
        assert!(
            e.contains("lacks the range's base @s1") && e.contains("0x63"),
            "{e}"
        );
        // An older base: s1 on the target is newer, a divergence.
        let e = refused(&good, r("s0", 10), &range);
        assert!(e.contains("diverged") && e.contains("@s1"), "{e}");
        let mut written = good.clone();
        written.written = 4096;
        let e = refused(&written, r("s1", 11), &range);
        assert!(e.contains("diverged") && e.contains("4096 bytes"), "{e}");
    }

    #[test]
    fn every_snapshot_of_a_range_must_land_by_name_and_guid() {
        let after = TargetState {
            exists: true,
            snapshots: vec![snap("s1", 11, 6), snap("s2", 12, 7), snap("s3", 77, 8)],
            resume_token: None,
            written: 0,
        };
        assert!(missing_from(&after, &[r("s2", 12)]).is_empty());
        assert_eq!(
            missing_from(&after, &[r("s2", 12), r("s3", 13), r("s4", 14)]),
            vec!["@s3 (0xd)".to_owned(), "@s4 (0xe)".to_owned()]
        );
    }
}
