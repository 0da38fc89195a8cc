//! Contact plans: the scheduled contacts (a sender may transmit to a receiver at a rate during an
//! interval) and ranges (one-way light time between two nodes during an interval) that Contact
//! Graph Routing works on, as CCSDS SABR (734.3-B-1 §3.2, contact plan) and ION's `ionadmin`
//! (`ionrc(5)`: `a contact`, `a range`, `d contact`, `d range`, `@` reference time) define them,
//! plus HDTN's JSON contact plan (`{"contacts": [...]}`).
//!
//! **Time base.** Every time in a [`ContactPlan`] is DTN time in milliseconds since
//! 2000-01-01T00:00:00Z without leap seconds (RFC 9171 §4.2.6), the same time the router takes as
//! "now". ION absolute times (`yyyy/mm/dd-hh:mm:ss`, UTC) are converted with a civil-date
//! calculation; relative times (`+N` seconds) are added to the plan's reference time, which the
//! caller gives (normally the node's current DTN time when the plan is loaded) and an ION `@`
//! line overrides for the lines after it. HDTN JSON times are seconds relative to the reference
//! time (HDTN's default, "now as epoch") or, with [`HdtnTimeBase::UnixSeconds`], Unix seconds.
//!
//! Parsing is all-or-nothing: a plan is only returned when every line is valid, so a failed
//! reload changes nothing. Errors display as `FILE:LINE: reason`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;
use tracing::debug;

/// DTN time: milliseconds since 2000-01-01T00:00:00Z, no leap seconds (RFC 9171 §4.2.6).
pub type DtnMillis = u64;

/// Seconds from the Unix epoch (1970-01-01) to the DTN epoch (2000-01-01), both UTC.
pub const UNIX_EPOCH_TO_DTN_EPOCH_SECS: u64 = 946_684_800;

/// Default maximum number of contacts a plan may hold.
pub const DEFAULT_MAX_CONTACTS: usize = 1_000_000;
/// Default maximum number of ranges a plan may hold.
pub const DEFAULT_MAX_RANGES: usize = 1_000_000;
/// Longest accepted line of an ION plan, in bytes.
pub const MAX_LINE_LEN: usize = 4096;
/// Largest plan file accepted by [`ContactPlan::load`], in bytes.
pub const MAX_PLAN_FILE_LEN: u64 = 256 * 1024 * 1024;

/// Days from 1970-01-01 to the given proleptic Gregorian date (civil-from-days inverse).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Shift the year so that it starts in March: the leap day is then the last day of the year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// DTN time of a UTC civil time; `None` if the date is invalid or before 2000-01-01.
pub fn dtn_millis_from_utc(
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<DtnMillis> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day) - days_from_civil(2000, 1, 1);
    let secs = days
        .checked_mul(86_400)?
        .checked_add(i64::from(hour * 3600 + minute * 60 + second))?;
    u64::try_from(secs).ok()?.checked_mul(1000)
}

/// Parses ION's absolute time form `yyyy/mm/dd-hh:mm:ss` (UTC) into DTN time.
pub fn parse_utc_time(s: &str) -> Option<DtnMillis> {
    let (date, time) = s.split_once('-')?;
    let mut d = date.split('/');
    let mut t = time.split(':');
    let num = |x: Option<&str>, max_len: usize| -> Option<u32> {
        let x = x?;
        if x.is_empty() || x.len() > max_len || !x.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        x.parse().ok()
    };
    let year = num(d.next(), 4)?;
    let month = num(d.next(), 2)?;
    let day = num(d.next(), 2)?;
    let hour = num(t.next(), 2)?;
    let minute = num(t.next(), 2)?;
    let second = num(t.next(), 2)?;
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    dtn_millis_from_utc(i64::from(year), month, day, hour, minute, second)
}

/// Formats DTN time as ION's absolute time `yyyy/mm/dd-hh:mm:ss` (UTC; milliseconds are
/// dropped), the inverse of [`parse_utc_time`]: how a program writes a plan with a shared `@`
/// reference line for several nodes.
pub fn format_utc_time(t: DtnMillis) -> String {
    let secs = t / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2) + days_from_civil(2000, 1, 1);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (the inverse of `days_from_civil`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}/{month:02}/{day:02}-{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Identifies a contact within a plan: sender, receiver and start time (SABR §3.2.4: contacts
/// of one sender/receiver pair never overlap, so this is unique).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactKey {
    /// Sending node number.
    pub from: u64,
    /// Receiving node number.
    pub to: u64,
    /// Start of the contact, DTN ms.
    pub start: DtnMillis,
}

impl fmt::Display for ContactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}@{}", self.from, self.to, self.start)
    }
}

