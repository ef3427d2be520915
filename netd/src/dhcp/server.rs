//! The sockets and the lease file around the pools.
//!
//! One UDP socket per served link, bound to 0.0.0.0:67 with `SO_BINDTODEVICE` (so each link's
//! broadcasts reach its own pool, and replies to 255.255.255.255 leave through that link)
//! and `SO_BROADCAST`. Clients without an address get broadcast replies, as dnsmasq gives
//! many clients; a renewing client gets a unicast to its address.
//!
//! All links share one lease file (`<state dir>/leases.json`, the format of
//! [`appliance::leases`] that dnsd reads), read at start, so leases survive a restart.
//! A writer task replaces it (atomically, fsynced) after changes, off the links' path: the
//! changes that arrive while it writes go out together in its next write. An ACK of a new
//! binding is sent once the file holds it; a renewal's ACK waits only while a new
//! binding's write is under way (it may be that binding's retransmitted REQUEST).
//!
//! A lease file that cannot be read (damaged, or of a format version this build does not
//! know, say written by a newer firmware before a rollback) is moved aside to
//! `leases.json.corrupt-<unix time>` (never overwritten) and the server starts with an
//! empty table that is *unknown* for one lease time from then: clients may hold addresses
//! it does not know, so an address that is not the client's own is offered only after an
//! ICMP echo probe ([`super::probe`]) got no answer. Clients that renew or reboot are ACKed
//! (the server is authoritative) and so rebuild the table. The window is reckoned from the
//! newest `.corrupt-<time>` file, so a restart inside it (every config apply restarts the
//! server) stays careful.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use std::{fs, io::ErrorKind};

use appliance::Config;
use appliance::leases::{self, Lease, LeaseError};
use dhcproto::v4::Message;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;

use super::{Destination, Pool, Reply, handle, packet, probe, scopes};

/// The lease file's name inside the state directory.
pub const LEASE_FILE: &str = "leases.json";

/// How long to wait before trying a link's socket again (the link may appear later), and
/// before writing the lease file again after a failed write.
const RETRY: Duration = Duration::from_secs(2);

/// Addresses probed for one DISCOVER before giving up until the client asks again.
const PROBES_PER_DISCOVER: usize = 4;

/// Replies (probes, ACKs waiting for the disk) in flight per link; beyond, requests are
/// dropped (clients retransmit).
const MAX_PENDING: usize = 64;

/// What a lease file moved aside is called: `<name>.corrupt-<unix time>[-<n>]`.
const SET_ASIDE: &str = ".corrupt-";

/// Why the DHCP server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot read the stored leases: {0}; fix or remove the file")]
    Leases(#[source] LeaseError),
    #[error("cannot open the DHCP socket on {link}: {source}")]
    Socket {
        link: String,
        #[source]
        source: io::Error,
    },
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the DHCP socket of one link.
pub fn open_socket(link: &str) -> Result<std::net::UdpSocket, DhcpError> {
    let err = |source| DhcpError::Socket {
        link: link.to_owned(),
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.bind_device(Some(link.as_bytes())).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67)).into())
        .map_err(err)?;
    Ok(s.into())
}

/// Serves DHCP on every link of `cfg` with a `[dhcp.<link>]` section until `shutdown`
/// resolves, keeping leases in `state_dir`. `ready` is called once the stored leases are
/// loaded and every socket that can be opened is open; a link whose socket cannot be
/// opened yet (missing, down) is retried every few seconds.
pub async fn run(
    cfg: &Config,
    state_dir: &Path,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), DhcpError> {
    let bound = bind(cfg, state_dir, false)?;
    ready();
    bound.serve(shutdown).await;
    Ok(())
}

/// A DHCP server with its stored leases loaded and its sockets open, not serving yet.
#[derive(Debug)]
pub struct Bound {
    store: Arc<Store>,
    /// Each served link with its socket (`None`: to be retried while serving).
    links: Vec<(String, Option<std::net::UdpSocket>)>,
}

