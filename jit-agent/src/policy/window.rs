//! Weekly time windows in a time zone, e.g. Monday to Friday 08:00-18:00 in
//! Europe/Berlin.
//!
//! Windows follow the wall clock and the zone's daylight-saving rules. Local
//! times are turned into instants like this:
//! - a time that does not exist (skipped when clocks go forward) means the
//!   moment the clocks jump, i.e. the first valid local time after it;
//! - a time that exists twice (when clocks go back) means its first
//!   occurrence, which is when the wall clock first shows it.

use std::fmt;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Minutes of a day in a window, from 00:00 to 24:00 (the latter only as an end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// Midnight at the start of a day.
    pub const MIDNIGHT: TimeOfDay = TimeOfDay(0);
    /// Midnight at the end of a day, `24:00`.
    pub const END_OF_DAY: TimeOfDay = TimeOfDay(24 * 60);

    /// Parses `HH:MM` (or `HH:MM:00`), 24-hour, with `24:00` allowed.
    pub fn parse(text: &str) -> Option<TimeOfDay> {
        let text = text.trim();
        let text = text
            .strip_suffix(":00")
            .filter(|t| t.len() >= 4)
            .unwrap_or(text);
        let (h, m) = text.split_once(':')?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return None;
        }
        if !h.bytes().all(|b| b.is_ascii_digit()) || !m.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        match (h, m) {
            (24, 0) => Some(TimeOfDay::END_OF_DAY),
            (0..=23, 0..=59) => Some(TimeOfDay(h * 60 + m)),
            _ => None,
        }
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }

    fn on(self, date: NaiveDate) -> chrono::NaiveDateTime {
        // 24:00 is midnight of the next day.
        let (date, minutes) = if self.0 >= 24 * 60 {
            (date.succ_opt().unwrap_or(date), self.0 - 24 * 60)
        } else {
            (date, self.0)
        };
        let time = NaiveTime::from_hms_opt(u32::from(minutes / 60), u32::from(minutes % 60), 0)
            .unwrap_or(NaiveTime::MIN);
        date.and_time(time)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// Days of the week, as a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Days(u8);

/// Day names, Monday first, as written in policies.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const LONG_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl Days {
    /// Parses one day (`mon`, `Monday`) to its index, Monday = 0.
    pub fn parse_day(text: &str) -> Option<usize> {
        let t = text.trim().to_ascii_lowercase();
        DAY_NAMES
            .iter()
            .position(|d| *d == t)
            .or_else(|| LONG_DAY_NAMES.iter().position(|d| *d == t))
    }

    /// Parses a day or a range of days (`mon-fri`, `sat-sun`, `fri-mon`
    /// wrapping over the weekend) into a set.
    pub fn parse(text: &str) -> Option<Days> {
        match text.split_once('-') {
            None => Self::parse_day(text).map(|d| Days(1 << d)),
            Some((a, b)) => {
                let (a, b) = (Self::parse_day(a)?, Self::parse_day(b)?);
                let mut set = 0u8;
                let mut d = a;
                loop {
                    set |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
                Some(Days(set))
            }
        }
    }

    /// The union of two sets.
    pub fn union(self, other: Days) -> Days {
        Days(self.0 | other.0)
    }

    /// Whether two sets share a day.
    pub fn intersects(self, other: Days) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set holds the day of `date`.
    pub fn contains(self, date: NaiveDate) -> bool {
        self.0 & (1 << date.weekday().num_days_from_monday()) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The days' short names, Monday first.
    pub fn names(self) -> Vec<&'static str> {
        (0..7)
            .filter(|d| self.0 & (1 << d) != 0)
            .map(|d| DAY_NAMES[d])
            .collect()
    }
}

/// One weekly window. It opens at `start` on each of `days` and closes at
/// `end`, on the same day or, when `end` is not after `start`, on the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// The days on which the window opens.
    pub days: Days,
    /// Local opening time.
    pub start: TimeOfDay,
    /// Local closing time.
    pub end: TimeOfDay,
    /// The zone whose wall clock the times follow.
    pub tz: Tz,
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Window", 4)?;
        st.serialize_field("days", &self.days.names())?;
        st.serialize_field("start", &self.start.to_string())?;
        st.serialize_field("end", &self.end.to_string())?;
        st.serialize_field("tz", self.tz.name())?;
        st.end()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{} {}",
            self.days.names().join(","),
            self.start,
            self.end,
            self.tz.name()
        )
    }
}

