//! Link profiles: the parameters of an emulated link, a builder, and a compact text form.
//!
//! The text form is a comma-separated list of `key=value` fields, e.g.
//! `delay=250ms,jitter=10ms,loss=0.02,rate=1000000`. Keys:
//!
//! | key | value | meaning |
//! | --- | --- | --- |
//! | `delay` | duration (`250ms`, `1.5s`, `20us`, `300ns`, `2m`, `1h`, `0`) | one-way propagation delay |
//! | `jitter` | duration | each datagram's delay is uniform in `delay ± jitter` (floored at 0) |
//! | `reorder` | `true`/`false` | whether jitter may reorder datagrams (default `false`) |
//! | `loss` | probability (`0.02` or `2%`) | Bernoulli loss |
//! | `ge` | `p/r` or `p/r/loss_good/loss_bad` | Gilbert–Elliott burst loss (defaults 0 and 1) |
//! | `duplicate` (or `dup`) | probability | chance that a datagram is delivered twice |
//! | `rate` | bytes per second, optional `k`/`M`/`G` (×1000) suffix | serialisation rate |
//! | `queue` | bytes, same suffixes | transmit queue limit (tail drop beyond) |
//! | `in_flight` | count | limit on datagrams held by the emulator |
//! | `down` | `start-end` offsets, `;`-separated (`10s-15s;30s-40s`) | outages |
//! | `period` | duration | repeat the outage list with this period |
//!
//! Parsing errors name the offending field. `Display` writes the same form, so
//! `profile.to_string().parse()` gives the profile back.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default transmit queue limit in bytes (applies only with a rate limit).
pub const DEFAULT_QUEUE_LIMIT_BYTES: usize = 4 * 1024 * 1024;
/// Default limit on datagrams held in flight by one emulator.
pub const DEFAULT_IN_FLIGHT_LIMIT: usize = 100_000;

/// Parameters of one emulated one-way link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkProfile {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Half-width of the uniform delay variation around `delay`.
    pub jitter: Duration,
    /// Whether jitter may make a datagram overtake an earlier one.
    pub reorder: bool,
    /// Bernoulli loss probability per datagram.
    pub loss: f64,
    /// Optional Gilbert–Elliott burst loss, applied in addition to `loss`.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Probability that a delivered datagram is delivered a second time.
    pub duplicate: f64,
    /// Serialisation rate in bytes per second (`None`: unlimited).
    pub rate_bytes_per_sec: Option<u64>,
    /// Limit of bytes waiting for serialisation; a datagram that would exceed it is dropped.
    pub queue_limit_bytes: usize,
    /// Limit on datagrams held by the emulator (queued or propagating); beyond it, dropped.
    pub in_flight_limit: usize,
    /// Optional outage schedule.
    pub schedule: Option<Schedule>,
}

impl Default for LinkProfile {
    fn default() -> Self {
        LinkProfile {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: 0.0,
            gilbert_elliott: None,
            duplicate: 0.0,
            rate_bytes_per_sec: None,
            queue_limit_bytes: DEFAULT_QUEUE_LIMIT_BYTES,
            in_flight_limit: DEFAULT_IN_FLIGHT_LIMIT,
            schedule: None,
        }
    }
}

/// Gilbert–Elliott two-state burst-loss model, evaluated once per datagram.
///
/// In state Good a datagram is lost with probability `loss_good`, in Bad with `loss_bad`; after
/// each datagram the state moves Good→Bad with probability `p` and Bad→Good with `r`. The
/// stationary probability of Bad is `p / (p + r)`, the mean loss rate
/// `πG·loss_good + πB·loss_bad`, and with `loss_good = 0, loss_bad = 1` the mean loss burst is
/// `1 / r` datagrams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving Good → Bad after a datagram.
    pub p: f64,
    /// Probability of moving Bad → Good after a datagram.
    pub r: f64,
    /// Loss probability in state Good.
    pub loss_good: f64,
    /// Loss probability in state Bad.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Stationary probability of the Bad state, `p / (p + r)` (0 if both are 0).
    pub fn stationary_bad(&self) -> f64 {
        if self.p + self.r == 0.0 {
            0.0
        } else {
            self.p / (self.p + self.r)
        }
    }

    /// Mean loss rate in the stationary regime: `πG·loss_good + πB·loss_bad`.
    pub fn mean_loss(&self) -> f64 {
        let pb = self.stationary_bad();
        (1.0 - pb) * self.loss_good + pb * self.loss_bad
    }
}

/// One outage, as offsets from the emulator's start: the link is down in `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    /// Offset at which the link goes down.
    pub start: Duration,
    /// Offset at which it comes back up.
    pub end: Duration,
}

