//! Scheduled scrubs: when a pool's next scrub is due, from the `scan:` line of
//! `zpool status` (run with TZ=UTC, so its ctime dates are UTC) and the pool's
//! `scrub_interval`. Pure: the caller passes the time.

use crate::time::{Civil, UtcTime};

/// What the `scan:` text says about scrubs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No scrub or resilver ever ran (`none requested`).
    Never,
    /// A scrub or resilver is running.
    Running,
    /// The last scrub finished at this time with this many errors it could not repair
    /// (the count zpool prints).
    ScrubFinished { at: UtcTime, errors: u64 },
    /// A scrub was canceled, or a resilver finished: not a full check, so the next scrub
    /// counts from the last finished one, which this line no longer shows.
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
    Scan::Other { at }
}

/// Whether a scrub should start now. `interval_secs` 0 turns scheduled scrubs off; a
/// running scrub or resilver is never interrupted; a pool never scrubbed is due at once.
/// `last_finished` is the last finished scrub the daemon recorded, for when the scan line
/// shows something else (a resilver, a canceled scrub).
pub fn scrub_due(
    scan: Scan,
    last_finished: Option<UtcTime>,
    interval_secs: u64,
    now: UtcTime,
) -> bool {
    if interval_secs == 0 {
        return false;
    }
    let interval = i64::try_from(interval_secs).unwrap_or(i64::MAX);
    let last = match scan {
        Scan::Running => return false,
        Scan::ScrubFinished { at, .. } => Some(at),
        Scan::Never | Scan::Other { .. } => last_finished,
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
            Scan::Other {
                at: Some(at("2026-11-24T10:00:00Z"))
            }
        );
        assert_eq!(
            parse_scan("scrub canceled on Wed Feb 31 19:00:01 2026"),
            Scan::Other { at: None }
        );
    }

    #[test]
    fn due_after_the_interval_never_while_running_and_never_when_off() {
        let month = 30 * 86_400;
        let done = Scan::ScrubFinished {
            at: at("2026-11-01T00:00:00Z"),
            errors: 0,
        };
        assert!(!scrub_due(done, None, month, at("2026-11-30T23:59:59Z")));
        assert!(scrub_due(done, None, month, at("2026-12-01T00:00:00Z")));
        assert!(!scrub_due(done, None, 0, at("2027-12-01T00:00:00Z")));
        assert!(!scrub_due(
            Scan::Running,
            None,
            month,
            at("2027-12-01T00:00:00Z")
        ));
        assert!(scrub_due(
            Scan::Never,
            None,
            month,
            at("2026-11-01T00:00:00Z")
        ));
        let resilver = Scan::Other { at: None };
        let recorded = Some(at("2026-11-20T00:00:00Z"));
        assert!(!scrub_due(
            resilver,
            recorded,
            month,
            at("2026-12-01T00:00:00Z")
        ));
        assert!(scrub_due(
            resilver,
            recorded,
            month,
            at("2026-12-20T00:00:00Z")
        ));
    }
}
