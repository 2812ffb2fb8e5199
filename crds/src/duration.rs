//! Durations as users write them (`15s`, `1m30s`, `500ms`).
//!
//! The accepted syntax is the subset of Go's `time.ParseDuration` with the units `ms`, `s`, `m`
//! and `h`, so that the API server's CEL `duration()` function accepts every value the schema
//! pattern lets through and cross-field rules (timeout < interval) can compare them.
//!
//! Every duration is at most [`MAX_DURATION`] (24h): kubeprof's durations are scrape intervals,
//! timeouts and sampling windows, for which a day is already generous, and the bound keeps
//! timer arithmetic (`now + interval`) far from overflowing whatever a file or CR says.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The schema pattern of a [`Duration`].
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration accepted: 24 hours.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The CEL rule of every duration field: [`MAX_DURATION`], checked by the API server.
pub const MAX_DURATION_RULE: &str = "duration(self) <= duration('24h')";

/// A non-negative duration, at most 24h, written as `15s`, `1m30s`, `500ms` or `2h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (write it like 15s, 1m30s or 500ms)")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// The standard-library duration.
    pub const fn std(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseDurationError {
            input: input.to_owned(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        let mut total_nanos: u128 = 0;
        let mut rest = input;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (number, tail) = rest.split_at(num_len);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit (use ms, s, m or h)")),
            };
            let (whole, frac) = match number.split_once('.') {
                Some((w, f)) if !w.is_empty() && !f.is_empty() => (w, f),
                Some(_) => return Err(err("malformed number")),
                None => (number, ""),
            };
            let whole: u128 = whole.parse().map_err(|_| err("number too large"))?;
            let mut nanos = whole
                .checked_mul(unit_nanos)
                .ok_or_else(|| err("too large"))?;
            if !frac.is_empty() {
                // Fractions beyond nanosecond precision are truncated, as Go does.
                let digits = frac.len().min(18) as u32;
                let frac_val: u128 = frac[..digits as usize]
                    .parse()
                    .map_err(|_| err("malformed number"))?;
                nanos += frac_val * unit_nanos / 10u128.pow(digits);
            }
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| err("too large"))?;
            rest = tail;
        }
        if total_nanos > MAX_DURATION.as_nanos() {
            return Err(err("must be at most 24h"));
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        Ok(Self(std::time::Duration::new(
            secs,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    /// Canonical form: `1h2m3s`, `1m30s`, `500ms`, `1.5s`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return f.write_str("0s");
        }
        if total_ms < 1000 {
            return write!(f, "{total_ms}ms");
        }
        let (h, rem) = (total_ms / 3_600_000, total_ms % 3_600_000);
        let (m, rem) = (rem / 60_000, rem % 60_000);
        let (s, ms) = (rem / 1000, rem % 1000);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        match (s, ms) {
            (0, 0) => Ok(()),
            (s, 0) => write!(f, "{s}s"),
            (s, ms) => {
                let frac = format!("{ms:03}");
                write!(f, "{s}.{}s", frac.trim_end_matches('0'))
            }
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": crate::limits::MAX_DURATION_LENGTH,
            // The parser's bound, on the server: one `duration()` of a 32-character string.
            "x-kubernetes-validations": [{
                "rule": MAX_DURATION_RULE,
                "message": "must be at most 24h",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("15s", 15_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("2h", 7_200_000),
            ("1.5s", 1_500),
            ("1h0m0s", 3_600_000),
            ("0s", 0),
        ];
        for (input, ms) in cases {
            let d: Duration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d.0.as_millis(), ms, "{input}");
        }
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for bad in [
            "", "15", "s", "1d", "-5s", "1.s", ".5s", "5 s", "15sec", "1m-3s",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} parsed");
            assert!(!pattern.is_match(bad), "{bad:?} matches the schema pattern");
        }
        for good in ["15s", "1m30s", "1.5h", "100ms"] {
            assert!(pattern.is_match(good), "{good}");
            assert!(good.parse::<Duration>().is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_more_than_a_day() {
        // Once accepted, and then every job panicked adding it to an Instant.
        for long in ["9223372036854775813s", "25h", "24h0.001s", "1441m"] {
            let err = long.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains("24h"), "{long}: {err}");
        }
        assert_eq!("24h".parse::<Duration>().unwrap().std(), MAX_DURATION);
    }

    #[test]
    fn display_round_trips() {
        for input in ["15s", "1m30s", "500ms", "2h", "1.5s", "1h2m3s", "0s"] {
            let d: Duration = input.parse().unwrap();
            assert_eq!(d.to_string(), input);
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }

    #[test]
    fn error_names_the_input_and_the_syntax() {
        let err = "15sec".parse::<Duration>().unwrap_err().to_string();
        assert!(err.contains("\"15sec\"") && err.contains("15s"), "{err}");
    }
}