/// A scheduled contact: `from` may transmit to `to` at `rate` bytes/s during `[start, end)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Contact {
    /// Sending node number.
    pub from: u64,
    /// Receiving node number.
    pub to: u64,
    /// Start of the contact, DTN ms (inclusive).
    pub start: DtnMillis,
    /// End of the contact, DTN ms (exclusive).
    pub end: DtnMillis,
    /// Transmission rate, bytes per second.
    pub rate: u64,
    /// Confidence that the contact will happen, 0.0 to 1.0 (ION; 1.0 when not given).
    pub confidence: f64,
}

impl Contact {
    /// The contact's key (sender, receiver, start).
    pub fn key(&self) -> ContactKey {
        ContactKey {
            from: self.from,
            to: self.to,
            start: self.start,
        }
    }

    /// The contact's total volume in bytes: rate × duration (SABR §3.2.5).
    pub fn volume(&self) -> u64 {
        let v = u128::from(self.rate) * u128::from(self.end - self.start) / 1000;
        u64::try_from(v).unwrap_or(u64::MAX)
    }

    /// Whether the contact is active at `t`.
    pub fn is_active(&self, t: DtnMillis) -> bool {
        self.start <= t && t < self.end
    }
}

/// A range: the one-way light time between `from` and `to` during `[start, end)`. It also holds
/// for the reverse direction unless a range is given for that direction (ION `a range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First node number.
    pub from: u64,
    /// Second node number.
    pub to: u64,
    /// Start of the interval, DTN ms (inclusive).
    pub start: DtnMillis,
    /// End of the interval, DTN ms (exclusive).
    pub end: DtnMillis,
    /// One-way light time in milliseconds.
    pub owlt: u64,
}

/// How HDTN JSON `startTime`/`endTime` values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HdtnTimeBase {
    /// Seconds after the reference time (HDTN's default: the plan's load time is its epoch).
    #[default]
    Relative,
    /// Seconds since the Unix epoch (HDTN's `usingUnixTimestamp`).
    UnixSeconds,
}

/// Options for reading a contact plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Reference time for relative times (`+N`), DTN ms; normally the current time.
    pub reference: DtnMillis,
    /// Maximum number of contacts; a plan with more is refused.
    pub max_contacts: usize,
    /// Maximum number of ranges; a plan with more is refused.
    pub max_ranges: usize,
    /// How HDTN JSON times are read.
    pub hdtn_time_base: HdtnTimeBase,
}

impl PlanOptions {
    /// Default limits with the given reference time.
    pub fn new(reference: DtnMillis) -> Self {
        PlanOptions {
            reference,
            max_contacts: DEFAULT_MAX_CONTACTS,
            max_ranges: DEFAULT_MAX_RANGES,
            hdtn_time_base: HdtnTimeBase::Relative,
        }
    }
}

/// Why a contact or range could not be added to a plan.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PlanConflict {
    /// The interval is empty or reversed.
    #[error("end time is not after start time")]
    EmptyInterval,
    /// A contact of the same sender and receiver overlaps this one (SABR §3.2.4).
    #[error("overlaps contact {0}")]
    OverlappingContact(ContactKey),
    /// A range of the same pair and direction overlaps this one.
    #[error("overlaps range {from}->{to} starting at {start}")]
    OverlappingRange {
        /// First node.
        from: u64,
        /// Second node.
        to: u64,
        /// Start of the existing range, DTN ms.
        start: DtnMillis,
    },
    /// The plan already holds its maximum number of contacts or ranges.
    #[error("plan limit of {0} entries reached")]
    Full(usize),
    /// The confidence is not within 0.0..=1.0.
    #[error("confidence must be between 0.0 and 1.0")]
    BadConfidence,
}