/// The lease tables of all links and their way to the lease file.
struct Store {
    path: PathBuf,
    /// Locked only to answer one request or to copy the leases out: never across I/O.
    table: Mutex<Table>,
    /// Wakes the writer after a change.
    wake: Notify,
    /// The number of changes the writer has written (or tried to: see [`write_behind`]).
    written: watch::Sender<u64>,
}

struct Table {
    pools: Vec<Pool>,
    /// Changes made since the start; the writer writes up to the count it reads.
    changes: u64,
    /// The change that made the latest new binding.
    last_new: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    fn new(path: PathBuf, pools: Vec<Pool>) -> Self {
        Self {
            path,
            table: Mutex::new(Table {
                pools,
                changes: 0,
                last_new: 0,
            }),
            wake: Notify::new(),
            written: watch::Sender::new(0),
        }
    }

    /// Runs `f` on link `index`'s pool at the current time, then counts a change if the
    /// reply says so and wakes the writer. `None`: no such link. Returns the reply and the
    /// change count the lease file must reach before the reply goes out: for a new
    /// binding, its own change; for a renewal, the last new binding's (a client whose
    /// REQUEST is retransmitted while its new binding is being written is then not ACKed
    /// before the disk has it, and other renewals wait at most for that one write).
    fn answer(
        &self,
        index: usize,
        f: impl FnOnce(&mut Pool, u64) -> Reply,
    ) -> Option<(Reply, u64)> {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let r = f(t.pools.get_mut(index)?, now());
        if r.changed {
            t.changes += 1;
            self.wake.notify_one();
        }
        if r.durable {
            t.last_new = t.changes;
        }
        let reach = match (r.durable, r.changed) {
            (true, _) => t.changes,
            (false, true) => t.last_new,
            (false, false) => 0,
        };
        Some((r, reach))
    }

    fn snapshot(&self) -> (u64, Vec<Lease>) {
        let t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        (t.changes, t.pools.iter().flat_map(Pool::leases).collect())
    }
}

/// Loads the stored leases and opens the socket of every link of `cfg` with a
/// `[dhcp.<link>]` section. With `strict` a socket that cannot be opened (the port taken,
/// the link missing) is an error and nothing is written; without, that link is retried
/// every few seconds while serving (`netd dhcp-server` may start before its links).
/// `netd serve` is strict: its links exist by then, and a server that cannot serve must
/// fail the generation's apply rather than retry in the background.
///
/// An unreadable lease file (damaged, another format version) does not stop the server:
/// it is moved aside and the tables start empty and unknown (see the module's text).
pub fn bind(cfg: &Config, state_dir: &Path, strict: bool) -> Result<Bound, DhcpError> {
    let path = state_dir.join(LEASE_FILE);
    let (stored, unreadable) = match leases::read(&path) {
        Ok(l) => (l, None),
        Err(e @ (LeaseError::Parse { .. } | LeaseError::Version { .. })) => (Vec::new(), Some(e)),
        Err(e) => return Err(DhcpError::Leases(e)),
    };
    let t = now();
    let mut pools: Vec<Pool> = scopes(cfg)
        .into_iter()
        .map(|s| {
            let mut p = Pool::new(s);
            p.load(&stored, t);
            p
        })
        .collect();
    if pools.is_empty() {
        tracing::info!("no [dhcp.*] section: no DHCP server to run");
    }
    let mut links = Vec::new();
    for p in &pools {
        let link = p.scope().link.as_str().to_owned();
        let socket = match open_socket(&link) {
            Ok(s) => Some(s),
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "retrying every {} s", RETRY.as_secs());
                None
            }
        };
        links.push((link, socket));
    }
    let mut since = set_aside_since(&path);
    if let Some(e) = unreadable {
        match set_aside(&path, t) {
            Ok(kept) => tracing::error!(error = %e, kept = %kept.display(),
                "the lease file cannot be read: kept aside as {}; starting with an empty \
                 lease table, offering addresses only after a conflict probe for one lease time",
                kept.display()),
            Err(io) => tracing::error!(error = %e,
                "the lease file cannot be read, nor kept aside ({io}): it is replaced; \
                 offering addresses only after a conflict probe for one lease time"),
        }
        since = since.max(Some(t));
    }
    if let Some(since) = since {
        for p in &mut pools {
            let until = since.saturating_add(u64::from(p.scope().lease_secs));
            p.set_unknown_until(until);
            if until > t {
                tracing::warn!(link = %p.scope().link, "the lease table may miss leases \
                    (the lease file was unreadable at {since}): new clients get an address \
                    only after a conflict probe, for {} s more", until - t);
            }
        }
    }
    let store = Store::new(path, pools);
    // At once: dnsd reads the file, and leases the config no longer allows leave it.
    let (_, all) = store.snapshot();
    if let Err(e) = leases::write(&store.path, &all) {
        tracing::error!(error = %e, "cannot write the lease file; the leases stay in memory");
    }
    Ok(Bound {
        store: Arc::new(store),
        links,
    })
}