/// An up/down schedule: sorted, non-overlapping outages, optionally repeating with `period`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The outages, sorted by start, non-overlapping, each `start < end`.
    pub outages: Vec<Outage>,
    /// If set, the outage list repeats every `period` (all outages must end within it).
    pub period: Option<Duration>,
}

impl Schedule {
    /// Whether the link is up at `offset` from the emulator's start.
    pub fn is_up(&self, offset: Duration) -> bool {
        let t = match self.period {
            Some(p) if !p.is_zero() => {
                Duration::from_nanos((offset.as_nanos() % p.as_nanos()) as u64)
            }
            _ => offset,
        };
        !self.outages.iter().any(|o| o.start <= t && t < o.end)
    }

    /// Check the schedule's invariants, naming the problem.
    pub fn validate(&self) -> Result<(), String> {
        let mut prev_end = Duration::ZERO;
        for (i, o) in self.outages.iter().enumerate() {
            if o.start >= o.end {
                return Err(format!("outage {i} does not end after it starts"));
            }
            if i > 0 && o.start < prev_end {
                return Err(format!("outage {i} overlaps or precedes the previous one"));
            }
            prev_end = o.end;
        }
        if let Some(p) = self.period {
            if p.is_zero() {
                return Err("period must be positive".into());
            }
            if prev_end > p {
                return Err("outages must end within the period".into());
            }
        }
        Ok(())
    }
}

/// A link profile that failed validation or parsing; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The text form contains a key this parser does not know.
    #[error("unknown link profile field `{0}`")]
    UnknownField(String),
    /// A field is given twice.
    #[error("link profile field `{0}` given twice")]
    Duplicate(String),
    /// A field has a value that cannot be parsed or is out of range.
    #[error("link profile field `{field}`: invalid value `{value}`: {reason}")]
    Invalid {
        /// The field's key.
        field: String,
        /// The value as given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
}

fn invalid(field: &str, value: impl fmt::Display, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        field: field.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn check_probability(field: &str, v: f64) -> Result<(), ProfileError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, v, "probability must be within [0, 1]"))
    }
}

impl LinkProfile {
    /// Start building a profile from the defaults (a perfect link).
    pub fn builder() -> LinkProfileBuilder {
        LinkProfileBuilder {
            profile: LinkProfile::default(),
        }
    }

    /// Whether only what a byte stream can carry is set: delay, rate and queue (no loss, burst
    /// loss, duplication, jitter or outages, which need datagrams).
    pub fn is_stream_only(&self) -> bool {
        self.loss == 0.0
            && self.gilbert_elliott.is_none()
            && self.duplicate == 0.0
            && self.jitter.is_zero()
            && self.schedule.is_none()
    }

    /// Check every field's range; the error names the field.
    pub fn validate(&self) -> Result<(), ProfileError> {
        check_probability("loss", self.loss)?;
        check_probability("duplicate", self.duplicate)?;
        if let Some(ge) = &self.gilbert_elliott {
            check_probability("ge", ge.p)?;
            check_probability("ge", ge.r)?;
            check_probability("ge", ge.loss_good)?;
            check_probability("ge", ge.loss_bad)?;
        }
        if self.rate_bytes_per_sec == Some(0) {
            return Err(invalid("rate", 0, "rate must be positive"));
        }
        if self.in_flight_limit == 0 {
            return Err(invalid("in_flight", 0, "limit must be positive"));
        }
        if let Some(s) = &self.schedule {
            s.validate()
                .map_err(|reason| invalid("down", format_outages(&s.outages), reason))?;
        }
        Ok(())
    }
}

/// Builder for [`LinkProfile`]; `build` validates.
#[derive(Clone, Debug)]
pub struct LinkProfileBuilder {
    profile: LinkProfile,
}

