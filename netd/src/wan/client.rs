//! One link's client: smoltcp's DHCPv4 socket on an `AF_PACKET` socket bound to the link.
//! The kernel keeps the IP stack; smoltcp only sees DHCP replies and ARP replies (see
//! [`Filtered`]), and its interface holds the lease only so that unicast renewals can be
//! addressed and routed.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RawSocket, RxToken};
use smoltcp::socket::dhcpv4;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, HardwareAddress, IpCidr,
    Ipv4Cidr,
};

use super::decide::{self, Event, Lease, Phase, Step};
use super::files::{self, LinkDns};
use crate::links::{Action, Netlink, NetlinkError, Rtnetlink};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot open a raw socket on {link}: {source}; the link must exist and netd needs CAP_NET_RAW"
    )]
    Socket {
        link: String,
        source: std::io::Error,
    },
    #[error("cannot read the MAC address of {link} from {path}: {source}")]
    Mac {
        link: String,
        path: String,
        source: std::io::Error,
    },
    #[error("waiting for packets on {link}: {source}")]
    Wait {
        link: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Where a client keeps its files, and whom it tells about its address.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Holds `wan-<link>.json`.
    pub state_dir: PathBuf,
    /// The DNS file for dnsd.
    pub dns_file: PathBuf,
    /// Told every address the client puts on or takes off its link, once the kernel has
    /// it: `netd serve` fills the firewall's zone address sets from it (a port forward
    /// matches the WAN address, which only the lease knows).
    pub changes: Option<Sender<AddressChange>>,
}

/// The client of `link` now holds `address` on it (`None`: no address any more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressChange {
    pub link: String,
    pub address: Option<Ipv4Addr>,
}

/// Passes on only what the DHCP socket needs: IPv4 UDP to port 68 and ARP replies (for
/// the server's MAC when renewing by unicast). Anything else is the kernel's: smoltcp would
/// answer TCP with RST and UDP with port unreachable for the address it shares with the
/// kernel.
struct Filtered(RawSocket);

#[derive(Debug)]
pub struct Frame(Vec<u8>);

impl RxToken for Frame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub(crate) fn wanted(frame: &[u8]) -> bool {
    let ethertype = frame.get(12..14);
    match ethertype {
        Some([0x08, 0x06]) => frame.get(20..22) == Some(&[0, 2]),
        Some([0x08, 0x00]) => {
            let Some(&vihl) = frame.get(14) else {
                return false;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            frame.get(23) == Some(&17) && frame.get(14 + ihl + 2..14 + ihl + 4) == Some(&[0, 68])
        }
        _ => false,
    }
}

impl Device for Filtered {
    type RxToken<'a> = Frame;
    type TxToken<'a> = <RawSocket as Device>::TxToken<'a>;

    fn receive(&mut self, timestamp: Instant) -> Option<(Frame, Self::TxToken<'_>)> {
        loop {
            let (rx, _) = self.0.receive(timestamp)?;
            let frame = rx.consume(|b| b.to_vec());
            if wanted(&frame) {
                return Some((Frame(frame), self.0.transmit(timestamp)?));
            }
        }
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.0.transmit(timestamp)
    }

    /// Received checksums are not checked: on links with checksum offload (veth, most
    /// virtual NICs) a packet socket sees frames before the checksum is filled in, and
    /// smoltcp would drop every reply. Outgoing checksums are computed.
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = self.0.capabilities();
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_mac(link: &str) -> Result<EthernetAddress, ClientError> {
    let path = format!("/sys/class/net/{link}/address");
    let err = |source| ClientError::Mac {
        link: link.to_string(),
        path: path.clone(),
        source,
    };
    let text = std::fs::read_to_string(&path).map_err(err)?;
    let mut bytes = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut bytes {
        *b = parts
            .next()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| {
                err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not a MAC address: {}", text.trim()),
                ))
            })?;
    }
    Ok(EthernetAddress(bytes))
}