/// Moves the unreadable lease file `path` aside to `<name>.corrupt-<at>` (with `-<n>` if
/// that exists: an earlier one is never overwritten). Returns the new path.
fn set_aside(path: &Path, at: u64) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| LEASE_FILE.into(), |n| n.to_string_lossy().into_owned());
    for n in 0..1000 {
        let kept = match n {
            0 => dir.join(format!("{name}{SET_ASIDE}{at}")),
            n => dir.join(format!("{name}{SET_ASIDE}{at}-{n}")),
        };
        // A hard link fails if the name exists, where a rename would replace it.
        match fs::hard_link(path, &kept) {
            Ok(()) => {
                fs::remove_file(path)?;
                fs::File::open(dir).and_then(|d| d.sync_all())?;
                return Ok(kept);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("too many lease files kept aside"))
}

/// When the newest lease file was moved aside (next to `path`), if one was.
fn set_aside_since(path: &Path) -> Option<u64> {
    let dir = path.parent()?;
    let prefix = format!("{}{SET_ASIDE}", path.file_name()?.to_string_lossy());
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?;
            rest.split('-').next()?.parse::<u64>().ok()
        })
        .max()
}

impl Bound {
    /// Serves until `shutdown` resolves. Needs a tokio runtime with I/O enabled. Returns
    /// once the lease file holds every change.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = oneshot::channel();
        let writer = tokio::spawn(write_behind(Arc::clone(&self.store), stopped));
        let mut tasks = JoinSet::new();
        for (i, (link, first)) in self.links.into_iter().enumerate() {
            tasks.spawn(serve(i, link, first, Arc::clone(&self.store)));
        }
        shutdown.await;
        tasks.abort_all();
        // The aborted tasks drop their sockets here, so a server started next can bind.
        while tasks.join_next().await.is_some() {}
        // The last changes reach the file before a server started next reads it.
        let _ = stop.send(());
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "the lease file writer failed");
        }
        tracing::info!("DHCP server stopped");
    }
}

/// Writes the lease file after changes until `stop`, then once more if needed. Changes
/// made during a write go out in the next one. A failed write is logged and retried; the
/// ACKs waiting for it are released anyway (the lease holds in memory, as it would
/// without a disk), so a broken disk does not stop DHCP.
async fn write_behind(store: Arc<Store>, mut stop: oneshot::Receiver<()>) {
    let mut on_disk = 0;
    let mut failed = false;
    loop {
        let stopping = tokio::select! {
            () = store.wake.notified() => false,
            () = tokio::time::sleep(RETRY), if failed => false,
            _ = &mut stop => true,
        };
        let (changes, all) = store.snapshot();
        if changes != on_disk {
            let path = store.path.clone();
            match tokio::task::spawn_blocking(move || leases::write(&path, &all)).await {
                Ok(Ok(())) => {
                    on_disk = changes;
                    failed = false;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot write the lease file; the leases \
                        stay in memory, retrying in {} s", RETRY.as_secs());
                    failed = true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the lease file write failed");
                    failed = true;
                }
            }
            store.written.send_replace(changes);
        }
        if stopping {
            return;
        }
    }
}