/// Turns a local time into an instant, following the rules in the module
/// documentation.
fn resolve(tz: Tz, local: chrono::NaiveDateTime) -> Option<DateTime<Utc>> {
    // Gaps are at most a day long (Samoa skipped 2011-12-30); a minute step
    // finds the jump, which is on a minute boundary in every zone in use.
    let mut t = local;
    for _ in 0..=(48 * 60) {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return Some(dt.with_timezone(&Utc));
        }
        t += ChronoDuration::minutes(1);
    }
    None
}

impl Window {
    /// The window's interval that opens on local `date`, if it opens that day.
    fn interval_on(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if !self.days.contains(date) {
            return None;
        }
        let start = resolve(self.tz, self.start.on(date))?;
        let end_date = if self.end > self.start {
            date
        } else {
            date.succ_opt()?
        };
        let end = resolve(self.tz, self.end.on(end_date))?;
        // A window lying wholly inside a skipped hour is empty that day.
        (end > start).then_some((start, end))
    }

    /// Intervals that may contain `at`: those opening on its local date or
    /// the day before (a window may run past midnight).
    fn intervals_near(
        &self,
        at: DateTime<Utc>,
        before: i64,
        after: i64,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        let local = at.with_timezone(&self.tz).date_naive();
        (-before..=after).filter_map(move |offset| {
            let d = local.checked_add_signed(ChronoDuration::days(offset))?;
            self.interval_on(d)
        })
    }
}

/// A role's windows. Empty means the role may be used at any time.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct Schedule {
    windows: Vec<Window>,
}

/// Steps through windows that touch each other; bounds the work on absurd
/// schedules (a chain of one-minute windows) while covering any real one.
const MAX_CHAIN: usize = 10_000;

impl Schedule {
    /// A schedule from windows; empty means always open.
    pub fn new(windows: Vec<Window>) -> Schedule {
        Schedule { windows }
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// Whether the role is not limited to windows.
    pub fn is_always(&self) -> bool {
        self.windows.is_empty()
    }

    /// The latest end of a window interval containing `at`.
    fn end_of_interval_containing(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.windows
            .iter()
            .flat_map(|w| w.intervals_near(at, 1, 0))
            .filter(|(s, e)| *s <= at && at < *e)
            .map(|(_, e)| e)
            .max()
    }

    /// Whether `at` is inside a window.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.is_always() || self.end_of_interval_containing(at).is_some()
    }

    /// If `at` is inside a window, how long the schedule stays open without a
    /// break (following windows that touch or overlap), capped at `limit`.
    /// `None` when `at` is outside every window.
    pub fn open_until(&self, at: DateTime<Utc>, limit: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_always() {
            return Some(limit.max(at));
        }
        let mut cur = self.end_of_interval_containing(at)?;
        for _ in 0..MAX_CHAIN {
            if cur >= limit {
                return Some(limit);
            }
            match self.end_of_interval_containing(cur) {
                Some(next) if next > cur => cur = next,
                _ => return Some(cur),
            }
        }
        Some(cur.min(limit))
    }

    /// The next time a window opens after `at`, within the coming eight days,
    /// with the zone of that window (for showing it to a person).
    pub fn next_opening(&self, at: DateTime<Utc>) -> Option<(DateTime<Utc>, Tz)> {
        self.windows
            .iter()
            .flat_map(|w| w.intervals_near(at, 1, 8).map(move |(s, _)| (s, w.tz)))
            .filter(|(s, _)| *s > at)
            .min_by_key(|(s, _)| *s)
    }
}

