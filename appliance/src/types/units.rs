//! Quantities written with units: durations, sizes, rates and time windows.

use std::fmt;

use super::{ValueError, string_newtype};

/// A duration written with units: `90s`, `15m`, `12h`, `7d`, `2w` or combined `1h30m`.
/// Whole seconds; zero is allowed only where a field says so.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

const DURATION_UNITS: [(char, u64); 5] = [
    ('w', 604_800),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

impl Duration {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write a number with a unit s, m, h, d or w, like 90s, 12h or 1h30m";
        let bad = |why: &str| ValueError::new(format!("duration {s:?} {why}"), HINT);
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        let mut last_unit = u64::MAX;
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let Some(&(_, mult)) = DURATION_UNITS.iter().find(|(u, _)| *u == c) else {
                return Err(bad(&format!("has an unknown unit {c:?}")));
            };
            if digits.is_empty() {
                return Err(bad("has a unit without a number"));
            }
            if mult >= last_unit {
                return Err(bad("repeats a unit or has them out of order"));
            }
            last_unit = mult;
            let n: u64 = digits.parse().map_err(|_| bad("is too large"))?;
            total = n
                .checked_mul(mult)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| bad("is too large"))?;
            digits.clear();
        }
        if !digits.is_empty() {
            return Err(bad("needs a unit"));
        }
        Ok(Self(total))
    }
    pub fn from_secs(secs: u64) -> Self {
        Self(secs)
    }
    pub fn as_secs(&self) -> u64 {
        self.0
    }
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.0;
        for (unit, mult) in DURATION_UNITS {
            // Weeks only when exact, so that 10d stays 10d rather than 1w3d.
            if unit == 'w' && !rest.is_multiple_of(mult) {
                continue;
            }
            if rest >= mult {
                write!(f, "{}{unit}", rest / mult)?;
                rest %= mult;
            }
        }
        Ok(())
    }
}
string_newtype!(
    Duration,
    "duration with units s, m, h, d, w: 90s, 12h, 1h30m",
    Some("^([0-9]+[wdhms])+$")
);

/// A size in bytes, written with binary units: `512M`, `2T`, `1.5G` (K, M, G, T, P; an
/// optional trailing B or iB), or a plain number of bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

const SIZE_UNITS: [(char, u32); 5] = [('P', 50), ('T', 40), ('G', 30), ('M', 20), ('K', 10)];

impl Size {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str =
            "write a number with a unit K, M, G, T or P (powers of 1024), like 512M or 2T";
        let bad = |why: &str| ValueError::new(format!("size {s:?} {why}"), HINT);
        let t = s.trim();
        let t = t
            .strip_suffix("iB")
            .or_else(|| t.strip_suffix('B'))
            .unwrap_or(t);
        let (num, shift) = match t.chars().last() {
            Some(c) if c.is_ascii_alphabetic() => {
                let upper = c.to_ascii_uppercase();
                let Some(&(_, shift)) = SIZE_UNITS.iter().find(|(u, _)| *u == upper) else {
                    return Err(bad(&format!("has an unknown unit {c:?}")));
                };
                (&t[..t.len() - 1], shift)
            }
            _ => (t, 0),
        };
        if num.is_empty() {
            return Err(bad("has no number"));
        }
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("is not a number"));
        }
        let int: u64 = int.parse().map_err(|_| bad("is too large"))?;
        let whole = int
            .checked_shl(shift)
            .filter(|v| v >> shift == int)
            .ok_or_else(|| bad("is too large"))?;
        // Fractions are exact to the byte only in units above bytes; `1.5` bytes is refused.
        let mut frac_bytes: u64 = 0;
        if !frac.is_empty() {
            if shift == 0 {
                return Err(bad("has a fraction of a byte"));
            }
            if frac.len() > 6 {
                return Err(bad("has more than six decimals"));
            }
            let f: u64 = frac.parse().map_err(|_| bad("is not a number"))?;
            let scale = 10u64.pow(u32::try_from(frac.len()).unwrap_or(6));
            frac_bytes = (u128::from(f) * (1u128 << shift) / u128::from(scale)) as u64;
        }
        whole
            .checked_add(frac_bytes)
            .map(Self)
            .ok_or_else(|| bad("is too large"))
    }
    pub fn from_bytes(b: u64) -> Self {
        Self(b)
    }
    pub fn bytes(&self) -> u64 {
        self.0
    }
}
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in SIZE_UNITS {
            let m = 1u64 << shift;
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{unit}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}
string_newtype!(
    Size,
    "size with binary units K, M, G, T, P: 512M, 2T; a bare integer is bytes",
    Some("^[0-9]+(\\.[0-9]+)?([KMGTPkmgtp](i?B)?|B)?$"),
    integer
);