async fn serve(
    index: usize,
    link: String,
    mut next: Option<std::net::UdpSocket>,
    store: Arc<Store>,
) {
    loop {
        let sock = match next.take() {
            Some(s) => Ok(s),
            None => open_socket(&link),
        }
        .and_then(|s| {
            UdpSocket::from_std(s).map_err(|source| DhcpError::Socket {
                link: link.clone(),
                source,
            })
        });
        match sock {
            Ok(sock) => {
                tracing::info!(%link, "serving DHCP");
                if let Err(e) = serve_socket(index, &link, Arc::new(sock), &store).await {
                    tracing::warn!(%link, error = %e, "DHCP socket failed; reopening it");
                }
            }
            Err(e) => tracing::debug!(error = %e, "retrying in {} s", RETRY.as_secs()),
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn serve_socket(
    index: usize,
    link: &str,
    sock: Arc<UdpSocket>,
    store: &Arc<Store>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1500];
    // Replies that wait (for a probe, for the disk) without holding up the link; dropped
    // with it.
    let mut pending = JoinSet::new();
    loop {
        while pending.try_join_next().is_some() {}
        let (n, _from) = sock.recv_from(&mut buf).await?;
        let Some(req) = buf.get(..n).and_then(packet::decode) else {
            continue;
        };
        let Some((reply, reach)) = store.answer(index, |pool, now| handle(pool, &req, now)) else {
            return Ok(());
        };
        if reply.message.is_none() && reply.probe.is_none() {
            continue;
        }
        let wait = *store.written.borrow() < reach;
        if pending.len() >= MAX_PENDING && (reply.probe.is_some() || wait) {
            tracing::warn!(%link, "too many DHCP replies waiting; request dropped");
            continue;
        }
        let (sock, link) = (Arc::clone(&sock), link.to_owned());
        if let Some(ip) = reply.probe {
            pending.spawn(probe_then_offer(
                index,
                link,
                sock,
                Arc::clone(store),
                req,
                ip,
            ));
        } else if wait {
            let mut written = store.written.subscribe();
            pending.spawn(async move {
                let _ = written.wait_for(|&w| w >= reach).await;
                send(&sock, &link, reply).await;
            });
        } else {
            send(&sock, &link, reply).await;
        }
    }
}

/// Probes `ip` for the DISCOVER `req` and answers it with the first address found free
/// (each one that answers is kept out of the pool, and the next candidate is probed).
async fn probe_then_offer(
    index: usize,
    link: String,
    sock: Arc<UdpSocket>,
    store: Arc<Store>,
    req: Message,
    mut ip: std::net::Ipv4Addr,
) {
    for _ in 0..PROBES_PER_DISCOVER {
        let on = link.clone();
        let in_use = match tokio::task::spawn_blocking(move || {
            probe::answers(&on, ip, probe::TIMEOUT)
        })
        .await
        {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                tracing::error!(%link, %ip, error = %e,
                        "cannot probe the address; no offer while the lease table is unknown");
                return;
            }
            Err(e) => {
                tracing::error!(%link, %ip, error = %e, "the conflict probe failed");
                return;
            }
        };
        tracing::debug!(%link, %ip, in_use, "conflict probe");
        let Some((reply, _)) = store.answer(index, |pool, now| {
            pool.probed(ip, in_use, now);
            handle(pool, &req, now)
        }) else {
            return;
        };
        match reply.probe {
            Some(next) => ip = next,
            None => return send(&sock, &link, reply).await,
        }
    }
    tracing::info!(%link, "{PROBES_PER_DISCOVER} probed addresses in use: no offer this time");
}

async fn send(sock: &UdpSocket, link: &str, reply: Reply) {
    let Some((msg, to)) = reply.message else {
        return;
    };
    let bytes = match packet::encode(&msg) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(%link, error = %e, "cannot encode a DHCP reply");
            return;
        }
    };
    let dest = match to {
        Destination::Broadcast => Ipv4Addr::BROADCAST,
        Destination::Unicast(a) => a,
    };
    if let Err(e) = sock.send_to(&bytes, SocketAddrV4::new(dest, 68)).await {
        tracing::warn!(%link, %dest, error = %e, "cannot send a DHCP reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::pool::OFFER_HOLD_SECS;
    use dhcproto::v4::{DhcpOption, MessageType};
    use std::net::IpAddr;

    const OLD_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const NEW_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    /// A link that does not exist here: `bind` without `strict` leaves its socket for later.
    fn config() -> Config {
        appliance::load_str(
            r#"
version = 1
[interfaces.nolink0]
device = "eth9"
addresses = ["192.168.7.1/24"]
[dhcp.nolink0]
start = "192.168.7.100"
end = "192.168.7.199"
lease_time = "1h"
"#,
        )
        .unwrap()
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 7, last)
    }

    fn request(kind: MessageType, mac: [u8; 6], ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            7,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    /// What the link's server answers `req` at `now`.
    fn answer(b: &Bound, req: &Message, now: u64) -> (Reply, u64) {
        b.store.answer(0, |p, _| handle(p, req, now)).unwrap()
    }

    fn kept_aside(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect();
        v.sort();
        v
    }

    /// A lease file that names 192.168.7.100 for OLD_MAC, cut short: not readable.
    const DAMAGED: &str = r#"{"version":1,"leases":[{"mac":"52:54:00:00:00:01","ip":"192.168.7.100","expires":99999999999"#;

    /// The conservative start that follows an unreadable lease file, whatever made it so.
    fn careful_start(content: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEASE_FILE);
        fs::write(&path, content).unwrap();
        let t = now();
        let b = bind(&config(), dir.path(), false).unwrap();

        // The file is kept aside, whole, and a readable empty one replaces it.
        let kept = kept_aside(dir.path());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(fs::read_to_string(&kept[0]).unwrap(), content);
        assert!(leases::read(&path).unwrap().is_empty());
        let until = b.store.table.lock().unwrap().pools[0].unknown_until();
        assert!((t + 3600..=now() + 3600).contains(&until), "{until}");

        // A new client is offered nothing before a probe: first the old file's address.
        let discover = request(MessageType::Discover, NEW_MAC, Ipv4Addr::UNSPECIFIED);
        let (r, _) = answer(&b, &discover, t);
        assert_eq!((r.message.is_none(), r.probe), (true, Some(ip(100))));
        // The old client answers the probe: the next address is probed, and offered.
        let (r, _) = b
            .store
            .answer(0, |p, _| {
                p.probed(ip(100), true, t);
                handle(p, &discover, t)
            })
            .unwrap();
        assert_eq!(r.probe, Some(ip(101)));
        let (r, _) = b
            .store
            .answer(0, |p, _| {
                p.probed(ip(101), false, t);
                handle(p, &discover, t)
            })
            .unwrap();
        let (offer, _) = r.message.unwrap();
        assert_eq!(offer.yiaddr(), ip(101));
        // Nor does a new client get it by asking for it.
        let mut select = request(MessageType::Discover, [0x52, 0x54, 0, 0, 0, 3], ip(100));
        select.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        select
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(ip(100)));
        let (r, _) = answer(&b, &select, t + OFFER_HOLD_SECS);
        assert!(r.message.is_none() && r.probe != Some(ip(100)), "{r:?}");

        // The old client renews: ACKed, a new binding of this table, written before the ACK.
        let (r, change) = answer(&b, &request(MessageType::Request, OLD_MAC, ip(100)), t);
        let (ack, _) = r.message.clone().unwrap();
        assert_eq!(
            (ack.opts().msg_type(), ack.yiaddr()),
            (Some(MessageType::Ack), ip(100))
        );
        assert!(r.changed && r.durable && change == 1, "{r:?}");

        // A restart inside the window (each config apply restarts the server) stays
        // careful, though the file is readable now; nothing more is kept aside.
        drop(b);
        let b = bind(&config(), dir.path(), false).unwrap();
        assert_eq!(kept_aside(dir.path()).len(), 1);
        let (r, _) = answer(
            &b,
            &request(
                MessageType::Discover,
                [0x52, 0x54, 0, 0, 0, 4],
                Ipv4Addr::UNSPECIFIED,
            ),
            t + 60,
        );
        assert!(r.probe.is_some() && r.message.is_none(), "{r:?}");
        // After one lease time the table is trusted again: offers without probes.
        let (r, _) = answer(
            &b,
            &request(
                MessageType::Discover,
                [0x52, 0x54, 0, 0, 0, 4],
                Ipv4Addr::UNSPECIFIED,
            ),
            until,
        );
        assert!(r.probe.is_none() && r.message.is_some(), "{r:?}");
    }

    #[test]
    fn a_damaged_lease_file_is_kept_aside_and_the_start_is_careful() {
        careful_start(DAMAGED);
    }

    #[test]
    fn a_lease_file_of_a_newer_version_is_kept_aside_and_the_start_is_careful() {
        careful_start(
            r#"{"version":2,"leases":[{"mac":"52:54:00:00:00:01","ip":"192.168.7.100","expires":99999999999}],"more":1}"#,
        );
    }

    #[test]
    fn an_earlier_file_kept_aside_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEASE_FILE);
        fs::write(&path, "first").unwrap();
        let a = set_aside(&path, 1000).unwrap();
        fs::write(&path, "second").unwrap();
        let b = set_aside(&path, 1000).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::read_to_string(&a).unwrap(), "first");
        assert_eq!(fs::read_to_string(&b).unwrap(), "second");
        assert!(!path.exists());
        fs::write(&path, "third").unwrap();
        set_aside(&path, 990).unwrap();
        assert_eq!(set_aside_since(&path), Some(1000), "the newest counts");
    }

    #[test]
    fn a_retransmitted_request_waits_for_the_new_binding_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let b = bind(&config(), dir.path(), false).unwrap();
        let t = now();
        let req = request(MessageType::Request, OLD_MAC, ip(130));
        let (r, first) = answer(&b, &req, t);
        assert!(r.durable && first == 1, "{r:?} {first}");
        // The same REQUEST again before the writer ran: a renewal, held for the same write.
        let (r, again) = answer(&b, &req, t + 1);
        assert!(!r.durable && r.changed, "{r:?}");
        assert_eq!(again, first);
        // A NAK or an offer waits for nothing.
        let (_, offer) = answer(
            &b,
            &request(MessageType::Discover, NEW_MAC, Ipv4Addr::UNSPECIFIED),
            t,
        );
        assert_eq!(offer, 0);
    }

    #[test]
    fn a_readable_file_starts_a_trusted_table() {
        let dir = tempfile::tempdir().unwrap();
        let b = bind(&config(), dir.path(), false).unwrap();
        let (r, _) = answer(
            &b,
            &request(MessageType::Discover, NEW_MAC, Ipv4Addr::UNSPECIFIED),
            now(),
        );
        assert!(r.probe.is_none() && r.message.is_some(), "{r:?}");
        assert!(kept_aside(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn changes_reach_the_file_through_the_writer_and_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let b = bind(&config(), dir.path(), false).unwrap();
        let store = Arc::clone(&b.store);
        let path = dir.path().join(LEASE_FILE);
        let (stop, stopped) = oneshot::channel();
        let writer = tokio::spawn(write_behind(Arc::clone(&store), stopped));

        let t = now();
        let (r, change) = answer(&b, &request(MessageType::Request, OLD_MAC, ip(120)), t);
        assert!(r.durable);
        store
            .written
            .subscribe()
            .wait_for(|&w| w >= change)
            .await
            .unwrap();
        let on_disk = leases::read(&path).unwrap();
        assert_eq!(on_disk.len(), 1);
        assert_eq!(on_disk[0].ip, IpAddr::from(ip(120)));

        // A renewal is not durable-before-ACK once the binding is on disk, and the stop
        // flushes it.
        let (r, reach) = answer(&b, &request(MessageType::Request, OLD_MAC, ip(120)), t + 10);
        assert!(r.changed && !r.durable, "{r:?}");
        assert!(reach <= *store.written.borrow(), "{reach}: sent at once");
        stop.send(()).unwrap();
        writer.await.unwrap();
        assert_eq!(leases::read(&path).unwrap()[0].expires, Some(t + 10 + 3600));
    }
}