impl LinkProfileBuilder {
    /// One-way propagation delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.profile.delay = d;
        self
    }
    /// Half-width of the delay variation.
    pub fn jitter(mut self, d: Duration) -> Self {
        self.profile.jitter = d;
        self
    }
    /// Whether jitter may reorder datagrams.
    pub fn reorder(mut self, reorder: bool) -> Self {
        self.profile.reorder = reorder;
        self
    }
    /// Bernoulli loss probability.
    pub fn loss(mut self, p: f64) -> Self {
        self.profile.loss = p;
        self
    }
    /// Gilbert–Elliott burst loss.
    pub fn gilbert_elliott(mut self, ge: GilbertElliott) -> Self {
        self.profile.gilbert_elliott = Some(ge);
        self
    }
    /// Duplication probability.
    pub fn duplicate(mut self, p: f64) -> Self {
        self.profile.duplicate = p;
        self
    }
    /// Serialisation rate in bytes per second.
    pub fn rate(mut self, bytes_per_sec: u64) -> Self {
        self.profile.rate_bytes_per_sec = Some(bytes_per_sec);
        self
    }
    /// Transmit queue limit in bytes.
    pub fn queue_limit(mut self, bytes: usize) -> Self {
        self.profile.queue_limit_bytes = bytes;
        self
    }
    /// Limit on datagrams held in flight.
    pub fn in_flight_limit(mut self, n: usize) -> Self {
        self.profile.in_flight_limit = n;
        self
    }
    /// Outage schedule.
    pub fn schedule(mut self, s: Schedule) -> Self {
        self.profile.schedule = Some(s);
        self
    }
    /// Validate and return the profile.
    pub fn build(self) -> Result<LinkProfile, ProfileError> {
        self.profile.validate()?;
        Ok(self.profile)
    }
}

/// Parse a duration such as `250ms`, `1.5s`, `20us`, `300ns`, `2m`, `1h` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| "missing unit (ns, us, ms, s, m, h)".to_string())?;
    let (num, unit) = s.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => return Err(format!("unknown unit `{unit}`")),
    };
    if num.is_empty() {
        return Err("missing number".into());
    }
    // Integers are converted exactly; fractions go through f64.
    if let Ok(n) = num.parse::<u64>() {
        let nanos = (n as u128) * (nanos_per_unit as u128);
        return u64::try_from(nanos)
            .map(Duration::from_nanos)
            .map_err(|_| "too large".to_string());
    }
    let v: f64 = num.parse().map_err(|_| format!("bad number `{num}`"))?;
    let nanos = (v * nanos_per_unit).round();
    if !nanos.is_finite() || nanos < 0.0 || nanos > u64::MAX as f64 {
        return Err("out of range".into());
    }
    Ok(Duration::from_nanos(nanos as u64))
}

fn format_duration(d: Duration) -> String {
    let n = d.as_nanos();
    // The coarsest unit that represents `d` exactly.
    let (sub_s, sub_ms, sub_us) = (n % 1_000_000_000, n % 1_000_000, n % 1_000);
    if n == 0 {
        "0".into()
    } else if sub_s == 0 {
        format!("{}s", n / 1_000_000_000)
    } else if sub_ms == 0 {
        format!("{}ms", n / 1_000_000)
    } else if sub_us == 0 {
        format!("{}us", n / 1_000)
    } else {
        format!("{n}ns")
    }
}

