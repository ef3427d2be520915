//! The UDP listener: packets are read and answered in batches (`recvmmsg`/`sendmmsg`), the
//! blocked and cached ones by the fast path ([`crate::fast`]) on the spot; every other
//! packet becomes a task of its own on the hickory path ([`Handler::answer_packet`]),
//! whose answer is sent when it is ready, so a forwarded query never holds up the batch.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::server::{FastState, Handler};

/// Packets taken per system call.
const BATCH: usize = 32;
/// The largest query read, as hickory's UDP listener reads (`MAX_RECEIVE_BUFFER_SIZE`).
const MAX_QUERY: usize = 4096;
/// Queries of one listener on the hickory path (forwards, mostly) at once. Each forward
/// holds an upstream socket until it is answered or times out: unbounded, a flood of
/// uncached names would take every file descriptor (and memory) of the process. Past the
/// bound a query is dropped, as an overloaded resolver does, and counted
/// (`dnsd_queries_shed_total`); the client retries.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Non-blocking reads tried after a batch before waiting for readiness (about 1 µs each).
const SPIN: u32 = 32;
/// The receive buffer asked for: about 5,000 queries, so that a burst, or the core being
/// taken by something else for a few tens of milliseconds, queues queries instead of
/// dropping them (the default of 208 KiB holds about 300: 4 ms at 40k QPS, each small
/// datagram taking about 700 bytes of buffer).
const RECEIVE_BUFFER: usize = 4 << 20;
/// The send buffer asked for: room for many batches of answers of up to 4 KB while a
/// network card's queue is full, before a send has to wait for writability.
const SEND_BUFFER: usize = 1 << 20;

/// The buffer sizes a socket got, as the kernel reports them (twice the bytes asked for:
/// it counts its own overhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    pub receive: usize,
    pub send: usize,
}

/// Enlarges the socket buffers: past `net.core.rmem_max`/`wmem_max` with `CAP_NET_ADMIN`
/// (as unbound's `so-rcvbuf` does), else up to them. dnsd runs without that capability, so
/// on the appliance the sysctls decide: the image raises both to 4 MiB
/// (`/etc/sysctl.d/60-appliance.conf`).
pub fn grow_buffers(socket: &impl std::os::fd::AsFd) -> Buffers {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err()
        && let Err(e) = setsockopt(socket, sockopt::RcvBuf, &RECEIVE_BUFFER)
    {
        tracing::debug!(error = %e, "UDP receive buffer left at its default");
    }
    if setsockopt(socket, sockopt::SndBufForce, &SEND_BUFFER).is_err()
        && let Err(e) = setsockopt(socket, sockopt::SndBuf, &SEND_BUFFER)
    {
        tracing::debug!(error = %e, "UDP send buffer left at its default");
    }
    let buffers = Buffers {
        receive: getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
        send: getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
    };
    if buffers.receive < 2 * RECEIVE_BUFFER {
        tracing::warn!(
            receive_buffer = buffers.receive,
            wanted = 2 * RECEIVE_BUFFER,
            "the UDP receive buffer is smaller than dnsd asked for, so a burst of queries \
             may be dropped (counted as RcvbufErrors in /proc/net/snmp): raise \
             net.core.rmem_max to {RECEIVE_BUFFER}, or run dnsd with CAP_NET_ADMIN"
        );
    } else {
        tracing::debug!(
            receive_buffer = buffers.receive,
            send_buffer = buffers.send,
            "UDP socket buffers"
        );
    }
    buffers
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4)));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
}

/// hickory's `sanitize_src_address`: no answers to port 0, unspecified or broadcast
/// senders (forged sources that would reflect answers elsewhere).
fn answerable(src: &SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            std::net::IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            std::net::IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// One batch read: lengths and senders, into `got`.
fn receive(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<(usize, Option<SockaddrStorage>)>,
) -> io::Result<()> {
    got.clear();
    // Made per call: the headers hold raw pointers, so they cannot live across an await
    // in a task that may move between threads. The slices live on the stack: at a few
    // queries a batch, every allocation of a batch shows in the cost of a query.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut bufs = bufs.iter_mut();
    let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
        [IoSliceMut::new(
            bufs.next().map_or(&mut [][..], Vec::as_mut_slice),
        )]
    });
    let results = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    got.extend(results.map(|r| (r.bytes, r.address)));
    Ok(())
}

