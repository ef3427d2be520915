//! Login failures per client address and per user name: the first few are free, then every
//! further failure doubles the wait before the next attempt (1 s, 2 s, 4 s, ... 15 min).
//! A success clears the count. Entries idle for a day are forgotten.

use std::collections::HashMap;
use std::net::IpAddr;

/// Failures allowed before attempts have to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait, in seconds.
pub const MAX_BACKOFF: u64 = 15 * 60;
const FORGET_AFTER: u64 = 24 * 3600;
const PRUNE_ABOVE: usize = 10_000;

/// Who failed: a client address or a user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Addr(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Unix time before which attempts are refused.
    until: u64,
    last: u64,
}

#[derive(Debug, Default)]
pub struct Limiter {
    entries: HashMap<Key, Entry>,
}

impl Limiter {
    /// Ok, or the seconds to wait before the next attempt.
    pub fn check(&self, key: &Key, now: u64) -> Result<(), u64> {
        match self.entries.get(key) {
            Some(e) if e.until > now => Err(e.until - now),
            _ => Ok(()),
        }
    }

    pub fn fail(&mut self, key: Key, now: u64) {
        if self.entries.len() > PRUNE_ABOVE {
            self.entries
                .retain(|_, e| now.saturating_sub(e.last) < FORGET_AFTER);
        }
        let e = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            until: 0,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= FREE_FAILURES {
            let doublings = (e.failures - FREE_FAILURES).min(20);
            e.until = now + (1u64 << doublings).min(MAX_BACKOFF);
        }
    }

    pub fn reset(&mut self, key: &Key) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_after_the_free_failures_and_a_success_clears_them() {
        let mut l = Limiter::default();
        let k = Key::User("alice".into());
        let mut now = 1000;
        for _ in 0..FREE_FAILURES - 1 {
            l.fail(k.clone(), now);
            assert_eq!(l.check(&k, now), Ok(()));
        }
        let mut waits = Vec::new();
        for _ in 0..4 {
            l.fail(k.clone(), now);
            let wait = l.check(&k, now).unwrap_err();
            waits.push(wait);
            now += wait;
            assert_eq!(l.check(&k, now), Ok(()));
        }
        assert_eq!(waits, [1, 2, 4, 8]);
        for _ in 0..40 {
            l.fail(k.clone(), now);
        }
        assert_eq!(l.check(&k, now), Err(MAX_BACKOFF));
        l.reset(&k);
        assert_eq!(l.check(&k, now), Ok(()));
        assert_eq!(l.check(&Key::User("bob".into()), now), Ok(()), "per key");
    }
}