/// A rate limit for firewall rules: `10/second`, `100/minute`, `1000/hour`, `5/day`,
/// optionally with a burst: `10/second burst 20`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RateLimit {
    pub count: u32,
    pub per: RatePer,
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RatePer {
    Second,
    Minute,
    Hour,
    Day,
}
impl RatePer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

impl RateLimit {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write count/period with period second, minute, hour or day, like 10/minute or 10/second burst 20";
        let bad = |why: &str| ValueError::new(format!("rate limit {s:?} {why}"), HINT);
        let (rate, burst) = match s.split_once(" burst ") {
            Some((r, b)) => (r.trim(), Some(b.trim())),
            None => (s.trim(), None),
        };
        let (n, per) = rate.split_once('/').ok_or_else(|| bad("has no '/'"))?;
        let count: u32 = n.trim().parse().map_err(|_| bad("has no count"))?;
        if count == 0 {
            return Err(bad("has a count of 0"));
        }
        let per = match per.trim() {
            "s" | "sec" | "second" => RatePer::Second,
            "m" | "min" | "minute" => RatePer::Minute,
            "h" | "hour" => RatePer::Hour,
            "d" | "day" => RatePer::Day,
            other => return Err(bad(&format!("has an unknown period {other:?}"))),
        };
        let burst = match burst {
            Some(b) => Some(
                b.parse::<u32>()
                    .ok()
                    .filter(|b| *b > 0)
                    .ok_or_else(|| bad("has a bad burst"))?,
            ),
            None => None,
        };
        Ok(Self { count, per, burst })
    }
}
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())?;
        if let Some(b) = self.burst {
            write!(f, " burst {b}")?;
        }
        Ok(())
    }
}
string_newtype!(
    RateLimit,
    "rate: 10/second, 100/minute, optionally 'burst N'",
    None
);

/// A time of day, `HH:MM`, in the appliance's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

/// A daily window such as `02:00-05:00`; it may cross midnight (`23:00-04:00`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeWindow {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
}

impl TimeWindow {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HINT: &str = "write HH:MM-HH:MM, like 02:00-05:00";
        let bad = || ValueError::new(format!("{s:?} is not a time window"), HINT);
        let tod = |t: &str| -> Result<TimeOfDay, ValueError> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let hour: u8 = h.parse().map_err(|_| bad())?;
            let minute: u8 = m.parse().map_err(|_| bad())?;
            if hour > 23 || minute > 59 || m.len() != 2 {
                return Err(bad());
            }
            Ok(TimeOfDay { hour, minute })
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (tod(a)?, tod(b)?);
        if start == end {
            return Err(ValueError::new(format!("time window {s:?} is empty"), HINT));
        }
        Ok(Self { start, end })
    }
}
impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start.hour, self.start.minute, self.end.hour, self.end.minute
        )
    }
}
string_newtype!(
    TimeWindow,
    "daily window HH:MM-HH:MM",
    Some("^[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}$")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("12h").map(|d| d.as_secs()), Ok(43_200));
        assert_eq!(Duration::parse("1h30m").map(|d| d.as_secs()), Ok(5_400));
        assert_eq!(
            Duration::parse("10d").map(|d| d.to_string()),
            Ok("10d".into())
        );
        assert_eq!(
            Duration::parse("14d").map(|d| d.to_string()),
            Ok("2w".into())
        );
        assert_eq!(Duration::from_secs(5_400).to_string(), "1h30m");
        for bad in [
            "",
            "12",
            "h",
            "12x",
            "30m1h",
            "1h1h",
            "99999999999999999999s",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("2T").map(|s| s.bytes()), Ok(2 << 40));
        assert_eq!(Size::parse("512MiB").map(|s| s.bytes()), Ok(512 << 20));
        assert_eq!(Size::parse("1.5G").map(|s| s.bytes()), Ok(3 << 29));
        assert_eq!(Size::parse("4096").map(|s| s.bytes()), Ok(4096));
        assert_eq!(Size::from_bytes(3 << 29).to_string(), "1536M");
        for bad in ["", "T", "2X", "1.5", "-1G", "99999999P"] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_and_windows() {
        assert_eq!(
            RateLimit::parse("10/second burst 20").map(|r| r.to_string()),
            Ok("10/second burst 20".into())
        );
        assert!(RateLimit::parse("0/second").is_err());
        assert!(RateLimit::parse("10/fortnight").is_err());
        assert!(TimeWindow::parse("23:00-04:00").is_ok());
        assert!(TimeWindow::parse("24:00-04:00").is_err());
        assert!(TimeWindow::parse("04:00-04:00").is_err());
    }
}