/// Sends what it can of `bufs` (at most [`BATCH`]) to `addrs` in one call; returns how
/// many went out.
fn send_batch(
    socket: &UdpSocket,
    bufs: &[Vec<u8>],
    addrs: &[Option<SockaddrStorage>],
) -> io::Result<usize> {
    let n = bufs.len().min(addrs.len()).min(BATCH);
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
    let mut bufs = bufs.iter();
    let slices: [[IoSlice<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSlice::new(bufs.next().map_or(&[][..], Vec::as_slice))]);
    let sent = sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter().take(n),
        addrs.get(..n).unwrap_or_default(),
        [],
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

/// Answers ready to go out, each to its client.
#[derive(Debug, Default)]
struct Outbox {
    bufs: Vec<Vec<u8>>,
    /// Always `Some`: the type `sendmmsg` takes, kept beside the answers so that a send
    /// does not gather them anew.
    addrs: Vec<Option<SockaddrStorage>>,
}

/// Serves `socket` until the task is aborted.
pub async fn serve(socket: Arc<UdpSocket>, handler: Handler) {
    grow_buffers(&*socket);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_QUERY]).collect();
    let mut answers = Outbox {
        bufs: Vec::with_capacity(BATCH),
        addrs: Vec::with_capacity(BATCH),
    };
    let mut got = Vec::with_capacity(BATCH);
    let mut spare: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut state = FastState::default();
    let mut spin = 0;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        if spin > 0 {
            // Right after a batch, look again a few times before sleeping on readiness:
            // under a steady stream the next query is usually microseconds away, and going
            // idle costs more than that (on a virtual machine a halted vCPU takes tens of
            // microseconds to wake). Bounded, so an idle server stops polling at once.
            spin -= 1;
            match receive(&socket, &mut bufs, &mut got) {
                Ok(()) if !got.is_empty() => {}
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            }
        } else {
            if let Err(e) = socket.readable().await {
                tracing::error!(error = %e, "UDP socket failed; no longer listening on it");
                return;
            }
            match socket.try_io(Interest::READABLE, || receive(&socket, &mut bufs, &mut got)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    // An ICMP error of an earlier answer and the like: the socket lives on.
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            }
        }
        spin = SPIN;
        // The polling above skips the readiness future, which is where tokio makes a busy
        // task give way; this keeps the hickory-path tasks and timers running under load.
        tokio::task::consume_budget().await;
        let now = Instant::now();
        for ((len, from), buf) in got.drain(..).zip(&bufs) {
            let (Some(from), Some(packet)) = (from, buf.get(..len)) else {
                continue;
            };
            let Some(src) = socket_addr(&from).filter(answerable) else {
                continue;
            };
            let mut out = spare.pop().unwrap_or_default();
            if handler
                .0
                .answer_fast(packet, src, now, &mut out, &mut state)
            {
                answers.bufs.push(out);
                answers.addrs.push(Some(from));
                continue;
            }
            spare.push(out);
            let Some(slot) = take_slot(&slots, handler.0.stats()) else {
                continue;
            };
            let (socket, handler, packet) = (Arc::clone(&socket), handler.clone(), packet.to_vec());
            tokio::spawn(async move {
                let _slot = slot;
                if let Some(answer) = handler.answer_udp(&packet, src).await
                    && let Err(e) = socket.send_to(&answer, src).await
                {
                    tracing::debug!(error = %e, client = %src, "answer not sent");
                }
            });
        }
        flush(&socket, &answers).await;
        state.finish_batch(now);
        if let Some(recorder) = handler.0.recorder()
            && !state.log.is_empty()
        {
            recorder.record_batch(std::mem::replace(&mut state.log, Vec::with_capacity(BATCH)));
        }
        answers.addrs.clear();
        spare.extend(answers.bufs.drain(..).map(|mut b| {
            b.clear();
            b
        }));
    }
}

/// A place for one more query on the hickory path, or `None` (counted as shed) when
/// [`MAX_IN_FLIGHT`] are already there.
fn take_slot(
    slots: &Arc<tokio::sync::Semaphore>,
    stats: &crate::server::Stats,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match Arc::clone(slots).try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) => {
            stats
                .shed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }
}

/// Sends the batch; what the socket does not take at once is sent one by one as it drains.
async fn flush(socket: &UdpSocket, answers: &Outbox) {
    let mut done = 0;
    while done < answers.bufs.len() {
        let bufs = answers.bufs.get(done..).unwrap_or_default();
        let addrs = answers.addrs.get(done..).unwrap_or_default();
        match socket.try_io(Interest::WRITABLE, || send_batch(socket, bufs, addrs)) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    break;
                }
            }
            Err(e) => {
                // One bad address fails the call: send that one alone and go on.
                if let (Some(b), Some(Some(a))) = (answers.bufs.get(done), answers.addrs.get(done))
                    && let Some(to) = socket_addr(a)
                    && let Err(e2) = socket.send_to(b, to).await
                {
                    tracing::debug!(error = %e, retry = %e2, client = %to, "answer not sent");
                }
                done += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn queries_past_the_bound_are_shed_and_counted() {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let stats = crate::server::Stats::default();
        let mut held: Vec<_> = (0..MAX_IN_FLIGHT)
            .map(|_| take_slot(&slots, &stats).unwrap())
            .collect();
        assert!(take_slot(&slots, &stats).is_none());
        assert!(take_slot(&slots, &stats).is_none());
        assert_eq!(stats.shed.load(std::sync::atomic::Ordering::Relaxed), 2);
        // A forward that ends gives its place back.
        held.pop();
        assert!(take_slot(&slots, &stats).is_some());
        assert_eq!(stats.shed.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    /// As root (CI) the buffers get the full size past the sysctls; without
    /// `CAP_NET_ADMIN` they get what the sysctls allow. Either way, at least that.
    #[test]
    fn socket_buffers_grow_as_far_as_allowed() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let got = grow_buffers(&socket);
        let (rmem, wmem) = (sysctl("rmem_max"), sysctl("wmem_max"));
        assert!(
            got.receive >= 2 * RECEIVE_BUFFER.min(rmem),
            "{got:?}, rmem_max {rmem}"
        );
        assert!(
            got.send >= 2 * SEND_BUFFER.min(wmem),
            "{got:?}, wmem_max {wmem}"
        );
        if rustix::process::geteuid().is_root() {
            assert_eq!(got.receive, 2 * RECEIVE_BUFFER);
            assert_eq!(got.send, 2 * SEND_BUFFER);
        }
    }
}
