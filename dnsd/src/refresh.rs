//! Keeping lists fresh: each list is checked when its `update_interval` has passed since
//! the last successful check; a failed check is retried sooner, but never hammers the
//! server. Each change hands a new set of lists to the caller, who rebuilds and swaps the
//! policy; lists are recompiled one at a time, so a reload holds at most one list twice
//! (the copy in use and the next), never every list twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance::model::{BlockList, Dns};

use crate::fetch::{ListStore, Outcome};
use crate::policy::Lists;

/// How soon a failed list is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(15 * 60);
/// The longest the refresher sleeps, so a changed clock or config is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// When a list is due, from its metadata and the last failure.
fn due_at(interval: Duration, checked_at: Option<u64>, failed_at: Option<u64>) -> u64 {
    let by_success = checked_at.map_or(0, |t| t.saturating_add(interval.as_secs()));
    let by_failure = failed_at.map_or(0, |t| {
        t.saturating_add(RETRY_AFTER.as_secs().min(interval.as_secs()))
    });
    match failed_at {
        // After a failure the retry time wins, unless the failure is older than the check.
        Some(f) if checked_at.is_none_or(|c| f >= c) => by_failure,
        _ => by_success,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The lists of one config and their state.
#[derive(Debug)]
pub struct Refresher {
    store: ListStore,
    client: reqwest::Client,
    lists: BTreeMap<String, BlockList>,
    current: Lists,
    failed_at: BTreeMap<String, u64>,
}

/// The lists a config has switched on, by name.
fn enabled_lists(dns: &Dns) -> BTreeMap<String, BlockList> {
    dns.lists
        .iter()
        .filter(|(_, l)| l.enabled)
        .map(|(k, l)| (k.as_str().to_owned(), l.clone()))
        .collect()
}

impl Refresher {
    /// Starts from whatever the store holds, so that blocking works before any download.
    pub fn new(store: ListStore, client: reqwest::Client, dns: &Dns) -> Self {
        let lists = enabled_lists(dns);
        let current = store.load_all(lists.iter().map(|(k, v)| (k.as_str(), v)));
        Self {
            store,
            client,
            lists,
            current,
            failed_at: BTreeMap::new(),
        }
    }

    /// For an apply: a list that `old` declares the same way (source and format) keeps
    /// its copy in `in_use`; the others are read from the store. An apply that changes no
    /// list reads nothing and holds each list once; a changed one costs that list alone.
    /// Group membership, update intervals and the rest of the config are not in a
    /// compiled list: the policy built from these lists takes them.
    pub fn reusing(
        store: ListStore,
        client: reqwest::Client,
        dns: &Dns,
        old: &Dns,
        in_use: &Lists,
    ) -> Self {
        let lists = enabled_lists(dns);
        let mut current = Lists::new();
        let mut load = Vec::new();
        for (name, list) in &lists {
            let same = old
                .lists
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .is_some_and(|(_, o)| {
                    o.enabled && o.url == list.url && o.file == list.file && o.format == list.format
                });
            match in_use.get(name) {
                Some(c) if same => {
                    current.insert(name.clone(), Arc::clone(c));
                }
                _ => load.push((name.as_str(), list)),
            }
        }
        let loaded = store.load_all(load);
        tracing::debug!(
            kept = current.len(),
            loaded = loaded.len(),
            "lists for the apply"
        );
        current.extend(loaded);
        Self {
            store,
            client,
            lists,
            current,
            failed_at: BTreeMap::new(),
        }
    }

    /// The lists as they are now.
    pub fn lists(&self) -> &Lists {
        &self.current
    }

    /// Unix time at which each list is next due.
    pub fn schedule(&self) -> BTreeMap<String, u64> {
        self.lists
            .iter()
            .map(|(name, l)| {
                let checked = self
                    .current
                    .contains_key(name)
                    .then(|| self.store.meta(name).map(|m| m.checked_at))
                    .flatten();
                let due = due_at(
                    l.update_interval.to_std(),
                    checked,
                    self.failed_at.get(name).copied(),
                );
                (name.clone(), due)
            })
            .collect()
    }

    /// Checks every list that is due; returns whether any changed.
    pub async fn run_due(&mut self) -> bool {
        let _reloading = crate::reclaim::reloading();
        let now = unix_now();
        let due: Vec<String> = self
            .schedule()
            .into_iter()
            .filter(|(_, at)| *at <= now)
            .map(|(n, _)| n)
            .collect();
        let mut changed = false;
        for name in due {
            let Some(list) = self.lists.get(&name).cloned() else {
                continue;
            };
            let previous = self.current.get(&name).cloned();
            let got = self
                .store
                .refresh_from(&self.client, &name, &list, previous)
                .await;
            match got {
                Ok(Outcome::Updated(c)) => {
                    // The old copy is still shared with the policy in use; it goes when
                    // the caller swaps in a policy built from these lists.
                    crate::reclaim::later(self.current.insert(name.clone(), c));
                    self.failed_at.remove(&name);
                    changed = true;
                }
                Ok(Outcome::Unchanged) => {
                    self.failed_at.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(list = %name, error = %e, "list refresh failed; keeping the previous copy");
                    self.failed_at.insert(name, unix_now());
                }
            }
        }
        changed
    }

    /// How long to sleep until the next list is due.
    pub fn until_next(&self) -> Duration {
        let now = unix_now();
        let next = self.schedule().into_values().min().unwrap_or(u64::MAX);
        Duration::from_secs(next.saturating_sub(now)).clamp(Duration::from_secs(1), MAX_SLEEP)
    }

    /// Runs forever: refreshes due lists and calls `on_change` with the new set after each
    /// change.
    pub async fn run(mut self, on_change: impl Fn(Lists) + Send) {
        loop {
            if self.run_due().await {
                on_change(self.current.clone());
            }
            tokio::time::sleep(self.until_next()).await;
        }
    }

    /// Replaces a list by hand (tests and `applctl dns` use it).
    pub fn insert(&mut self, name: &str, list: Arc<crate::compiled::CompiledList>) {
        self.current.insert(name.to_owned(), list);
    }
}

impl Drop for Refresher {
    /// A refresher replaced by a reload may hold the last copies of the old config's lists.
    fn drop(&mut self) {
        crate::reclaim::later(std::mem::take(&mut self.current));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times() {
        let day = Duration::from_secs(86_400);
        assert_eq!(due_at(day, None, None), 0, "never fetched: due now");
        assert_eq!(due_at(day, Some(1000), None), 1000 + 86_400);
        assert_eq!(
            due_at(day, Some(1000), Some(2000)),
            2000 + 900,
            "failed after the check: retry soon"
        );
        assert_eq!(
            due_at(day, Some(3000), Some(2000)),
            3000 + 86_400,
            "an old failure is forgotten"
        );
        let short = Duration::from_secs(300);
        assert_eq!(
            due_at(short, None, Some(10)),
            10 + 300,
            "retry no sooner than the interval"
        );
    }
}
