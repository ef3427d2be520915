//! The sockets and the lease file around the pools.
//!
//! One UDP socket per served link, bound to 0.0.0.0:67 with `SO_BINDTODEVICE` (so each link's
//! broadcasts reach its own pool, and replies to 255.255.255.255 leave through that link)
//! and `SO_BROADCAST`. Clients without an address get broadcast replies, as dnsmasq gives
//! many clients; a renewing client gets a unicast to its address.
//!
//! All links share one lease file (`<state dir>/leases.json`, the format of
//! [`appliance::leases`] that dnsd reads), replaced atomically after every change and read
//! at start, so leases survive a restart.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance::Config;
use appliance::leases::{self, LeaseError};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::{Destination, Pool, handle, packet, scopes};

/// The lease file's name inside the state directory.
pub const LEASE_FILE: &str = "leases.json";

/// How long to wait before trying a link's socket again (the link may appear later).
const RETRY: Duration = Duration::from_secs(2);

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

struct Shared {
    pools: Vec<Pool>,
    path: PathBuf,
}

impl Shared {
    fn persist(&self) {
        let all: Vec<_> = self.pools.iter().flat_map(Pool::leases).collect();
        if let Err(e) = leases::write(&self.path, &all) {
            tracing::error!(error = %e, "cannot write the lease file; the leases stay in memory");
        }
    }
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
    shared: Arc<Mutex<Shared>>,
    /// Each served link with its socket (`None`: to be retried while serving).
    links: Vec<(String, Option<std::net::UdpSocket>)>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Loads the stored leases and opens the socket of every link of `cfg` with a
/// `[dhcp.<link>]` section. With `strict` a socket that cannot be opened (the port taken,
/// the link missing) is an error and nothing is written; without, that link is retried
/// every few seconds while serving (`netd dhcp-server` may start before its links).
/// `netd serve` is strict: its links exist by then, and a server that cannot serve must
/// fail the generation's apply rather than retry in the background.
pub fn bind(cfg: &Config, state_dir: &Path, strict: bool) -> Result<Bound, DhcpError> {
    let path = state_dir.join(LEASE_FILE);
    let stored = match leases::read(&path) {
        Ok(l) => l,
        Err(e @ LeaseError::Parse { .. }) => {
            tracing::warn!(error = %e, "starting without the stored leases");
            Vec::new()
        }
        Err(e) => return Err(DhcpError::Leases(e)),
    };
    let t = now();
    let pools: Vec<Pool> = scopes(cfg)
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
    let shared = Arc::new(Mutex::new(Shared { pools, path }));
    shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .persist();
    Ok(Bound { shared, links })
}

impl Bound {
    /// Serves until `shutdown` resolves. Needs a tokio runtime with I/O enabled.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (link, first)) in self.links.into_iter().enumerate() {
            tasks.spawn(serve(i, link, first, Arc::clone(&self.shared)));
        }
        shutdown.await;
        tasks.abort_all();
        // The aborted tasks drop their sockets here, so a server started next can bind.
        while tasks.join_next().await.is_some() {}
        tracing::info!("DHCP server stopped");
    }
}

async fn serve(
    index: usize,
    link: String,
    mut next: Option<std::net::UdpSocket>,
    shared: Arc<Mutex<Shared>>,
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
                if let Err(e) = serve_socket(index, &link, &sock, &shared).await {
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
    sock: &UdpSocket,
    shared: &Mutex<Shared>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        let Some(req) = buf.get(..n).and_then(packet::decode) else {
            continue;
        };
        let reply = {
            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(pool) = s.pools.get_mut(index) else {
                return Ok(());
            };
            let r = handle(pool, &req, now());
            if r.changed {
                s.persist();
            }
            r
        };
        let Some((msg, to)) = reply.message else {
            continue;
        };
        let bytes = match packet::encode(&msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%link, error = %e, "cannot encode a DHCP reply");
                continue;
            }
        };
        let dest = match to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Unicast(a) => a,
        };
        if let Err(e) = sock.send_to(&bytes, SocketAddrV4::new(dest, 68)).await {
            tracing::warn!(%link, %from, %dest, error = %e, "cannot send a DHCP reply");
        }
    }
}
