//! Helper of `cargo xtask bench dns`: the ceiling any UDP DNS server reaches on the bench's
//! server core. It answers every datagram with the datagram itself, the QR and RA bits set
//! (a NOERROR answer with no records, which dnsperf counts as answered), read and sent in
//! batches of 32 (`recvmmsg`/`sendmmsg`, as dnsd's listener does) with the same socket
//! buffers as dnsd.
//!
//! It does no DNS work at all: what it costs per query is what the kernel costs to take a
//! datagram in and put one out on loopback, and that cost is paid by every server the
//! bench measures. Its queries per second and answers per CPU second are therefore the
//! most any server can reach on that core, which bounds the ratios the bench can show
//! (see dnsd/README.md, "Benchmarks", and its run 9).
//!
//! One socket of one address family: the receive headers are kept across calls, which
//! `recvmmsg` allows as long as every sender's address has the same length.

use std::io::{IoSlice, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

const BATCH: usize = 32;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: bench_ceiling ADDR:PORT");
        return ExitCode::from(2);
    };
    let socket = match UdpSocket::bind(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench_ceiling: cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    dnsd::udp::grow_buffers(&socket);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 4096]).collect();
    let mut lens = [0usize; BATCH];
    let mut froms: Vec<Option<SockaddrStorage>> = vec![None; BATCH];
    let mut receive = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    loop {
        let got = {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            // Blocks for the first datagram, then takes what is queued behind it.
            match recvmmsg(
                socket.as_raw_fd(),
                &mut receive,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    let mut n = 0;
                    for (r, (len, from)) in results.zip(lens.iter_mut().zip(froms.iter_mut())) {
                        (*len, *from) = (r.bytes, r.address);
                        n += 1;
                    }
                    n
                }
                Err(e) => {
                    eprintln!("bench_ceiling: receive failed: {e}");
                    continue;
                }
            }
        };
        for (buf, len) in bufs.iter_mut().zip(lens).take(got) {
            if len < 12 {
                continue;
            }
            for at in [2, 3] {
                if let Some(b) = buf.get_mut(at) {
                    *b |= 0x80;
                }
            }
        }
        let slices: Vec<[IoSlice<'_>; 1]> = bufs
            .iter()
            .zip(lens)
            .take(got)
            .map(|(b, len)| [IoSlice::new(b.get(..len).unwrap_or_default())])
            .collect();
        let addrs = froms.get(..got).unwrap_or_default();
        if let Err(e) = sendmmsg(
            socket.as_raw_fd(),
            &mut send,
            slices.iter(),
            addrs,
            [],
            MsgFlags::empty(),
        ) {
            eprintln!("bench_ceiling: send failed: {e}");
        }
    }
}