/// The lease of an ACK, with the timers of the packet (RFC 2131 defaults when absent).
pub(crate) fn lease_of(config: &dhcpv4::Config<'_>, now: u64) -> Lease {
    let repr = config.packet.as_ref().and_then(|p| DhcpRepr::parse(p).ok());
    let lease_secs = repr
        .as_ref()
        .and_then(|r| r.lease_duration)
        .map_or(u64::from(u32::MAX), u64::from);
    let (t1, t2) = Lease::default_timers(lease_secs);
    let address = Ipv4Net::new(config.address.address(), config.address.prefix_len())
        .unwrap_or_else(|_| Ipv4Net::from(config.address.address()));
    Lease {
        address,
        router: config.router,
        dns: config.dns_servers.iter().copied().collect(),
        // The ACK's own identifier: after a rebind another server may have answered, and
        // smoltcp's config keeps the server of the first ACK (the release must go to the
        // one that holds the lease now).
        server: repr
            .as_ref()
            .and_then(|r| r.server_identifier)
            .unwrap_or(config.server.identifier),
        acquired: now,
        lease_secs,
        t1_secs: repr
            .as_ref()
            .and_then(|r| r.renew_duration)
            .map_or(t1, u64::from),
        t2_secs: repr
            .as_ref()
            .and_then(|r| r.rebind_duration)
            .map_or(t2, u64::from),
    }
}

/// Sends a DHCPRELEASE from the leased address through the kernel's UDP stack (the address
/// is still configured when this runs).
fn release(link: &str, mac: EthernetAddress, lease: &Lease) -> std::io::Result<()> {
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Release,
        transaction_id: (lease.acquired as u32) ^ 0x5a5a_5a5a,
        secs: 0,
        client_hardware_address: mac,
        client_ip: lease.address.addr(),
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: Some(mac),
        server_identifier: Some(lease.server),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut buf = vec![0u8; repr.buffer_len().max(300)];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(link.as_bytes()))?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(lease.address.addr(), 68)).into())?;
    let socket: UdpSocket = socket.into();
    socket.send_to(&buf, SocketAddrV4::new(lease.server, 67))?;
    Ok(())
}

/// A UDP socket on port 68 of the link, read only to be emptied: smoltcp gets the replies
/// from the packet socket, and with this socket bound the kernel no longer answers unicast
/// ACKs with ICMP port unreachable.
fn port_68(link: &str) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(link.as_bytes()))?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A client for one link until `stop` is set.
#[derive(Debug)]
pub struct Client<N: Netlink> {
    link: String,
    paths: Paths,
    netlink: N,
    /// What this client put into the kernel.
    applied: Option<Lease>,
    mac: EthernetAddress,
}

impl Client<Rtnetlink> {
    pub fn new(link: &str, paths: Paths) -> Result<Self, ClientError> {
        Ok(Self {
            link: link.to_string(),
            paths,
            netlink: Rtnetlink::new()?,
            applied: None,
            mac: read_mac(link)?,
        })
    }
}

/// Errors the kernel gives when it already is where a step leads (a restart after a crash
/// that left the address, a route removed by hand).
fn already_done(action: &Action, e: &NetlinkError) -> bool {
    const EEXIST: i32 = 17;
    const ESRCH: i32 = 3;
    const EADDRNOTAVAIL: i32 = 99;
    match action {
        Action::AddAddress { .. } | Action::AddRoute(_) => e.errno == Some(EEXIST),
        Action::RemoveAddress { .. } => e.errno == Some(EADDRNOTAVAIL),
        Action::RemoveRoute(_) => e.errno == Some(ESRCH),
        _ => false,
    }
}

