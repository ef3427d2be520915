//! Giving memory back away from the thread that answers queries.
//!
//! A swapped-out policy can hold the last reference to a compiled list of tens of MB;
//! freeing it where the swap happens would stall the runtime's only worker (and with it
//! the UDP listener) for as long as the free takes. [`later`] hands such values to one
//! background thread ([`crate::background`]), which frees them when the core has time.
//!
//! Big buffers (128 KiB and more, as every list's arena and table is) are mapped on their
//! own (`M_MMAP_THRESHOLD` is fixed at glibc's starting value; left alone, glibc raises it
//! to the size of the last big buffer freed, up to 32 MiB, and the next list then lands in
//! the heap), so freeing one is an `munmap`, which takes no heap lock and is preempted page
//! table by page table when a query arrives.
//!
//! What a burst of forwarded queries freed (tasks, upstream buffers) stays in glibc's
//! arenas until `malloc_trim` returns it. That call holds each arena's lock while it
//! returns that arena's free pages, the listener's arena included: traced under load
//! (`perf record -e sched:sched_switch -g`), the listener waited 17 ms in
//! `__lll_lock_wait_private` while this thread, then at nice 19, was inside
//! `malloc_trim`'s `madvise` and shared the core with the list compile. So the heap is
//! trimmed only while no reload is in flight and the server is quiet (fewer than
//! [`QUIET_QUERIES`] queries in the last second), and at most every [`TRIM_EVERY`]: then
//! the wait costs a query or two a few milliseconds and loses none.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The least time between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);
/// How often the thread looks at the query counter.
const TICK: Duration = Duration::from_secs(1);
/// Fewer queries than this in a [`TICK`] is quiet.
pub const QUIET_QUERIES: u64 = 100;
/// Buffers from this size up are mapped on their own (glibc's starting value, kept).
const MMAP_THRESHOLD: std::ffi::c_int = 128 * 1024;

type Garbage = Box<dyn Any + Send>;
type Probe = Box<dyn Fn() -> Option<u64> + Send>;

/// Reloads in flight (list checks and compiles, store reads).
static RELOADS: AtomicUsize = AtomicUsize::new(0);
/// Reads the number of queries answered so far; `None` once the server is gone.
static QUERIES: Mutex<Option<Probe>> = Mutex::new(None);

fn queue() -> Option<&'static Sender<Garbage>> {
    static QUEUE: OnceLock<Option<Sender<Garbage>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            fix_mmap_threshold();
            let (tx, rx) = mpsc::channel::<Garbage>();
            let spawned = std::thread::Builder::new()
                .name("dnsd-reclaim".into())
                .spawn(move || {
                    crate::background::lower_priority();
                    run(&rx);
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!(error = %e, "no reclaim thread; old lists are freed where they are swapped out");
                    None
                }
            }
        })
        .as_ref()
}

fn run(rx: &mpsc::Receiver<Garbage>) {
    let mut trimmer = Trimmer::new(Instant::now());
    let mut next_tick = Instant::now() + TICK;
    loop {
        match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(garbage) => {
                let started = Instant::now();
                drop(garbage);
                tracing::debug!(took_us = started.elapsed().as_micros(), "freed");
                trimmer.freed();
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        next_tick = Instant::now() + TICK;
        let queries = QUERIES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|probe| probe());
        let reloading = RELOADS.load(Ordering::Relaxed) > 0;
        if trimmer.tick(queries, reloading, Instant::now()) {
            let started = Instant::now();
            trim();
            tracing::debug!(took_us = started.elapsed().as_micros(), "heap trimmed");
        }
    }
}

/// When to trim: the decision of the reclaim thread, apart from the clock and the server.
#[derive(Debug)]
struct Trimmer {
    last_queries: Option<u64>,
    last_trim: Instant,
    /// Something was freed or queries were answered since the last trim.
    dirty: bool,
}

impl Trimmer {
    fn new(now: Instant) -> Self {
        Self {
            last_queries: None,
            last_trim: now,
            dirty: false,
        }
    }

    fn freed(&mut self) {
        self.dirty = true;
    }

