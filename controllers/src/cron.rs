//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month,
//! month, day of week) with `*`, `?`, lists, ranges, steps and month/day names, or a
//! macro (`@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`).
//! When both day fields are restricted a day matches either, as in cron. Times are UTC.

use k8s_openapi::jiff::civil::{Date, DateTime, Time};
use k8s_openapi::jiff::{tz::TimeZone, Timestamp, ToSpan};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month and day of week both restricted: either matches.
    either_day: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, lo: u32, names: &[&str]) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + lo);
    }
    s.parse().map_err(|_| format!("failed to parse int from {s}"))
}

/// One field as a bit set over lo..=hi; also whether it was `*`. `*` and `N/step` run
/// up to `open_hi` (day of week: 6, though 7 may be named as Sunday).
fn field(text: &str, lo: u32, hi: u32, open_hi: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("failed to parse int from {s}"))?),
            None => (part, 1),
        };
        if step == 0 || step > hi {
            return Err(format!("step of range should be a number from 1 to {hi}: {part}"));
        }
        let (a, b) = match range {
            "*" | "?" => {
                star = part == range;
                (lo, open_hi)
            }
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a, lo, names)?, value(b, lo, names)?),
                None => {
                    let a = value(range, lo, names)?;
                    (a, if step > 1 { open_hi } else { a })
                }
            },
        };
        if a < lo {
            return Err(format!("beginning of range ({a}) below minimum ({lo}): {part}"));
        }
        if b > hi {
            return Err(format!("end of range ({b}) above maximum ({hi}): {part}"));
        }
        if a > b {
            return Err(format!("beginning of range ({a}) beyond end of range ({b}): {part}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step; // step <= hi <= 59 and b <= 59: no overflow
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            t if t.starts_with('@') => return Err(format!("unrecognized descriptor: {t}")),
            t => t,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {text}", fields.len()));
        }
        let (minutes, _) = field(fields[0], 0, 59, 59, &[])?;
        let (hours, _) = field(fields[1], 0, 23, 23, &[])?;
        let (days, dom_star) = field(fields[2], 1, 31, 31, &[])?;
        let (months, _) = field(fields[3], 1, 12, 12, &MONTHS)?;
        let (mut weekdays, dow_star) = field(fields[4], 0, 7, 6, &DAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Schedule { minutes, hours, days, months, weekdays, either_day: !dom_star && !dow_star })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    fn matches(&self, t: DateTime) -> bool {
        self.minutes & (1 << t.minute()) != 0
            && self.hours & (1 << t.hour()) != 0
            && self.months & (1 << t.month()) != 0
            && self.day_matches(t.date())
    }

    /// The first scheduled time strictly after `after`, if there is one within 5 years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(TimeZone::UTC).datetime();
        let mut t = DateTime::from_parts(start.date(), Time::new(start.hour(), start.minute(), 0, 0).ok()?)
            .checked_add(1.minute())
            .ok()?;
        let limit = t.checked_add(5.years()).ok()?;
        while t < limit {
            if self.months & (1 << t.month()) == 0 || !self.day_matches(t.date()) {
                t = DateTime::from_parts(t.date().tomorrow().ok()?, Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.checked_add(1.hour()).ok()?.with().minute(0).build().ok()?;
                continue;
            }
            if self.matches(t) {
                return t.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// Scheduled times in (after, now]: the latest and how many, counting at most `cap`.
    fn scan(&self, after: Timestamp, now: Timestamp, cap: usize) -> (Option<Timestamp>, usize) {
        let (mut last, mut n) = (None, 0);
        let mut t = after;
        while let Some(next) = self.next_after(t).filter(|x| *x <= now) {
            last = Some(next);
            n += 1;
            if n >= cap {
                break;
            }
            t = next;
        }
        (last, n)
    }

    /// The latest scheduled time in (after, now], and how many there were (counted up to
    /// 101, as Kubernetes stops counting missed starts at 100).
    pub fn last_between(&self, after: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
        let (last, n) = self.scan(after, now, 101);
        if n <= 100 {
            return (last, n);
        }
        // Many missed: find the latest by looking back from now, in growing windows.
        for days in [0.04, 1.0, 31.0, 366.0, 5.0 * 366.0] {
            let back = k8s_openapi::jiff::SignedDuration::from_secs((days * 86400.0) as i64);
            let from = now.checked_sub(back).unwrap_or(after).max(after);
            if let (Some(latest), _) = self.scan(from, now, usize::MAX) {
                return (Some(latest), n);
            }
        }
        (last, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn next_times() {
        let every = Schedule::parse("* * * * *").unwrap();
        assert_eq!(every.next_after(ts("2026-01-01T10:00:30Z")), Some(ts("2026-01-01T10:01:00Z")));
        assert_eq!(every.next_after(ts("2026-01-01T10:01:00Z")), Some(ts("2026-01-01T10:02:00Z")));
        let quarter = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // 2026-01-03 is a Saturday: the next is Monday 09:00.
        assert_eq!(quarter.next_after(ts("2026-01-02T17:50:00Z")), Some(ts("2026-01-05T09:00:00Z")));
        assert_eq!(quarter.next_after(ts("2026-01-05T09:00:00Z")), Some(ts("2026-01-05T09:15:00Z")));
        let monthly = Schedule::parse("@monthly").unwrap();
        assert_eq!(monthly.next_after(ts("2026-01-31T12:00:00Z")), Some(ts("2026-02-01T00:00:00Z")));
        // Both day fields restricted: the 13th or any Friday.
        let either = Schedule::parse("0 0 13 * 5").unwrap();
        assert_eq!(either.next_after(ts("2026-01-01T00:00:00Z")), Some(ts("2026-01-02T00:00:00Z")));
        assert_eq!(either.next_after(ts("2026-01-10T00:00:00Z")), Some(ts("2026-01-13T00:00:00Z")));
        assert_eq!(Schedule::parse("0 0 30 2 *").unwrap().next_after(ts("2026-01-01T00:00:00Z")), None);
        // Day of week 1/2 is Monday, Wednesday, Friday (not Sunday as 7); 7 alone is Sunday.
        let odd = Schedule::parse("0 0 * * 1/2").unwrap();
        assert_eq!(odd.next_after(ts("2026-01-02T12:00:00Z")), Some(ts("2026-01-05T00:00:00Z")));
        let sunday = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(sunday.next_after(ts("2026-01-01T00:00:00Z")), Some(ts("2026-01-04T00:00:00Z")));
    }

    #[test]
    fn missed_times_are_counted() {
        let every = Schedule::parse("* * * * *").unwrap();
        let (last, n) = every.last_between(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:05:30Z"));
        assert_eq!((last, n), (Some(ts("2026-01-01T10:05:00Z")), 5));
        assert_eq!(every.last_between(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:00:59Z")), (None, 0));
        // A day of missed minutes: counted to 101, and the latest is still the latest.
        let (last, n) = every.last_between(ts("2026-01-01T10:00:00Z"), ts("2026-01-02T10:00:30Z"));
        assert_eq!((last, n), (Some(ts("2026-01-02T10:00:00Z")), 101));
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("* * * *").unwrap_err().contains("expected exactly 5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("above maximum (59)"));
        assert!(Schedule::parse("x * * * *").unwrap_err().contains("failed to parse int from x"));
        assert!(Schedule::parse("*/0 * * * *").unwrap_err().contains("from 1 to 59"));
        assert!(Schedule::parse("5/4294967295 * * * *").is_err());
        assert!(Schedule::parse("@sometimes").is_err());
        assert!(Schedule::parse("0 0 * jan-mar sun,sat").is_ok());
    }
}