/// Formats an instant in a zone for people: `2025-03-31 08:00 CEST (Europe/Berlin)`.
pub fn format_local(at: DateTime<Utc>, tz: Tz) -> String {
    format!(
        "{} ({})",
        at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z"),
        tz.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(days: &str, start: &str, end: &str, tz: &str) -> Window {
        Window {
            days: Days::parse(days).unwrap(),
            start: TimeOfDay::parse(start).unwrap(),
            end: TimeOfDay::parse(end).unwrap(),
            tz: tz.parse().unwrap(),
        }
    }

    #[test]
    fn time_of_day_parses() {
        assert_eq!(TimeOfDay::parse("08:00"), Some(TimeOfDay(480)));
        assert_eq!(TimeOfDay::parse("8:05"), Some(TimeOfDay(485)));
        assert_eq!(TimeOfDay::parse("08:00:00"), Some(TimeOfDay(480)));
        assert_eq!(TimeOfDay::parse("24:00"), Some(TimeOfDay::END_OF_DAY));
        for bad in [
            "", "8", "08:0", "24:01", "25:00", "08:60", "-1:00", "08:00:30", "ab:cd",
        ] {
            assert_eq!(TimeOfDay::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn day_ranges() {
        assert_eq!(
            Days::parse("mon-fri").unwrap().names(),
            ["mon", "tue", "wed", "thu", "fri"]
        );
        assert_eq!(
            Days::parse("fri-mon").unwrap().names(),
            ["mon", "fri", "sat", "sun"]
        );
        assert_eq!(Days::parse("Sunday").unwrap().names(), ["sun"]);
        assert_eq!(Days::parse("mo"), None);
    }

    #[test]
    fn office_hours() {
        let s = Schedule::new(vec![window("mon-fri", "08:00", "18:00", "Europe/Berlin")]);
        // Monday 2025-01-06 10:00 CET = 09:00 UTC.
        let at = utc("2025-01-06T09:00:00Z");
        let far = utc("2025-01-07T00:00:00Z");
        assert_eq!(s.open_until(at, far), Some(utc("2025-01-06T17:00:00Z")));
        assert_eq!(
            s.open_until(at, utc("2025-01-06T10:00:00Z")),
            Some(utc("2025-01-06T10:00:00Z"))
        );
        // Saturday: closed, next opening Monday 08:00 CET.
        let sat = utc("2025-01-11T12:00:00Z");
        assert_eq!(s.open_until(sat, far), None);
        let (next, tz) = s.next_opening(sat).unwrap();
        assert_eq!(next, utc("2025-01-13T07:00:00Z"));
        assert_eq!(
            format_local(next, tz),
            "2025-01-13 08:00 CET (Europe/Berlin)"
        );
        // The end is exclusive.
        assert!(!s.contains(utc("2025-01-06T17:00:00Z")));
        assert!(s.contains(utc("2025-01-06T07:00:00Z")));
    }

    #[test]
    fn overnight_and_chained_windows() {
        let s = Schedule::new(vec![
            window("fri", "22:00", "06:00", "UTC"),
            window("sat", "06:00", "24:00", "UTC"),
        ]);
        let at = utc("2025-01-11T01:00:00Z"); // Saturday 01:00, inside Friday's window
        assert_eq!(
            s.open_until(at, utc("2025-01-20T00:00:00Z")),
            Some(utc("2025-01-12T00:00:00Z"))
        );
    }

    #[test]
    fn dst_spring_forward_shortens_the_window() {
        // Berlin, Sunday 2025-03-30: 02:00 CET jumps to 03:00 CEST.
        let s = Schedule::new(vec![window("sun", "01:00", "04:00", "Europe/Berlin")]);
        let open = utc("2025-03-30T00:00:00Z"); // 01:00 CET
        let (next, _) = s.next_opening(utc("2025-03-29T12:00:00Z")).unwrap();
        assert_eq!(next, open);
        // 04:00 CEST is 02:00 UTC: the window lasts two hours, not three.
        assert_eq!(
            s.open_until(open, utc("2025-04-01T00:00:00Z")),
            Some(utc("2025-03-30T02:00:00Z"))
        );
    }

    #[test]
    fn dst_skipped_start_opens_at_the_jump() {
        let s = Schedule::new(vec![window("sun", "02:30", "05:00", "Europe/Berlin")]);
        let (next, _) = s.next_opening(utc("2025-03-29T12:00:00Z")).unwrap();
        // 02:30 does not exist that day; the window opens at 03:00 CEST = 01:00 UTC.
        assert_eq!(next, utc("2025-03-30T01:00:00Z"));
    }

    #[test]
    fn dst_fall_back_lengthens_the_window() {
        // Berlin, Sunday 2025-10-26: 03:00 CEST goes back to 02:00 CET.
        let s = Schedule::new(vec![window("sun", "01:00", "04:00", "Europe/Berlin")]);
        let open = utc("2025-10-25T23:00:00Z"); // 01:00 CEST
        assert!(s.contains(open));
        // 04:00 CET is 03:00 UTC: four hours.
        assert_eq!(
            s.open_until(open, utc("2025-11-01T00:00:00Z")),
            Some(utc("2025-10-26T03:00:00Z"))
        );
    }

    #[test]
    fn dst_ambiguous_end_is_its_first_occurrence() {
        let s = Schedule::new(vec![window("sun", "01:00", "02:30", "Europe/Berlin")]);
        let open = utc("2025-10-25T23:00:00Z");
        // The first 02:30 is CEST, 00:30 UTC.
        assert_eq!(
            s.open_until(open, utc("2025-11-01T00:00:00Z")),
            Some(utc("2025-10-26T00:30:00Z"))
        );
    }

    #[test]
    fn always_open() {
        let s = Schedule::default();
        let at = utc("2025-01-01T00:00:00Z");
        assert!(s.contains(at));
        assert_eq!(
            s.open_until(at, utc("2025-01-02T00:00:00Z")),
            Some(utc("2025-01-02T00:00:00Z"))
        );
        assert_eq!(s.next_opening(at), None);
    }
}
