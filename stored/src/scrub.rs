//! Scheduled scrubs: when a pool's next scrub is due, from the `scan:` line of
//! `zpool status` and, when that line shows something other than a finished scrub (a
//! resilver, a canceled scrub), from the pool's own history (`zpool history -i`), both
//! run with TZ=UTC so that their dates are UTC. Pure: the caller passes the texts and the
//! time.
//!
//! The rule: the interval counts from the end of the last scrub that ran to completion, as
//! ZFS records it, whatever ran since (a resilver, a canceled scrub) and whichever process
//! started it. A canceled scrub is not a scrub: it is retried when the interval since the
//! last completed one has passed, but not within [`CANCELED_RETRY_SECS`] of the cancel,
//! since whoever canceled it had a reason (load, a disk being replaced). A paused scrub
//! (`zpool scrub -p`) is left paused: `zpool scrub` would resume it.

use crate::time::{Civil, UtcTime};

/// How long a canceled scrub is left alone before a due one starts again: a day.
pub const CANCELED_RETRY_SECS: i64 = 86_400;

/// What the `scan:` text says about scrubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No scrub or resilver ever ran (`none requested`).
    Never,
    /// A scrub or resilver is running.
    Running,
    /// A scrub is paused (`zpool scrub -p`).
    Paused,
    /// The last scrub finished at this time with this many errors it could not repair
    /// (the count zpool prints).
    ScrubFinished { at: UtcTime, errors: u64 },
    /// The last scan was a scrub canceled at this time: the last finished one is in the
    /// pool's history.
    ScrubCanceled { at: Option<UtcTime> },
    /// The last scan was a resilver (finished or canceled): not a full check; the last
    /// finished scrub is in the pool's history.
    Resilvered { at: Option<UtcTime> },
    /// Text this parser does not know.
    Other { at: Option<UtcTime> },
}

/// Parses `Wed Nov 25 19:00:01 2026` (ctime, UTC).
fn parse_ctime(s: &str) -> Option<UtcTime> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [_, month, day, time, year] = f.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<u32>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let civil = Civil {
        year: year.parse().ok()?,
        month,
        day: day.parse().ok()?,
        hour,
        minute,
        second,
    };
    // An impossible date (31 Feb, hour 25) does not survive the round trip.
    let t = UtcTime::from_civil(civil);
    (t.civil() == civil).then_some(t)
}

pub fn parse_scan(scan: &str) -> Scan {
    let first = scan.lines().next().unwrap_or("").trim();
    if first.is_empty() || first.starts_with("none requested") {
        return Scan::Never;
    }
    if first.contains("in progress") {
        return Scan::Running;
    }
    if first.starts_with("scrub paused") {
        return Scan::Paused;
    }
    let at = first.rsplit_once(" on ").and_then(|(_, t)| parse_ctime(t));
    if let Some(rest) = first.strip_prefix("scrub repaired ")
        && let Some(at) = at
    {
        let errors = rest
            .split_once(" with ")
            .and_then(|(_, r)| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return Scan::ScrubFinished { at, errors };
    }
    if first.starts_with("scrub canceled") {
        return Scan::ScrubCanceled { at };
    }
    if first.starts_with("resilvered ") || first.starts_with("resilver canceled") {
        return Scan::Resilvered { at };
    }
    Scan::Other { at }
}

/// What the pool's history says about scrubs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubHistory {
    /// The end of the last scrub that ran to completion.
    pub completed: Option<UtcTime>,
    /// The last scrub canceled after it.
    pub canceled: Option<UtcTime>,
}

/// Parses `2026-11-25.19:00:01` (zpool history's `%F.%T`, UTC).
fn parse_history_time(s: &str) -> Option<UtcTime> {
    let (date, time) = s.split_once('.')?;
    let mut d = date.split('-').map(|p| p.parse::<u32>().ok());
    let mut t = time.split(':').map(|p| p.parse::<u32>().ok());
    let civil = Civil {
        year: i64::from(d.next()??),
        month: d.next()??,
        day: d.next()??,
        hour: t.next()??,
        minute: t.next()??,
        second: t.next()??,
    };
    let at = UtcTime::from_civil(civil);
    (at.civil() == civil).then_some(at)
}

