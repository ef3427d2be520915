//! Giving memory back away from the threads that answer queries.
//!
//! A swapped-out policy can hold the last reference to a compiled list of tens of MB;
//! freeing it where the swap happens would stall the runtime's only worker (and with it
//! the UDP listener) for as long as the free takes. [`later`] hands such values to one
//! thread of the lowest priority, which frees them when the core has time.
//!
//! The same thread asks glibc to return freed heap pages to the kernel
//! (`malloc_trim`) after each value it frees and every [`TRIM_EVERY`]: glibc keeps what a
//! burst of forwarded queries freed (tasks, upstream buffers) in its arenas, and that would
//! otherwise stay resident until the next burst reuses it.

use std::any::Any;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

/// How often idle heap pages are returned to the kernel.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

type Garbage = Box<dyn Any + Send>;

fn queue() -> Option<&'static Sender<Garbage>> {
    static QUEUE: OnceLock<Option<Sender<Garbage>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Garbage>();
            let spawned = std::thread::Builder::new()
                .name("dnsd-reclaim".into())
                .spawn(move || {
                    crate::fetch::lower_priority();
                    loop {
                        match rx.recv_timeout(TRIM_EVERY) {
                            Ok(garbage) => drop(garbage),
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                        trim();
                    }
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
        struct Probe(mpsc::Sender<Option<String>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .send(std::thread::current().name().map(str::to_owned));
            }
        }
        let (tx, rx) = mpsc::channel();
        later(Probe(tx));
        assert_eq!(rx.recv().unwrap().as_deref(), Some("dnsd-reclaim"));
    }
}