/// A contact plan could not be read.
#[derive(Debug, Error)]
pub enum PlanError {
    /// A line (or JSON position) is invalid.
    #[error("{file}:{line}: {reason}")]
    Line {
        /// File name (or a label for in-memory text).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// File name.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A set of contacts and ranges (see the module documentation for the time base).
#[derive(Debug, Clone, Default)]
pub struct ContactPlan {
    contacts: BTreeMap<ContactKey, Contact>,
    ranges: BTreeMap<(u64, u64, DtnMillis), Range>,
    max_contacts: usize,
    max_ranges: usize,
}

impl ContactPlan {
    /// An empty plan with the default limits.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_CONTACTS, DEFAULT_MAX_RANGES)
    }

    /// An empty plan holding at most `max_contacts` contacts and `max_ranges` ranges.
    pub fn with_limits(max_contacts: usize, max_ranges: usize) -> Self {
        ContactPlan {
            contacts: BTreeMap::new(),
            ranges: BTreeMap::new(),
            max_contacts,
            max_ranges,
        }
    }

    /// Adds a contact; refused if empty, overlapping another contact of the same pair, or over
    /// the limit.
    pub fn add_contact(&mut self, c: Contact) -> Result<(), PlanConflict> {
        if c.end <= c.start {
            return Err(PlanConflict::EmptyInterval);
        }
        if !(0.0..=1.0).contains(&c.confidence) {
            return Err(PlanConflict::BadConfidence);
        }
        let lo = ContactKey {
            from: c.from,
            to: c.to,
            start: 0,
        };
        let key = c.key();
        // SABR §3.2.4: contacts of one pair are disjoint in time.
        if let Some((k, prev)) = self.contacts.range(lo..=key).next_back() {
            if prev.end > c.start {
                return Err(PlanConflict::OverlappingContact(*k));
            }
        }
        let hi = ContactKey {
            from: c.from,
            to: c.to,
            start: u64::MAX,
        };
        if let Some((k, next)) = self.contacts.range(key..=hi).next() {
            if next.start < c.end {
                return Err(PlanConflict::OverlappingContact(*k));
            }
        }
        if self.contacts.len() >= self.max_contacts {
            return Err(PlanConflict::Full(self.max_contacts));
        }
        self.contacts.insert(key, c);
        Ok(())
    }

    /// Adds a range; refused if empty, overlapping another range of the same pair and
    /// direction, or over the limit.
    pub fn add_range(&mut self, r: Range) -> Result<(), PlanConflict> {
        if r.end <= r.start {
            return Err(PlanConflict::EmptyInterval);
        }
        let key = (r.from, r.to, r.start);
        let conflict = |k: &(u64, u64, DtnMillis)| PlanConflict::OverlappingRange {
            from: k.0,
            to: k.1,
            start: k.2,
        };
        if let Some((k, prev)) = self.ranges.range((r.from, r.to, 0)..=key).next_back() {
            if prev.end > r.start {
                return Err(conflict(k));
            }
        }
        if let Some((k, next)) = self.ranges.range(key..=(r.from, r.to, u64::MAX)).next() {
            if next.start < r.end {
                return Err(conflict(k));
            }
        }
        if self.ranges.len() >= self.max_ranges {
            return Err(PlanConflict::Full(self.max_ranges));
        }
        self.ranges.insert(key, r);
        Ok(())
    }

    /// Removes the contacts from `from` to `to` starting at `start` (all of them if `None`);
    /// returns how many were removed.
    pub fn remove_contacts(&mut self, start: Option<DtnMillis>, from: u64, to: u64) -> usize {
        let before = self.contacts.len();
        match start {
            Some(start) => {
                self.contacts.remove(&ContactKey { from, to, start });
            }
            None => self.contacts.retain(|k, _| !(k.from == from && k.to == to)),
        }
        before - self.contacts.len()
    }

    /// Removes the ranges from `from` to `to` starting at `start` (all of them if `None`);
    /// returns how many were removed.
    pub fn remove_ranges(&mut self, start: Option<DtnMillis>, from: u64, to: u64) -> usize {
        let before = self.ranges.len();
        match start {
            Some(start) => {
                self.ranges.remove(&(from, to, start));
            }
            None => self.ranges.retain(|k, _| !(k.0 == from && k.1 == to)),
        }
        before - self.ranges.len()
    }

    /// All contacts, ordered by sender, receiver and start.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// The contact with this key, if any.
    pub fn contact(&self, key: &ContactKey) -> Option<&Contact> {
        self.contacts.get(key)
    }

    /// All ranges, ordered by pair and start.
    pub fn ranges(&self) -> impl Iterator<Item = &Range> {
        self.ranges.values()
    }

    /// Number of contacts.
    pub fn contact_count(&self) -> usize {
        self.contacts.len()
    }

    fn range_at(&self, a: u64, b: u64, t: DtnMillis) -> Option<&Range> {
        self.ranges
            .range((a, b, 0)..=(a, b, t))
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| t < r.end)
    }

    /// Whether any range is given for the direction `a` → `b` (at any time).
    fn has_direction(&self, a: u64, b: u64) -> bool {
        self.ranges
            .range((a, b, 0)..=(a, b, u64::MAX))
            .next()
            .is_some()
    }

