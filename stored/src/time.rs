//! UTC instants as whole seconds since the Unix epoch, with the calendar arithmetic the
//! snapshot schedule needs (start of the hour, day, ISO week, month, year) and the
//! `YYYY-MM-DDTHH:MM:SSZ` form used in snapshot names. No time zones: snapshot names and
//! schedules are UTC by design, so that a DST change never skips or doubles a snapshot.

use std::fmt;

/// Seconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(pub i64);

/// A calendar date and time of day, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

const DAY: i64 = 86_400;

/// Days since the epoch of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since the epoch (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is 1..=31 and m 1..=12 by construction.
    (y, m as u32, d as u32)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl UtcTime {
    pub fn from_civil(c: Civil) -> Self {
        let days = days_from_civil(c.year, c.month, c.day);
        Self(days * DAY + i64::from(c.hour) * 3600 + i64::from(c.minute) * 60 + i64::from(c.second))
    }

    pub fn civil(self) -> Civil {
        let days = self.0.div_euclid(DAY);
        let secs = self.0.rem_euclid(DAY);
        let (year, month, day) = civil_from_days(days);
        // secs is 0..86400, so each part fits.
        Civil {
            year,
            month,
            day,
            hour: (secs / 3600) as u32,
            minute: (secs % 3600 / 60) as u32,
            second: (secs % 60) as u32,
        }
    }

    /// The wall clock, or the epoch when the clock is before it.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// The start of the `step`-second slot holding `self`, slots counted from the epoch.
    pub fn floor_to(self, step: i64) -> Self {
        if step <= 0 {
            return self;
        }
        Self(self.0 - self.0.rem_euclid(step))
    }

    pub fn start_of_day(self) -> Self {
        self.floor_to(DAY)
    }

    /// Monday 00:00 of the ISO week holding `self`.
    pub fn start_of_week(self) -> Self {
        let days = self.0.div_euclid(DAY);
        // 1970-01-01 was a Thursday: Monday-based weekday is (days + 3) mod 7.
        Self((days - (days + 3).rem_euclid(7)) * DAY)
    }

    pub fn start_of_month(self) -> Self {
        let c = self.civil();
        Self::from_civil(Civil {
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            ..c
        })
    }

    pub fn start_of_year(self) -> Self {
        let c = self.civil();
        Self::from_civil(Civil {
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            ..c
        })
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SSZ` (four-digit year), rejecting impossible dates.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 20
            || b.get(4) != Some(&b'-')
            || b.get(7) != Some(&b'-')
            || b.get(10) != Some(&b'T')
            || b.get(13) != Some(&b':')
            || b.get(16) != Some(&b':')
            || b.get(19) != Some(&b'Z')
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u32> {
            let part = s.get(from..to)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        };
        let year = i64::from(num(0, 4)?);
        let (month, day) = (num(5, 7)?, num(8, 10)?);
        let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        Some(Self::from_civil(Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }))
    }
}

impl fmt::Display for UtcTime {
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.civil();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            c.year, c.month, c.day, c.hour, c.minute, c.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(UtcTime(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(UtcTime(951_782_400).to_string(), "2000-02-29T00:00:00Z");
        assert_eq!(
            UtcTime::parse_rfc3339("2026-11-25T19:41:44Z"),
            Some(UtcTime(1_795_635_704))
        );
        assert_eq!(UtcTime::parse_rfc3339("2025-02-29T00:00:00Z"), None);
        assert_eq!(UtcTime::parse_rfc3339("2026-11-25T24:00:00Z"), None);
        assert_eq!(UtcTime::parse_rfc3339("2026-11-25 19:41:44Z"), None);
        assert_eq!(UtcTime::parse_rfc3339("+026-11-25T19:41:44Z"), None);
    }

    #[test]
    fn calendar_starts() {
        // Wednesday 2026-11-25 19:41:44.
        let t = UtcTime(1_795_635_704);
        assert_eq!(t.start_of_day().to_string(), "2026-11-25T00:00:00Z");
        assert_eq!(t.start_of_week().to_string(), "2026-11-23T00:00:00Z");
        assert_eq!(t.start_of_month().to_string(), "2026-11-01T00:00:00Z");
        assert_eq!(t.start_of_year().to_string(), "2026-01-01T00:00:00Z");
        assert_eq!(t.floor_to(900).to_string(), "2026-11-25T19:30:00Z");
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(secs in 0i64..253_402_300_799) {
            let t = UtcTime(secs);
            prop_assert_eq!(UtcTime::parse_rfc3339(&t.to_string()), Some(t));
        }

        #[test]
        fn starts_are_at_or_before_and_idempotent(secs in 0i64..4_102_444_800) {
            let t = UtcTime(secs);
            for f in [UtcTime::start_of_day, UtcTime::start_of_week, UtcTime::start_of_month, UtcTime::start_of_year] {
                let s = f(t);
                prop_assert!(s <= t);
                prop_assert_eq!(f(s), s);
            }
            prop_assert!(t.start_of_week().0 > t.0 - 7 * DAY);
            prop_assert_eq!(t.start_of_week().civil().hour, 0);
        }
    }
}