    /// Takes the query counter (`None`: no server to watch) once a [`TICK`]; whether to trim
    /// now.
    fn tick(&mut self, queries: Option<u64>, reloading: bool, now: Instant) -> bool {
        // `None` on the first look: nothing to compare with, so not known to be quiet.
        let answered = match (self.last_queries, queries) {
            (Some(before), Some(now)) => Some(now.saturating_sub(before)),
            (None, Some(_)) => None,
            (_, None) => Some(0),
        };
        self.last_queries = queries;
        if answered.is_some_and(|n| n > 0) {
            self.dirty = true;
        }
        if reloading
            || answered.is_none_or(|n| n >= QUIET_QUERIES)
            || !self.dirty
            || now.saturating_duration_since(self.last_trim) < TRIM_EVERY
        {
            return false;
        }
        self.dirty = false;
        self.last_trim = now;
        true
    }
}

/// Starts the reclaim thread now, so that idle heap is trimmed even before the first
/// reload.
pub fn start() {
    let _ = queue();
}

/// Drops `value` on the reclaim thread (here, when there is none).
pub fn later<T: Send + 'static>(value: T) {
    match queue() {
        Some(tx) => {
            // A send only fails when the thread is gone; then the value is dropped here.
            let _ = tx.send(Box::new(value));
        }
        None => drop(value),
    }
}

/// Lets the reclaim thread see how many queries have been answered (the server's counter),
/// so that it trims only while the server is quiet. The latest call wins.
pub fn watch_queries(probe: impl Fn() -> Option<u64> + Send + 'static) {
    *QUERIES.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(probe));
}

/// A reload in flight, for as long as the value lives: no trim meanwhile.
#[derive(Debug)]
#[must_use = "the reload ends when this is dropped"]
pub struct Reloading(());

/// Marks a reload in flight until the returned value is dropped.
pub fn reloading() -> Reloading {
    RELOADS.fetch_add(1, Ordering::Relaxed);
    Reloading(())
}

impl Drop for Reloading {
    fn drop(&mut self) {
        RELOADS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn fix_mmap_threshold() {
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: mallopt takes two integers and only changes glibc's allocation parameters.
    if unsafe { mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) } != 1 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused; big buffers may stay in the heap");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

/// Returns free heap pages of every glibc arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and only takes glibc's own arena locks; it is
    // safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_handed_over_are_dropped_on_the_reclaim_thread() {
        struct Probe(mpsc::Sender<(Option<String>, bool)>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send((
                    std::thread::current().name().map(str::to_owned),
                    crate::background::is_idle_policy(),
                ));
            }
        }
        let (tx, rx) = mpsc::channel();
        later(Probe(tx));
        assert_eq!(rx.recv().unwrap(), (Some("dnsd-reclaim".into()), true));
    }

    #[test]
    fn the_heap_is_trimmed_only_when_quiet_and_no_reload_is_in_flight() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut t = Trimmer::new(start);
        assert!(
            !t.tick(Some(0), false, at(6)),
            "the first look knows no rate"
        );
        assert!(
            !t.tick(Some(0), false, at(7)),
            "nothing freed and no query answered: nothing to trim"
        );
        t.freed();
        assert!(
            !t.tick(Some(5000), false, at(8)),
            "busy: 4990 queries a second"
        );
        assert!(
            !t.tick(Some(5010), true, at(9)),
            "quiet, but a reload is in flight"
        );
        assert!(
            t.tick(Some(5020), false, at(10)),
            "quiet, no reload, garbage"
        );
        assert!(!t.tick(Some(5020), false, at(11)), "nothing new since");
        assert!(
            !t.tick(Some(5030), false, at(12)),
            "queries answered, but trimmed 2 s ago"
        );
        assert!(
            t.tick(Some(5030), false, at(15)),
            "5 s later, after those queries"
        );
    }

    #[test]
    fn without_a_server_to_watch_freed_memory_is_trimmed() {
        let start = Instant::now();
        let mut t = Trimmer::new(start);
        t.freed();
        assert!(t.tick(None, false, start + TRIM_EVERY));
        let _reload = reloading();
        assert!(RELOADS.load(Ordering::Relaxed) > 0);
    }
}