impl<N: Netlink> Client<N> {
    fn run_steps(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Kernel(action) => match self.netlink.execute(&action) {
                    Ok(()) => tracing::info!(link = %self.link, "{action:?}"),
                    Err(e) if already_done(&action, &e) => {}
                    Err(e) => tracing::error!(link = %self.link, "{e}"),
                },
                Step::WriteDns(servers) => {
                    let entry = (!servers.is_empty()).then(|| LinkDns {
                        servers,
                        expires: self.applied.as_ref().map_or(0, Lease::expires),
                    });
                    if let Err(e) = files::update_dns(&self.paths.dns_file, &self.link, entry) {
                        tracing::error!("{e}");
                    }
                }
                Step::Persist(lease) => {
                    if let Err(e) = files::store_lease(&self.paths.state_dir, &self.link, &lease) {
                        tracing::error!("{e}");
                    }
                }
                Step::Release(lease) => match release(&self.link, self.mac, &lease) {
                    Ok(()) => {
                        tracing::info!(link = %self.link, address = %lease.address, "released")
                    }
                    Err(e) => {
                        tracing::warn!(link = %self.link, error = %e, "cannot send DHCPRELEASE")
                    }
                },
            }
        }
    }

    /// Applies `event` and records the result as applied.
    fn handle(&mut self, event: Event) {
        let steps = decide::decide(&self.link, self.applied.as_ref(), &event);
        let before = self.address();
        self.applied = match &event {
            Event::Acked(l) => Some(l.clone()),
            Event::Lost | Event::Stop => None,
        };
        self.run_steps(steps);
        if self.address() != before {
            self.tell();
        }
    }

    fn address(&self) -> Option<Ipv4Addr> {
        self.applied.as_ref().map(|l| l.address.addr())
    }

    /// Tells [`Paths::changes`] the address held now. A receiver gone (netd stopping)
    /// is no reason to stop the client.
    fn tell(&self) {
        if let Some(tx) = &self.paths.changes {
            let _ = tx.send(AddressChange {
                link: self.link.clone(),
                address: self.address(),
            });
        }
    }

    /// Takes over an address a previous run left on the link, so that a changed lease
    /// replaces it instead of adding a second one.
    fn adopt(&mut self, stored: Option<&Lease>) -> Result<(), NetlinkError> {
        let Some(stored) = stored else { return Ok(()) };
        let observed = self.netlink.observe()?;
        let net = IpNet::V4(stored.address);
        if observed
            .addresses
            .iter()
            .any(|a| a.link == self.link && a.net == net)
        {
            self.applied = Some(stored.clone());
        }
        Ok(())
    }

    pub fn run(self, stop: &AtomicBool) -> Result<(), ClientError> {
        self.run_started(stop, None)
    }

    /// [`Client::run`], telling `started` whether the client could start (its raw socket
    /// open) before it begins its loop. A start-up error goes to `started` only.
    fn run_started(
        mut self,
        stop: &AtomicBool,
        started: Option<SyncSender<Result<(), ClientError>>>,
    ) -> Result<(), ClientError> {
        let opened =
            RawSocket::new(&self.link, Medium::Ethernet).map_err(|source| ClientError::Socket {
                link: self.link.clone(),
                source,
            });
        let raw = match (opened, started) {
            (Ok(raw), Some(tx)) => {
                let _ = tx.send(Ok(()));
                raw
            }
            (Ok(raw), None) => raw,
            (Err(e), Some(tx)) => {
                let _ = tx.send(Err(e));
                return Ok(());
            }
            (Err(e), None) => return Err(e),
        };
        let stored = files::load_lease(&self.paths.state_dir, &self.link);
        self.adopt(stored.as_ref())?;
        if self.applied.is_some() {
            self.tell();
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&raw);
        let port68 = match port_68(&self.link) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(link = %self.link, error = %e, "cannot hold UDP port 68; the kernel will answer unicast ACKs with port unreachable");
                None
            }
        };
        let mut device = Filtered(raw);
        let mut config = Config::new(HardwareAddress::Ethernet(self.mac));
        config.random_seed = u64::from(std::process::id()) ^ unix_now();
        let mut iface = Interface::new(config, &mut device, Instant::now());

        // Asking for the stored address in DISCOVER (option 50) gets it back from servers
        // that still have it free; smoltcp has no INIT-REBOOT. Cleared once bound.
        let requested = decide::requested_at_start(stored.as_ref()).map(|a| a.octets());
        let requested_opts: Vec<DhcpOption<'_>> = requested
            .as_ref()
            .map(|o| DhcpOption { kind: 50, data: o })
            .into_iter()
            .collect();
        let mut packet_buffer = vec![0u8; 1500];
        let mut socket = dhcpv4::Socket::new();
        socket.set_outgoing_options(&requested_opts);
        socket.set_receive_packet_buffer(&mut packet_buffer);
        let mut sockets = SocketSet::new(vec![]);
        let handle = sockets.add(socket);
        if let Some(a) = &requested {
            tracing::info!(link = %self.link, requested = %Ipv4Addr::from(*a), "asking for the stored address");
        }

        let mut last_phase = None;
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            iface.poll(now, &mut device, &mut sockets);
            let socket = sockets.get_mut::<dhcpv4::Socket<'_>>(handle);
            let event = match socket.poll() {
                Some(dhcpv4::Event::Configured(c)) => Some(Event::Acked(lease_of(&c, unix_now()))),
                Some(dhcpv4::Event::Deconfigured) => Some(Event::Lost),
                None => None,
            };
            // The socket drops the lease at expiry itself; this guard keeps the kernel
            // from holding an expired address should its timers and ours ever disagree.
            let event = event.or_else(|| {
                let l = self.applied.as_ref()?;
                (decide::phase(l, unix_now()) == Phase::Expired).then_some(Event::Lost)
            });
            let phase = self.applied.as_ref().map(|l| decide::phase(l, unix_now()));
            if phase != last_phase {
                tracing::info!(link = %self.link, phase = ?phase, "lease phase");
                last_phase = phase;
            }
            if let Some(event) = event {
                match &event {
                    Event::Acked(l) => {
                        tracing::info!(link = %self.link, address = %l.address, router = ?l.router, dns = ?l.dns, lease_secs = l.lease_secs, "bound");
                        socket.set_outgoing_options(&[]);
                        iface.update_ip_addrs(|addrs| {
                            addrs.clear();
                            let cidr = Ipv4Cidr::new(l.address.addr(), l.address.prefix_len());
                            let _ = addrs.push(IpCidr::Ipv4(cidr));
                        });
                        match l.router {
                            Some(r) => {
                                let _ = iface.routes_mut().add_default_ipv4_route(r);
                            }
                            None => {
                                iface.routes_mut().remove_default_ipv4_route();
                            }
                        }
                    }
                    Event::Lost | Event::Stop => {
                        // The socket also reports "deconfigured" once at start.
                        if self.applied.is_some() {
                            tracing::warn!(link = %self.link, "lease lost (expired or NAK); discovering again");
                        }
                        if self.applied.as_ref().map(|l| decide::phase(l, unix_now()))
                            == Some(Phase::Expired)
                        {
                            socket.reset();
                        }
                        iface.update_ip_addrs(|addrs| addrs.clear());
                        iface.routes_mut().remove_default_ipv4_route();
                    }
                }
                self.handle(event);
                continue;
            }
            let delay = iface
                .poll_delay(Instant::now(), &sockets)
                .unwrap_or(Duration::from_millis(500))
                .min(Duration::from_millis(500));
            if let Some(s) = &port68 {
                let mut buf = [0u8; 1500];
                while s.recv_from(&mut buf).is_ok() {}
            }
            smoltcp::phy::wait(fd, Some(delay)).map_err(|source| ClientError::Wait {
                link: self.link.clone(),
                source,
            })?;
        }
        tracing::info!(link = %self.link, "stopping: releasing the lease");
        self.handle(Event::Stop);
        Ok(())
    }
}

