//! Helpers shared by the agent command-line tools (`bpsend`, `bprecv`, `bpstats`, `bping`):
//! the `--node` default and durations like `30s`. Lifetimes are RFC 9171 §4.2.2 milliseconds.

use std::time::Duration;

/// The agent address used when `--node` is not given and `DTN_NODE` is unset.
pub const DEFAULT_NODE: &str = "127.0.0.1:4550";

/// The node address: `DTN_NODE` if set and not empty, else [`DEFAULT_NODE`].
pub fn default_node() -> String {
    match std::env::var("DTN_NODE") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => DEFAULT_NODE.to_string(),
    }
}

/// Parse a duration: an integer followed by `ms`, `s`, `m`, `h` or `d` (`1500ms`, `30s`, `5m`,
/// `1h`, `2d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit: ms, s, m, h or d"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("duration {s:?} must start with a number"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?}: number too large"))?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "duration {s:?}: unknown unit {unit:?} (ms, s, m, h, d)"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per)
        .ok_or_else(|| format!("duration {s:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        for bad in ["", "10", "s", "10x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