fn format_outages(o: &[Outage]) -> String {
    o.iter()
        .map(|o| format!("{}-{}", format_duration(o.start), format_duration(o.end)))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_probability(field: &str, v: &str) -> Result<f64, ProfileError> {
    let p = if let Some(pct) = v.strip_suffix('%') {
        pct.trim()
            .parse::<f64>()
            .map(|x| x / 100.0)
            .map_err(|_| invalid(field, v, "not a number"))?
    } else {
        v.parse::<f64>()
            .map_err(|_| invalid(field, v, "not a number"))?
    };
    check_probability(field, p)
        .map_err(|_| invalid(field, v, "probability must be within [0, 1]"))?;
    Ok(p)
}

fn parse_scaled(field: &str, v: &str) -> Result<u64, ProfileError> {
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k')) | Some((i, 'K')) => (&v[..i], 1_000u64),
        Some((i, 'M')) => (&v[..i], 1_000_000),
        Some((i, 'G')) => (&v[..i], 1_000_000_000),
        _ => (v, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| invalid(field, v, "expected an integer with optional k/M/G suffix"))
}

impl FromStr for LinkProfile {
    type Err = ProfileError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = LinkProfile::default();
        let mut seen: Vec<&str> = Vec::new();
        let mut outages: Option<Vec<Outage>> = None;
        let mut period: Option<Duration> = None;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| invalid(item, "", "expected key=value"))?;
            let canonical = match key {
                "dup" => "duplicate",
                k => k,
            };
            if seen.contains(&canonical) {
                return Err(ProfileError::Duplicate(canonical.to_owned()));
            }
            seen.push(canonical);
            let dur = |v: &str| parse_duration(v).map_err(|r| invalid(key, v, r));
            match canonical {
                "delay" => p.delay = dur(value)?,
                "jitter" => p.jitter = dur(value)?,
                "reorder" => {
                    p.reorder = value
                        .parse()
                        .map_err(|_| invalid(key, value, "expected true or false"))?
                }
                "loss" => p.loss = parse_probability(key, value)?,
                "duplicate" => p.duplicate = parse_probability(key, value)?,
                "ge" => {
                    let parts: Vec<&str> = value.split('/').map(str::trim).collect();
                    if parts.len() != 2 && parts.len() != 4 {
                        return Err(invalid(
                            key,
                            value,
                            "expected p/r or p/r/loss_good/loss_bad",
                        ));
                    }
                    let f = |i: usize, d: f64| -> Result<f64, ProfileError> {
                        match parts.get(i) {
                            Some(x) => parse_probability(key, x),
                            None => Ok(d),
                        }
                    };
                    p.gilbert_elliott = Some(GilbertElliott {
                        p: f(0, 0.0)?,
                        r: f(1, 0.0)?,
                        loss_good: f(2, 0.0)?,
                        loss_bad: f(3, 1.0)?,
                    });
                }
                "rate" => {
                    let r = parse_scaled(key, value)?;
                    if r == 0 {
                        return Err(invalid(key, value, "rate must be positive"));
                    }
                    p.rate_bytes_per_sec = Some(r);
                }
                "queue" => {
                    p.queue_limit_bytes = usize::try_from(parse_scaled(key, value)?)
                        .map_err(|_| invalid(key, value, "too large"))?
                }
                "in_flight" => {
                    p.in_flight_limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| invalid(key, value, "expected a positive integer"))?
                }
                "down" => {
                    let mut list = Vec::new();
                    for w in value.split(';').map(str::trim).filter(|w| !w.is_empty()) {
                        let (a, b) = w
                            .split_once('-')
                            .ok_or_else(|| invalid(key, value, "expected start-end"))?;
                        list.push(Outage {
                            start: dur(a)?,
                            end: dur(b)?,
                        });
                    }
                    outages = Some(list);
                }
                "period" => {
                    let d = dur(value)?;
                    if d.is_zero() {
                        return Err(invalid(key, value, "period must be positive"));
                    }
                    period = Some(d);
                }
                _ => return Err(ProfileError::UnknownField(key.to_owned())),
            }
        }
        match (outages, period) {
            (Some(outages), period) => {
                let s = Schedule { outages, period };
                s.validate()
                    .map_err(|r| invalid("down", format_outages(&s.outages), r))?;
                p.schedule = Some(s);
            }
            (None, Some(d)) => {
                return Err(invalid(
                    "period",
                    format_duration(d),
                    "period without `down`",
                ))
            }
            (None, None) => {}
        }
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for LinkProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={},jitter={},reorder={},loss={},duplicate={},queue={},in_flight={}",
            format_duration(self.delay),
            format_duration(self.jitter),
            self.reorder,
            self.loss,
            self.duplicate,
            self.queue_limit_bytes,
            self.in_flight_limit
        )?;
        if let Some(ge) = &self.gilbert_elliott {
            write!(f, ",ge={}/{}/{}/{}", ge.p, ge.r, ge.loss_good, ge.loss_bad)?;
        }
        if let Some(r) = self.rate_bytes_per_sec {
            write!(f, ",rate={r}")?;
        }
        if let Some(s) = &self.schedule {
            write!(f, ",down={}", format_outages(&s.outages))?;
            if let Some(p) = s.period {
                write!(f, ",period={}", format_duration(p))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stream_only_profiles() {
        for ok in ["", "delay=300ms", "delay=1s,rate=2000000,queue=1000000"] {
            let p: LinkProfile = ok.parse().unwrap();
            assert!(p.is_stream_only(), "{ok:?}");
        }
        for datagram in [
            "loss=1%",
            "jitter=5ms",
            "duplicate=1%",
            "ge=0.01/0.5",
            "down=1s-2s",
        ] {
            let p: LinkProfile = datagram.parse().unwrap();
            assert!(!p.is_stream_only(), "{datagram:?}");
        }
    }

    #[test]
    fn parses_example() {
        let p: LinkProfile = "delay=250ms,jitter=10ms,loss=0.02,rate=1000000"
            .parse()
            .unwrap();
        assert_eq!(p.delay, Duration::from_millis(250));
        assert_eq!(p.jitter, Duration::from_millis(10));
        assert_eq!(p.loss, 0.02);
        assert_eq!(p.rate_bytes_per_sec, Some(1_000_000));
        assert!(!p.reorder);
    }

    #[test]
    fn parses_all_fields() {
        let p: LinkProfile =
            "delay=1.5s,jitter=20us,reorder=true,loss=2%,ge=0.01/0.3,dup=0.001,rate=2M,queue=64k,in_flight=10,down=10s-15s;30s-40s,period=1m"
                .parse()
                .unwrap();
        assert_eq!(p.delay, Duration::from_millis(1500));
        assert_eq!(p.jitter, Duration::from_micros(20));
        assert!(p.reorder);
        assert!((p.loss - 0.02).abs() < 1e-12);
        let ge = p.gilbert_elliott.unwrap();
        assert_eq!(
            (ge.p, ge.r, ge.loss_good, ge.loss_bad),
            (0.01, 0.3, 0.0, 1.0)
        );
        assert_eq!(p.duplicate, 0.001);
        assert_eq!(p.rate_bytes_per_sec, Some(2_000_000));
        assert_eq!(p.queue_limit_bytes, 64_000);
        assert_eq!(p.in_flight_limit, 10);
        let s = p.schedule.unwrap();
        assert_eq!(s.outages.len(), 2);
        assert_eq!(s.period, Some(Duration::from_secs(60)));
        assert!(s.is_up(Duration::from_secs(9)));
        assert!(!s.is_up(Duration::from_secs(10)));
        assert!(s.is_up(Duration::from_secs(15)));
        assert!(!s.is_up(Duration::from_secs(72)));
        assert!(s.is_up(Duration::from_secs(76)));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("delay=250", "delay"),
            ("delay=5parsecs", "delay"),
            ("loss=1.5", "loss"),
            ("loss=abc", "loss"),
            ("rate=0", "rate"),
            ("rate=fast", "rate"),
            ("ge=0.1", "ge"),
            ("reorder=maybe", "reorder"),
            ("down=20s-10s", "down"),
            ("period=10s", "period"),
            ("in_flight=0", "in_flight"),
        ];
        for (text, field) in cases {
            let err = text.parse::<LinkProfile>().unwrap_err();
            match &err {
                ProfileError::Invalid { field: f, .. } => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: unexpected {other:?}"),
            }
            assert!(err.to_string().contains(field), "{err}");
        }
        assert_eq!(
            "speed=1".parse::<LinkProfile>().unwrap_err(),
            ProfileError::UnknownField("speed".into())
        );
        assert_eq!(
            "loss=0.1,loss=0.2".parse::<LinkProfile>().unwrap_err(),
            ProfileError::Duplicate("loss".into())
        );
    }

    #[test]
    fn builder_validates() {
        assert!(LinkProfile::builder().loss(0.1).rate(100).build().is_ok());
        assert!(LinkProfile::builder().loss(-0.1).build().is_err());
        assert!(LinkProfile::builder().duplicate(f64::NAN).build().is_err());
        assert!(LinkProfile::builder().rate(0).build().is_err());
        let ge = GilbertElliott {
            p: 0.1,
            r: 0.5,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        assert!((ge.mean_loss() - 0.1 / 0.6).abs() < 1e-12);
    }

    fn arb_profile() -> impl Strategy<Value = LinkProfile> {
        (
            0u64..10_000_000_000,
            0u64..1_000_000_000,
            any::<bool>(),
            0.0f64..=1.0,
            proptest::option::of((0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0)),
            0.0f64..=1.0,
            proptest::option::of(1u64..u64::MAX),
            any::<u32>(),
            1usize..1_000_000,
            proptest::option::of((1u64..1_000_000, 1u64..1_000_000, any::<bool>())),
        )
            .prop_map(
                |(d, j, reorder, loss, ge, dup, rate, q, inf, sched)| LinkProfile {
                    delay: Duration::from_nanos(d),
                    jitter: Duration::from_nanos(j),
                    reorder,
                    loss,
                    gilbert_elliott: ge.map(|(p, r, lg, lb)| GilbertElliott {
                        p,
                        r,
                        loss_good: lg,
                        loss_bad: lb,
                    }),
                    duplicate: dup,
                    rate_bytes_per_sec: rate,
                    queue_limit_bytes: q as usize,
                    in_flight_limit: inf,
                    schedule: sched.map(|(a, len, periodic)| Schedule {
                        outages: vec![Outage {
                            start: Duration::from_millis(a),
                            end: Duration::from_millis(a + len),
                        }],
                        period: periodic.then(|| Duration::from_millis(a + len + 1)),
                    }),
                },
            )
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(p in arb_profile()) {
            let text = p.to_string();
            let back: LinkProfile = text.parse().unwrap();
            prop_assert_eq!(back, p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<LinkProfile>();
        }

        #[test]
        fn parse_structured_noise_never_panics(
            s in "((delay|jitter|loss|ge|rate|queue|down|period|dup|reorder|in_flight)=[0-9a-zA-Z.%/;-]{0,12},?){0,6}"
        ) {
            let _ = s.parse::<LinkProfile>();
        }
    }
}
