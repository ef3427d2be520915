//! Threads that must never take the core from the listener: the list compile, the reclaim
//! thread and the query-log writer.
//!
//! They run under `SCHED_IDLE`. A nice-19 thread is not enough: with EEVDF (Linux 6.6 and
//! later) a running thread keeps the core for the rest of its slice when the listener wakes
//! up, whatever its nice value, so a compile of a second held each wake-up of the listener
//! for up to a slice. An idle-policy thread is preempted as soon as a normal thread wakes,
//! and runs only when the core would otherwise be idle. Any thread may lower itself to
//! `SCHED_IDLE` without privileges.
//!
//! Such a thread must not hold a lock the listener takes for long: the listener would wait
//! for a thread that gets the core only while the listener waits. glibc's heap locks are the
//! ones to mind; see [`crate::reclaim`].

use std::io;

/// Linux's `SCHED_IDLE` policy (`<linux/sched.h>`).
#[cfg(target_os = "linux")]
const SCHED_IDLE: std::ffi::c_int = 5;

#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedParam {
    sched_priority: std::ffi::c_int,
}

/// Puts the calling thread (only it: Linux applies the call to one thread id) under
/// `SCHED_IDLE`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn idle_policy() -> io::Result<()> {
    unsafe extern "C" {
        fn sched_setscheduler(
            pid: std::ffi::c_int,
            policy: std::ffi::c_int,
            param: *const SchedParam,
        ) -> std::ffi::c_int;
    }
    let param = SchedParam { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is this thread.
    if unsafe { sched_setscheduler(0, SCHED_IDLE, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn idle_policy() -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Makes the calling thread a background one: `SCHED_IDLE`, else nice 19. Failing leaves a
/// normal priority, which still works, with more latency while the thread runs.
pub fn lower_priority() {
    let Err(e) = idle_policy() else {
        return;
    };
    let tid = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(tid), 19) {
        Ok(()) => {
            tracing::debug!(error = %e, "no SCHED_IDLE; this background thread runs at nice 19");
        }
        Err(e2) => {
            tracing::warn!(idle = %e, nice = %e2, "cannot lower the priority of a background thread");
        }
    }
}

/// Whether the calling thread runs under `SCHED_IDLE` (for tests).
#[cfg(target_os = "linux")]
pub fn is_idle_policy() -> bool {
    std::fs::read_to_string("/proc/thread-self/sched")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("policy"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim() == SCHED_IDLE.to_string())
        })
        .unwrap_or(false)
}

/// Runs `job` on a background thread of its own and waits for it without blocking the
/// runtime. A thread of its own, because the policy cannot be raised back without
/// privileges and would stick to a pool thread.
pub async fn run<T: Send + 'static>(
    name: &str,
    job: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(job());
        })?;
    rx.await
        .map_err(|_| io::Error::other(format!("the {name} thread ended without a result")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_under_the_idle_policy() {
        assert!(!is_idle_policy(), "the test's own thread is a normal one");
        assert!(run("dnsd-test", is_idle_policy).await.unwrap());
    }
}