    /// One-way light time from `a` to `b` at time `t`, in ms: the range for `a`→`b` covering `t`,
    /// or else (only when no range is given for that direction at all) the range for `b`→`a`.
    pub fn owlt(&self, a: u64, b: u64, t: DtnMillis) -> Option<u64> {
        if let Some(r) = self.range_at(a, b, t) {
            return Some(r.owlt);
        }
        if self.has_direction(a, b) {
            return None;
        }
        self.range_at(b, a, t).map(|r| r.owlt)
    }

    /// The first time after `t` at which a range between `a` and `b` (either direction) starts
    /// or ends, i.e. when [`ContactPlan::owlt`] may change.
    pub fn owlt_change_after(&self, a: u64, b: u64, t: DtnMillis) -> Option<DtnMillis> {
        let mut best: Option<DtnMillis> = None;
        let mut consider = |x: DtnMillis| {
            if x > t {
                best = Some(best.map_or(x, |b: DtnMillis| b.min(x)));
            }
        };
        for (x, y) in [(a, b), (b, a)] {
            if let Some((_, r)) = self.ranges.range((x, y, 0)..=(x, y, t)).next_back() {
                consider(r.end);
            }
            if t < u64::MAX {
                if let Some((_, r)) = self.ranges.range((x, y, t + 1)..=(x, y, u64::MAX)).next() {
                    consider(r.start);
                }
            }
        }
        best
    }

    /// The contact from `a` to `b` active at `t`, if any.
    pub fn contact_at(&self, a: u64, b: u64, t: DtnMillis) -> Option<&Contact> {
        self.pair_contacts(a, b, 0..=t)
            .next_back()
            .filter(|c| c.is_active(t))
    }

    /// The contacts from `a` to `b` starting within `starts`, in start order.
    fn pair_contacts(
        &self,
        a: u64,
        b: u64,
        starts: std::ops::RangeInclusive<DtnMillis>,
    ) -> impl DoubleEndedIterator<Item = &Contact> {
        let key = |start| ContactKey {
            from: a,
            to: b,
            start,
        };
        self.contacts
            .range(key(*starts.start())..=key(*starts.end()))
            .map(|(_, c)| c)
    }

    /// The first contact from `a` to `b` starting after `t`, if any.
    pub fn next_contact_after(&self, a: u64, b: u64, t: DtnMillis) -> Option<&Contact> {
        if t == DtnMillis::MAX {
            return None;
        }
        self.pair_contacts(a, b, t + 1..=DtnMillis::MAX).next()
    }

    /// Whether the plan has any contact from `a` to `b`.
    pub fn has_contacts(&self, a: u64, b: u64) -> bool {
        self.pair_contacts(a, b, 0..=DtnMillis::MAX)
            .next()
            .is_some()
    }

    /// Transmission rate from `a` to `b` at `t` in bytes/s (the active contact's rate).
    pub fn rate(&self, a: u64, b: u64, t: DtnMillis) -> Option<u64> {
        self.contact_at(a, b, t).map(|c| c.rate)
    }