/// The clients of [`start_all`], running.
#[derive(Debug)]
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), ClientError>>>,
}

impl Running {
    /// Stops the clients (each releases its lease) and returns their errors.
    pub fn stop(self) -> Vec<ClientError> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .filter_map(|t| match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => {
                    tracing::error!("a DHCP client thread panicked");
                    None
                }
            })
            .collect()
    }
}

/// Starts a client per link on its own thread and returns once every one has opened its
/// raw socket; when one cannot (the link missing, no CAP_NET_RAW), the others are stopped
/// and its error returned, so that `netd serve` fails the generation's apply instead of
/// finding out in a background loop.
pub fn start_all(links: &[String], paths: &Paths) -> Result<Running, ClientError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut first_error = None;
    for link in links {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (name, paths, stop) = (link.clone(), paths.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || match Client::new(&name, paths) {
            Ok(c) => c.run_started(&stop, Some(tx)),
            Err(e) => {
                let _ = tx.send(Err(e));
                Ok(())
            }
        });
        threads.push(thread);
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error = Some(e);
                break;
            }
            Err(_) => {
                first_error = Some(ClientError::Wait {
                    link: link.clone(),
                    source: std::io::Error::other("the client thread ended before it started"),
                });
                break;
            }
        }
    }
    let running = Running { stop, threads };
    match first_error {
        None => Ok(running),
        Some(e) => {
            running.stop().iter().for_each(|e| tracing::error!("{e}"));
            Err(e)
        }
    }
}

/// Runs a client per link on its own thread until `stop` is set; returns the first error.
pub fn run_all(links: &[String], paths: &Paths, stop: Arc<AtomicBool>) -> Vec<ClientError> {
    let threads: Vec<_> = links
        .iter()
        .map(|link| {
            let link = link.clone();
            let paths = paths.clone();
            let stop = stop.clone();
            std::thread::spawn(move || Client::new(&link, paths).and_then(|c| c.run(&stop)))
        })
        .collect();
    threads
        .into_iter()
        .filter_map(|t| match t.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => {
                tracing::error!("a DHCP client thread panicked");
                None
            }
        })
        .collect()
}