/// Reads `zpool history -i POOL`. The kernel logs each scan as `scan setup func=N ...`
/// (1 a scrub, 2 a resilver) and its end as `scan done`, `scan cancelled` or
/// `scan aborted, restarting`, each `DATE [txg:N] EVENT ARGS`. An end whose setup is not
/// in the history (the history is a ring: old records go) is not counted: it may have
/// been a resilver's.
pub fn parse_history(text: &str) -> ScrubHistory {
    const SCRUB: &str = "1";
    let mut out = ScrubHistory::default();
    let mut func: Option<&str> = None;
    for line in text.lines() {
        let Some((time, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix("[txg:") else {
            continue;
        };
        let Some((_, event)) = rest.split_once("] ") else {
            continue;
        };
        if let Some(args) = event.strip_prefix("scan setup ") {
            func = args
                .split_whitespace()
                .find_map(|a| a.strip_prefix("func="));
            continue;
        }
        let Some(at) = parse_history_time(time) else {
            continue;
        };
        if event.starts_with("scan done") {
            if func == Some(SCRUB) {
                out.completed = Some(at);
                out.canceled = None;
            }
            func = None;
        } else if event.starts_with("scan cancelled") {
            if func == Some(SCRUB) {
                out.canceled = Some(at);
            }
            func = None;
        }
    }
    out
}

/// Whether the history is needed to decide: the `scan:` line shows no finished scrub but
/// something ran.
pub fn needs_history(scan: Scan) -> bool {
    matches!(
        scan,
        Scan::ScrubCanceled { .. } | Scan::Resilvered { .. } | Scan::Other { .. }
    )
}

/// Whether a scrub should start now, by the rule in the module's comment. `interval_secs`
/// 0 turns scheduled scrubs off; a running or paused scrub or a resilver is never
/// interrupted; a pool never scrubbed is due at once. `history` is the pool's (see
/// [`needs_history`]); `started_here` the last scrub this process started, the fallback
/// when neither says when a scrub last completed. With none of them, the scrub is due.
pub fn scrub_due(
    scan: Scan,
    history: &ScrubHistory,
    started_here: Option<UtcTime>,
    interval_secs: u64,
    now: UtcTime,
) -> bool {
    if interval_secs == 0 {
        return false;
    }
    let interval = i64::try_from(interval_secs).unwrap_or(i64::MAX);
    let (completed, canceled) = match scan {
        Scan::Running | Scan::Paused => return false,
        Scan::Never => return true,
        Scan::ScrubFinished { at, .. } => (Some(at), None),
        Scan::ScrubCanceled { at } => (history.completed, at.or(history.canceled)),
        Scan::Resilvered { .. } | Scan::Other { .. } => (history.completed, history.canceled),
    };
    if canceled.is_some_and(|c| now.0.saturating_sub(c.0) < CANCELED_RETRY_SECS) {
        return false;
    }
    let last = match (completed, started_here) {
        (Some(a), Some(b)) => Some(if a.0 > b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    last.is_none_or(|t| now.0.saturating_sub(t.0) >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> UtcTime {
        UtcTime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn scan_lines() {
        assert_eq!(parse_scan("none requested"), Scan::Never);
        assert_eq!(
            parse_scan("scrub repaired 0B in 00:00:01 with 0 errors on Wed Nov 25 19:00:01 2026"),
            Scan::ScrubFinished {
                at: at("2026-11-25T19:00:01Z"),
                errors: 0
            }
        );
        assert_eq!(
            parse_scan("scrub repaired 12K in 01:02:03 with 3 errors on Sun Mar  1 02:00:00 2026"),
            Scan::ScrubFinished {
                at: at("2026-03-01T02:00:00Z"),
                errors: 3
            }
        );
        assert_eq!(
            parse_scan(
                "scrub in progress since Wed Nov 25 19:00:01 2026\n1.2G scanned, 30.00% done"
            ),
            Scan::Running
        );
        assert_eq!(
            parse_scan("resilvered 1.5G in 00:10:00 with 0 errors on Tue Nov 24 10:00:00 2026"),
            Scan::Resilvered {
                at: Some(at("2026-11-24T10:00:00Z"))
            }
        );
        assert_eq!(
            parse_scan("scrub canceled on Wed Feb 31 19:00:01 2026"),
            Scan::ScrubCanceled { at: None }
        );
    }

    #[test]
    fn paused_canceled_and_resilvered_lines() {
        assert_eq!(
            parse_scan(
                "scrub paused since Wed Nov 25 19:10:00 2026\n\tscrub started on Wed Nov 25 19:00:01 2026"
            ),
            Scan::Paused
        );
        assert_eq!(
            parse_scan("scrub canceled on Thu Nov 26 08:00:00 2026"),
            Scan::ScrubCanceled {
                at: Some(at("2026-11-26T08:00:00Z"))
            }
        );
        assert_eq!(
            parse_scan("resilver canceled on Thu Nov 26 08:00:00 2026"),
            Scan::Resilvered {
                at: Some(at("2026-11-26T08:00:00Z"))
            }
        );
        assert_eq!(
            parse_scan(
                "resilver in progress since Thu Nov 26 08:00:00 2026\n\t1.2G scanned at 1M/s"
            ),
            Scan::Running
        );
    }

    /// `zpool history -i tank` as zpool prints it: commands and internal events.
    const HISTORY: &str = "History for 'tank':
2026-10-01.00:00:00 zpool create tank mirror /dev/disk/by-id/a /dev/disk/by-id/b
2026-10-01.00:00:00 [txg:5] create pool version 5000; software version zfs-2.1.11-1; uts box 6.1.0 #1 SMP x86_64
2026-11-01.00:00:00 [txg:1000] scan setup func=1 mintxg=0 maxtxg=1000
2026-11-01.00:00:00 zpool scrub tank
2026-11-01.02:00:00 [txg:1100] scan done errors=0
2026-11-10.12:00:00 [txg:2000] scan setup func=2 mintxg=3 maxtxg=2000
2026-11-10.12:00:00 zpool replace tank /dev/disk/by-id/b /dev/disk/by-id/c
2026-11-10.13:30:00 [txg:2100] scan done errors=0
2026-11-11.00:00:00 [txg:2200] destroy tank/docs@stored_hourly_2026-11-10T00:00:00Z (1234)
";

    #[test]
    fn the_history_gives_the_last_completed_scrub_past_a_resilver() {
        let h = parse_history(HISTORY);
        assert_eq!(
            h,
            ScrubHistory {
                completed: Some(at("2026-11-01T02:00:00Z")),
                canceled: None,
            }
        );
        // A scrub then canceled by hand: the completed one stays the last.
        let canceled = format!(
            "{HISTORY}2026-11-20.00:00:00 [txg:3000] scan setup func=1 mintxg=0 maxtxg=3000\n\
             2026-11-20.00:00:00 zpool scrub tank\n\
             2026-11-20.01:00:00 zpool scrub -s tank\n\
             2026-11-20.01:00:00 [txg:3050] scan cancelled errors=0\n"
        );
        assert_eq!(
            parse_history(&canceled),
            ScrubHistory {
                completed: Some(at("2026-11-01T02:00:00Z")),
                canceled: Some(at("2026-11-20T01:00:00Z")),
            }
        );
        // A scrub that completes later clears the cancel.
        let done = format!(
            "{canceled}2026-11-22.00:00:00 [txg:4000] scan setup func=1 mintxg=0 maxtxg=4000\n\
             2026-11-22.03:00:00 [txg:4100] scan done errors=0\n"
        );
        assert_eq!(
            parse_history(&done),
            ScrubHistory {
                completed: Some(at("2026-11-22T03:00:00Z")),
                canceled: None,
            }
        );
        // An end whose setup went out of the ring is not taken for a scrub's.
        let wrapped = "2026-11-10.13:30:00 [txg:2100] scan done errors=0\n";
        assert_eq!(parse_history(wrapped), ScrubHistory::default());
        assert_eq!(parse_history(""), ScrubHistory::default());
        assert_eq!(
            parse_history("garbage\n2026-13-45.99:00:00 [txg:1] scan done\n"),
            ScrubHistory::default()
        );
    }

    #[test]
    fn after_a_resilver_the_interval_counts_from_the_last_completed_scrub() {
        let month = 30 * 86_400;
        let scan =
            parse_scan("resilvered 1.5G in 01:30:00 with 0 errors on Tue Nov 10 13:30:00 2026");
        assert!(needs_history(scan));
        let h = parse_history(HISTORY);
        // A fresh process (nothing started here): not due before 1 Dec, due from then.
        assert!(!scrub_due(
            scan,
            &h,
            None,
            month,
            at("2026-11-30T23:59:59Z")
        ));
        assert!(scrub_due(scan, &h, None, month, at("2026-12-01T02:00:00Z")));
    }

    #[test]
    fn a_canceled_scrub_is_retried_when_due_but_not_within_a_day_of_the_cancel() {
        let month = 30 * 86_400;
        let scan = parse_scan("scrub canceled on Fri Nov 20 01:00:00 2026");
        assert!(needs_history(scan));
        let h = ScrubHistory {
            completed: Some(at("2026-10-01T00:00:00Z")),
            canceled: Some(at("2026-11-20T01:00:00Z")),
        };
        // Overdue since 31 Oct, but canceled by hand on 20 Nov: left alone for a day.
        assert!(!scrub_due(
            scan,
            &h,
            None,
            month,
            at("2026-11-20T12:00:00Z")
        ));
        assert!(scrub_due(scan, &h, None, month, at("2026-11-21T01:00:00Z")));
        // Not yet due by the last completed one: the cancel does not make it due.
        let recent = ScrubHistory {
            completed: Some(at("2026-11-15T00:00:00Z")),
            ..h
        };
        assert!(!scrub_due(
            scan,
            &recent,
            None,
            month,
            at("2026-11-25T00:00:00Z")
        ));
        assert!(scrub_due(
            scan,
            &recent,
            None,
            month,
            at("2026-12-15T00:00:00Z")
        ));
        // A history without any completed scrub: due once the day has passed.
        assert!(scrub_due(
            scan,
            &ScrubHistory::default(),
            None,
            month,
            at("2026-11-21T01:00:00Z")
        ));
    }

    #[test]
    fn due_after_the_interval_never_while_running_or_paused_and_never_when_off() {
        let month = 30 * 86_400;
        let none = ScrubHistory::default();
        let done = Scan::ScrubFinished {
            at: at("2026-11-01T00:00:00Z"),
            errors: 0,
        };
        assert!(!needs_history(done));
        assert!(!scrub_due(
            done,
            &none,
            None,
            month,
            at("2026-11-30T23:59:59Z")
        ));
        assert!(scrub_due(
            done,
            &none,
            None,
            month,
            at("2026-12-01T00:00:00Z")
        ));
        assert!(!scrub_due(done, &none, None, 0, at("2027-12-01T00:00:00Z")));
        for busy in [Scan::Running, Scan::Paused] {
            assert!(!scrub_due(
                busy,
                &none,
                None,
                month,
                at("2027-12-01T00:00:00Z")
            ));
        }
        assert!(scrub_due(
            Scan::Never,
            &none,
            None,
            month,
            at("2026-11-01T00:00:00Z")
        ));
        // Neither the line nor the history has a date: the scrub this process started.
        let other = Scan::Other { at: None };
        let recorded = Some(at("2026-11-20T00:00:00Z"));
        assert!(!scrub_due(
            other,
            &none,
            recorded,
            month,
            at("2026-12-01T00:00:00Z")
        ));
        assert!(scrub_due(
            other,
            &none,
            recorded,
            month,
            at("2026-12-20T00:00:00Z")
        ));
        assert!(scrub_due(
            other,
            &none,
            None,
            month,
            at("2026-12-01T00:00:00Z")
        ));
    }
}