    /// Reads a plan file: HDTN JSON if the name ends in `.json` or the text starts with `{`,
    /// ION `ionadmin` commands otherwise.
    pub fn load(path: &Path, opts: &PlanOptions) -> Result<Self, PlanError> {
        let file = path.display().to_string();
        let io = |source| PlanError::Io {
            file: file.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_PLAN_FILE_LEN {
            return Err(PlanError::Line {
                file,
                line: 1,
                reason: format!("file is {len} bytes, more than the limit of {MAX_PLAN_FILE_LEN}"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            PlanError::Line {
                file: file.clone(),
                line: 1 + upto.iter().filter(|&&b| b == b'\n').count(),
                reason: "not valid UTF-8".into(),
            }
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || text.trim_start().starts_with('{');
        if is_json {
            Self::parse_hdtn_json(&text, &file, opts)
        } else {
            Self::parse_ion(&text, &file, opts)
        }
    }

    /// Parses ION `ionadmin` commands (`ionrc(5)`): `a contact`, `a range`, `d contact`,
    /// `d range`, `@ TIME` and `#` comments. Other `ionadmin` commands that do not concern the
    /// contact plan (`1`, `s`, `x`, `m`, `e`, `v`, `h`, `?`, `l`, `i`) are ignored; anything else is
    /// an error. `file` names the source in errors.
    pub fn parse_ion(text: &str, file: &str, opts: &PlanOptions) -> Result<Self, PlanError> {
        let mut plan = ContactPlan::with_limits(opts.max_contacts, opts.max_ranges);
        let mut reference = opts.reference;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let err = |reason: String| PlanError::Line {
                file: file.to_string(),
                line: line_no,
                reason,
            };
            if raw.len() > MAX_LINE_LEN {
                return Err(err(format!("line longer than {MAX_LINE_LEN} bytes")));
            }
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            plan.ion_command(&words, &mut reference).map_err(err)?;
        }
        debug!(
            file,
            contacts = plan.contacts.len(),
            ranges = plan.ranges.len(),
            "parsed ION contact plan"
        );
        Ok(plan)
    }

    fn ion_command(&mut self, w: &[&str], reference: &mut DtnMillis) -> Result<(), String> {
        let time = |s: &str, reference: DtnMillis| -> Result<DtnMillis, String> {
            if let Some(rel) = s.strip_prefix('+') {
                let secs: u64 = rel
                    .parse()
                    .map_err(|_| format!("bad relative time {s:?} (expected +SECONDS)"))?;
                secs.checked_mul(1000)
                    .and_then(|ms| ms.checked_add(reference))
                    .ok_or_else(|| format!("relative time {s:?} is out of range"))
            } else {
                parse_utc_time(s).ok_or_else(|| {
                    format!(
                        "bad time {s:?} (expected +SECONDS or yyyy/mm/dd-hh:mm:ss UTC, from 2000)"
                    )
                })
            }
        };
        let node = |s: &str| -> Result<u64, String> {
            s.parse().map_err(|_| format!("bad node number {s:?}"))
        };
        let int = |s: &str, what: &str| -> Result<u64, String> {
            s.parse().map_err(|_| format!("bad {what} {s:?}"))
        };
        let arity = |n: std::ops::RangeInclusive<usize>, usage: &str| {
            if n.contains(&w.len()) {
                Ok(())
            } else {
                Err(format!("wrong number of arguments, expected `{usage}`"))
            }
        };
        match (w[0], w.get(1).copied()) {
            ("@", _) => {
                arity(2..=2, "@ yyyy/mm/dd-hh:mm:ss")?;
                *reference = parse_utc_time(w[1]).ok_or_else(|| {
                    format!(
                        "bad reference time {:?} (expected yyyy/mm/dd-hh:mm:ss UTC, from 2000)",
                        w[1]
                    )
                })?;
                Ok(())
            }
            ("a", Some("contact")) => {
                arity(7..=8, "a contact START STOP FROM TO RATE [CONFIDENCE]")?;
                let start = time(w[2], *reference)?;
                let end = time(w[3], *reference)?;
                let confidence = match w.get(7) {
                    Some(s) => s
                        .parse::<f64>()
                        .map_err(|_| format!("bad confidence {s:?}"))?,
                    None => 1.0,
                };
                let c = Contact {
                    from: node(w[4])?,
                    to: node(w[5])?,
                    start,
                    end,
                    rate: int(w[6], "rate (bytes/s)")?,
                    confidence,
                };
                self.add_contact(c).map_err(|e| e.to_string())
            }
            ("a", Some("range")) => {
                arity(7..=7, "a range START STOP FROM TO OWLT")?;
                let r = Range {
                    start: time(w[2], *reference)?,
                    end: time(w[3], *reference)?,
                    from: node(w[4])?,
                    to: node(w[5])?,
                    owlt: int(w[6], "one-way light time (s)")?
                        .checked_mul(1000)
                        .ok_or("one-way light time out of range")?,
                };
                self.add_range(r).map_err(|e| e.to_string())
            }
            ("d", Some(kind @ ("contact" | "range"))) => {
                arity(5..=5, "d contact|range START|* FROM TO")?;
                let start = if w[2] == "*" {
                    None
                } else {
                    Some(time(w[2], *reference)?)
                };
                let (from, to) = (node(w[3])?, node(w[4])?);
                let n = if kind == "contact" {
                    self.remove_contacts(start, from, to)
                } else {
                    self.remove_ranges(start, from, to)
                };
                if n == 0 {
                    return Err(format!("no such {kind} to delete"));
                }
                Ok(())
            }
            ("1" | "s" | "x" | "m" | "e" | "v" | "h" | "?" | "l" | "i", _) => {
                debug!(
                    command = w[0],
                    "ignoring ionadmin command that is not part of the contact plan"
                );
                Ok(())
            }
            _ => Err(format!("unknown command {:?}", w.join(" "))),
        }
    }

    /// Parses HDTN's JSON contact plan: `{"contacts": [{"contact", "source", "dest",
    /// "startTime", "endTime", "rateBitsPerSec" (or deprecated "rate" in Mbit/s), "owlt"}]}`,
    /// times and OWLT in seconds. Each contact also yields a range `source`→`dest` with its OWLT.
    pub fn parse_hdtn_json(text: &str, file: &str, opts: &PlanOptions) -> Result<Self, PlanError> {
        #[derive(Deserialize)]
        struct HdtnPlan {
            contacts: Vec<HdtnContact>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct HdtnContact {
            #[allow(dead_code)]
            contact: Option<u64>,
            source: u64,
            dest: u64,
            start_time: u64,
            end_time: u64,
            rate_bits_per_sec: Option<u64>,
            rate: Option<u64>,
            owlt: Option<u64>,
        }
        let line_of = |offset: usize| 1 + text[..offset.min(text.len())].matches('\n').count();
        let parsed: HdtnPlan = serde_json::from_str(text).map_err(|e| PlanError::Line {
            file: file.to_string(),
            line: e.line().max(1),
            reason: e.to_string(),
        })?;
        let mut plan = ContactPlan::with_limits(opts.max_contacts, opts.max_ranges);
        // Entry positions, for error messages: the n-th `"source"` key (a best effort).
        let positions: Vec<usize> = text.match_indices("\"source\"").map(|(i, _)| i).collect();
        for (n, c) in parsed.contacts.iter().enumerate() {
            let err = |reason: String| PlanError::Line {
                file: file.to_string(),
                line: positions.get(n).map_or(1, |&p| line_of(p)),
                reason: format!("contact #{n}: {reason}"),
            };
            let base_ms = match opts.hdtn_time_base {
                HdtnTimeBase::Relative => Some(opts.reference),
                HdtnTimeBase::UnixSeconds => None,
            };
            let time = |secs: u64| -> Result<DtnMillis, String> {
                match base_ms {
                    Some(base) => secs.checked_mul(1000).and_then(|ms| ms.checked_add(base)),
                    None => secs
                        .checked_sub(UNIX_EPOCH_TO_DTN_EPOCH_SECS)
                        .and_then(|s| s.checked_mul(1000)),
                }
                .ok_or_else(|| format!("time {secs} out of range"))
            };
            let rate_bits = match (c.rate_bits_per_sec, c.rate) {
                (Some(r), _) => r,
                (None, Some(mbps)) => mbps
                    .checked_mul(1_000_000)
                    .ok_or_else(|| err("rate out of range".into()))?,
                (None, None) => return Err(err("missing rateBitsPerSec".into())),
            };
            let start = time(c.start_time).map_err(err)?;
            let end = time(c.end_time).map_err(err)?;
            plan.add_contact(Contact {
                from: c.source,
                to: c.dest,
                start,
                end,
                rate: rate_bits / 8,
                confidence: 1.0,
            })
            .map_err(|e| err(e.to_string()))?;
            let owlt = c
                .owlt
                .unwrap_or(0)
                .checked_mul(1000)
                .ok_or_else(|| err("owlt out of range".into()))?;
            plan.add_range(Range {
                from: c.source,
                to: c.dest,
                start,
                end,
                owlt,
            })
            .map_err(|e| err(e.to_string()))?;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: DtnMillis = 784_111_200_000; // 2024-11-05T08:40:00Z

    fn opts() -> PlanOptions {
        PlanOptions::new(REF)
    }

    #[test]
    fn civil_time_conversion() {
        assert_eq!(dtn_millis_from_utc(2000, 1, 1, 0, 0, 0), Some(0));
        assert_eq!(parse_utc_time("2024/11/05-08:40:00"), Some(REF));
        assert_eq!(parse_utc_time("2000/03/01-00:00:00"), Some(60 * 86_400_000));
        assert_eq!(
            parse_utc_time("2001/01/01-00:00:01"),
            Some((366 * 86_400 + 1) * 1000)
        );
        assert_eq!(
            parse_utc_time("2100/03/01-00:00:00"),
            Some(((100 * 365 + 25 + 59) * 86_400) * 1000)
        );
        assert_eq!(parse_utc_time("1999/12/31-23:59:59"), None);
        assert_eq!(parse_utc_time("2023/02/29-00:00:00"), None);
        assert!(parse_utc_time("2024/02/29-00:00:00").is_some());
        assert_eq!(parse_utc_time("2024/13/01-00:00:00"), None);
        assert_eq!(parse_utc_time("2024/01/01-24:00:00"), None);
        assert_eq!(parse_utc_time("2024/01/01-00:00:60"), None);
        assert_eq!(parse_utc_time("2024/01/01"), None);
        assert_eq!(parse_utc_time("2024/01/01-00:00:00:00"), None);
        assert_eq!(parse_utc_time("+2024/01/01-00:00:00"), None);
    }

    #[test]
    fn ion_plan_relative_and_absolute() {
        let text = "# plan\n\n1 1 ''\na contact +0 +3600 1 2 100000\n\
                    a range +0 +3600 1 2 1\n\
                    @ 2025/01/01-00:00:00\n\
                    a contact +10 2025/01/01-01:00:00 2 3 1000 0.5\n\
                    a range 2025/01/01-00:00:00 +7200 2 3 2\n\
                    a range 2025/01/01-00:00:00 +7200 3 2 3\n";
        let p = ContactPlan::parse_ion(text, "p.rc", &opts()).unwrap();
        let cs: Vec<_> = p.contacts().cloned().collect();
        assert_eq!(cs.len(), 2);
        assert_eq!(
            (cs[0].start, cs[0].end, cs[0].rate),
            (REF, REF + 3_600_000, 100_000)
        );
        let y2025 = parse_utc_time("2025/01/01-00:00:00").unwrap();
        assert_eq!(
            (cs[1].start, cs[1].end),
            (y2025 + 10_000, y2025 + 3_600_000)
        );
        assert_eq!(cs[1].confidence, 0.5);
        // Range 1->2 holds in reverse; 2->3 and 3->2 are given separately.
        assert_eq!(p.owlt(1, 2, REF), Some(1000));
        assert_eq!(p.owlt(2, 1, REF + 10), Some(1000));
        assert_eq!(p.owlt(2, 3, y2025), Some(2000));
        assert_eq!(p.owlt(3, 2, y2025), Some(3000));
        assert_eq!(p.owlt(1, 2, REF + 3_600_000), None);
        assert_eq!(p.rate(1, 2, REF + 5), Some(100_000));
        assert_eq!(p.rate(2, 1, REF + 5), None);
    }

    #[test]
    fn ion_deletions() {
        let text = "a contact +0 +10 1 2 10\na contact +20 +30 1 2 10\na contact +0 +10 1 3 10\n\
                    d contact +0 1 2\nd contact * 1 3\na range +0 +10 1 2 1\nd range * 1 2\n";
        let p = ContactPlan::parse_ion(text, "p", &opts()).unwrap();
        let keys: Vec<_> = p.contacts().map(|c| (c.to, c.start)).collect();
        assert_eq!(keys, vec![(2, REF + 20_000)]);
        assert_eq!(p.ranges().count(), 0);
    }

    #[test]
    fn ion_errors_name_file_and_line() {
        let cases = [
            ("a contact +0 +10 1 2\n", 1, "wrong number of arguments"),
            ("\n# c\na contact +0 +10 1 x 5\n", 3, "bad node number"),
            ("a contact +10 +0 1 2 5\n", 1, "end time is not after start"),
            (
                "a contact +0 +10 1 2 5\na contact +5 +15 1 2 5\n",
                2,
                "overlaps contact",
            ),
            (
                "a range +0 +10 1 2 1\na range +9 +15 1 2 1\n",
                2,
                "overlaps range",
            ),
            ("a contact 2024/02/30-00:00:00 +10 1 2 5\n", 1, "bad time"),
            ("a contact +0 +10 1 2 5 1.5\n", 1, "confidence"),
            ("b foo\n", 1, "unknown command"),
            ("d contact +0 1 2\n", 1, "no such contact"),
            ("@ +5\n", 1, "bad reference time"),
        ];
        for (text, line, what) in cases {
            let e = ContactPlan::parse_ion(text, "plan.rc", &opts()).unwrap_err();
            let s = e.to_string();
            assert!(s.starts_with(&format!("plan.rc:{line}: ")), "{s}");
            assert!(s.contains(what), "{s} should contain {what}");
        }
    }

    #[test]
    fn plan_limits() {
        let mut o = opts();
        o.max_contacts = 1;
        let e = ContactPlan::parse_ion("a contact +0 +1 1 2 1\na contact +0 +1 1 3 1\n", "f", &o)
            .unwrap_err();
        assert!(e.to_string().starts_with("f:2: plan limit"), "{e}");
        let long = format!("# {}\n", "x".repeat(MAX_LINE_LEN));
        assert!(ContactPlan::parse_ion(&long, "f", &opts()).is_err());
    }

    #[test]
    fn hdtn_json() {
        let text = r#"{
  "contacts": [
    {"contact": 0, "source": 10, "dest": 20, "startTime": 0, "endTime": 100,
     "rateBitsPerSec": 8000, "owlt": 2},
    {"contact": 1, "source": 20, "dest": 30, "startTime": 50, "endTime": 150,
     "rate": 1, "owlt": 0}
  ]
}"#;
        let p = ContactPlan::parse_hdtn_json(text, "cp.json", &opts()).unwrap();
        let cs: Vec<_> = p.contacts().cloned().collect();
        assert_eq!(
            (cs[0].from, cs[0].to, cs[0].start, cs[0].end, cs[0].rate),
            (10, 20, REF, REF + 100_000, 1000)
        );
        assert_eq!(cs[1].rate, 125_000);
        assert_eq!(p.owlt(10, 20, REF), Some(2000));
        let mut o = opts();
        o.hdtn_time_base = HdtnTimeBase::UnixSeconds;
        let unix = r#"{"contacts":[{"source":1,"dest":2,"startTime":946684800,"endTime":946684810,"rateBitsPerSec":8}]}"#;
        let p = ContactPlan::parse_hdtn_json(unix, "u.json", &o).unwrap();
        assert_eq!(p.contacts().next().unwrap().start, 0);
        let bad = "{\"contacts\": [\n {\"source\": 1, \"dest\": 2, \"startTime\": 5, \"endTime\": 1, \"rateBitsPerSec\": 8}\n]}";
        let e = ContactPlan::parse_hdtn_json(bad, "b.json", &opts()).unwrap_err();
        assert!(
            e.to_string().starts_with("b.json:2: contact #0: end time"),
            "{e}"
        );
        let e = ContactPlan::parse_hdtn_json(
            "{\"contacts\": [\n{\"source\": \"x\"}]}",
            "c.json",
            &opts(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("c.json:2: "), "{e}");
    }

    #[test]
    fn next_contact_after_and_has_contacts() {
        let p = ContactPlan::parse_ion(
            "a contact +10 +20 1 2 5\na contact +40 +50 1 2 5\na contact +0 +5 2 1 5\n",
            "p",
            &opts(),
        )
        .unwrap();
        let r = opts().reference;
        assert_eq!(p.next_contact_after(1, 2, r).unwrap().start, r + 10_000);
        assert_eq!(
            p.next_contact_after(1, 2, r + 10_000).unwrap().start,
            r + 40_000
        );
        assert!(p.next_contact_after(1, 2, r + 40_000).is_none());
        assert!(p.next_contact_after(1, 3, r).is_none());
        assert!(p.has_contacts(1, 2) && p.has_contacts(2, 1));
        assert!(!p.has_contacts(1, 3) && !p.has_contacts(3, 1));
    }

    #[test]
    fn format_utc_time_inverts_parse() {
        assert_eq!(format_utc_time(0), "2000/01/01-00:00:00");
        for s in [
            "2000/02/29-23:59:59",
            "2026/12/01-02:03:04",
            "2100/03/01-00:00:00",
            "2024/12/31-12:00:00",
        ] {
            let t = parse_utc_time(s).unwrap();
            assert_eq!(format_utc_time(t), s);
            assert_eq!(format_utc_time(t + 999), s);
        }
    }

    #[test]
    fn load_detects_format_and_reports_io_errors() {
        let dir = std::env::temp_dir().join(format!("cgr-plan-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ion = dir.join("plan.rc");
        std::fs::write(&ion, "a contact +0 +10 1 2 100\n").unwrap();
        let json = dir.join("plan.json");
        let text = r#"{"contacts":[{"source":1,"dest":2,"startTime":0,"endTime":10,"rateBitsPerSec":800}]}"#;
        std::fs::write(&json, text).unwrap();
        let bad = dir.join("bad.rc");
        std::fs::write(&bad, "# ok\na contact +0\n").unwrap();
        let a = ContactPlan::load(&ion, &opts()).unwrap();
        let b = ContactPlan::load(&json, &opts()).unwrap();
        assert_eq!(a.contacts().next(), b.contacts().next());
        let e = ContactPlan::load(&bad, &opts()).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2: ", bad.display())), "{e}");
        let missing = dir.join("missing.rc");
        assert!(matches!(
            ContactPlan::load(&missing, &opts()),
            Err(PlanError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
