//! Scalar value types of route files: durations, percentages, byte sizes,
//! the shadow thread's CPU priority.
//!
//! Each accepts the spelling a person writes (`2s`, `5%`, `1MiB`) and the
//! plain number a generator writes, and rejects anything else at parse time.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::server::ShadowNice;

/// A duration written as `250ms`, `2s`, `5m` (or a number of seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DurationSpec(pub Duration);

/// A percentage written as `5`, `5%` or `0.25%`; kept as a fraction 0..=1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percent(pub f64);

/// A size written as `1MiB`, `64KiB`, `10MB`, `512` (bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub u64);

impl Percent {
    /// The share in basis points of a percent (1/10,000), the resolution of splits.
    pub fn basis_points(self) -> u32 {
        (self.0 * 10_000.0).round().clamp(0.0, 10_000.0) as u32
    }
}

fn parse_percent(text: &str) -> Result<Percent, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage (write e.g. `5%` or `0.5%`)"))?;
    if !(0.0..=100.0).contains(&value) || value.is_nan() {
        return Err(format!("percentage `{text}` is outside 0%..100%"));
    }
    Ok(Percent(value / 100.0))
}

fn parse_duration(text: &str) -> Result<DurationSpec, String> {
    humantime::parse_duration(text.trim())
        .map(DurationSpec)
        .map_err(|_| format!("`{text}` is not a duration (write e.g. `250ms`, `2s`, `5m`)"))
}

fn parse_byte_size(text: &str) -> Result<ByteSize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (write e.g. `64KiB`, `1MiB`)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    Ok(ByteSize((number * multiplier as f64) as u64))
}

/// One visitor for the three types: each accepts a string or a number.
struct ScalarVisitor<T> {
    expecting: &'static str,
    from_str: fn(&str) -> Result<T, String>,
    from_f64: fn(f64) -> Result<T, String>,
}

impl<'de, T> Visitor<'de> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.from_str)(v).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.from_f64)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.from_f64)(v as f64).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.from_f64)(v as f64).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            expecting: "a percentage such as `5%`",
            from_str: parse_percent,
            from_f64: |v| parse_percent(&v.to_string()),
        })
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            expecting: "a duration such as `2s`",
            from_str: parse_duration,
            from_f64: |v| {
                Duration::try_from_secs_f64(v)
                    .map(DurationSpec)
                    .map_err(|_| format!("`{v}` is not a duration in seconds"))
            },
        })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            expecting: "a size such as `1MiB`",
            from_str: parse_byte_size,
            from_f64: |v| {
                if v >= 0.0 {
                    Ok(ByteSize(v as u64))
                } else {
                    Err(format!("size `{v}` is negative"))
                }
            },
        })
    }
}

/// `idle`, or a nice value from 0 to 19.
fn parse_nice(text: &str) -> Result<ShadowNice, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("idle") {
        return Ok(ShadowNice::Idle);
    }
    let problem = match text.parse::<i64>() {
        Ok(level @ 0..=19) => return Ok(ShadowNice::Level(level as u8)),
        Ok(_) => "is out of range",
        Err(_) => "is not a priority",
    };
    Err(format!(
        "`nice: {text}` {problem}; use `idle`, or 0 (as the client path) to 19 (lowest)"
    ))
}

impl<'de> Deserialize<'de> for ShadowNice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            expecting: "`idle` or a nice value from 0 to 19",
            from_str: parse_nice,
            from_f64: |v| parse_nice(&v.to_string()),
        })
    }
}

// === JSON Schema ===
//
// Hand-written because the Rust types (a `Duration`, an `f64`, a `u64`) say
// nothing of the spellings above. Each is a number or a string matching a
// pattern; the patterns follow the parsers, and a test below checks that they
// agree on a list of spellings. They are a little stricter than the parsers
// (no exponents, no `5%%`) so an editor never suggests an odd spelling.

/// `250ms`, `1.5s`, `1h 30m`: numbers each followed by a humantime unit; or `0`.
pub const DURATION_PATTERN: &str = r"^\s*(0|([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+)$";

/// `5`, `5%`, `0.25%`, `100%`: a number from 0 to 100, `%` optional.
pub const PERCENT_PATTERN: &str = r"^\s*\+?0*(100(\.0*)?|[0-9]{1,2}(\.[0-9]*)?|\.[0-9]+)\s*%?\s*$";

/// `512`, `64KiB`, `1.5 MB`: a number and an optional unit (B, K/KB, KiB, M/MB, MiB, G/GB, GiB; any case).
pub const BYTE_SIZE_PATTERN: &str =
    r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*([bB]|[kKmMgG]([iI]?[bB])?)?\s*$";

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as `250ms`, `2s`, `5m` or `1h 30m`, or a number of seconds.",
            "oneOf": [
                { "type": "string", "pattern": DURATION_PATTERN },
                { "type": "number", "minimum": 0 }
            ],
            "examples": ["250ms", "2s", "5m"]
        })
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A percentage from 0 to 100: `5`, `5%` or `0.25%`.",
            "oneOf": [
                { "type": "string", "pattern": PERCENT_PATTERN },
                { "type": "number", "minimum": 0, "maximum": 100 }
            ],
            "examples": ["5%", "0.5%", 100]
        })
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size such as `64KiB`, `1MiB`, `10MB`, or a number of bytes.",
            "oneOf": [
                { "type": "string", "pattern": BYTE_SIZE_PATTERN },
                { "type": "number", "minimum": 0 }
            ],
            "examples": ["64KiB", "1MiB", "10MB"]
        })
    }
}

impl JsonSchema for ShadowNice {
    fn schema_name() -> Cow<'static, str> {
        "ShadowNice".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`idle` (Linux SCHED_IDLE: only CPU nothing else wants), or a nice value from 0 (as the client path) to 19.",
            "oneOf": [
                { "type": "string", "enum": ["idle"] },
                { "type": "integer", "minimum": 0, "maximum": 19 }
            ],
            "examples": ["idle", 10]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_accepts_both_spellings_with_basis_point_resolution() {
        assert_eq!(parse_percent("5%").map(|p| p.basis_points()), Ok(500));
        assert_eq!(parse_percent("0.01%").map(|p| p.basis_points()), Ok(1));
        assert_eq!(parse_percent("100").map(|p| p.basis_points()), Ok(10_000));
        assert!(parse_percent("101%").is_err());
        assert!(parse_percent("five").is_err());
    }

    #[test]
    fn sizes_and_durations_parse_units() {
        assert_eq!(parse_byte_size("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(parse_byte_size("64 KiB"), Ok(ByteSize(64 << 10)));
        assert!(parse_byte_size("3 parsecs").is_err());
        assert_eq!(
            parse_duration("250ms"),
            Ok(DurationSpec(Duration::from_millis(250)))
        );
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn nice_is_idle_or_a_nice_value() {
        let parse =
            |yaml: &str| serde_yaml::from_str::<ShadowNice>(yaml).map_err(|e| e.to_string());
        assert_eq!(parse("idle"), Ok(ShadowNice::Idle));
        assert_eq!(parse("7"), Ok(ShadowNice::Level(7)));
        assert_eq!(parse("0"), Ok(ShadowNice::Level(0)));
        for bad in ["20", "-1", "2.5", "low"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("use `idle`, or 0"), "{bad}: {err}");
        }
    }

    /// The schema's patterns accept what the parsers accept, on the
    /// spellings a person writes, and refuse what they refuse.
    #[test]
    fn schema_patterns_agree_with_the_parsers() {
        /// A pattern, whether the parser accepts a spelling, and spellings to try.
        type Case = (&'static str, fn(&str) -> bool, &'static [&'static str]);
        let cases: [Case; 3] = [
            (
                DURATION_PATTERN,
                |t| parse_duration(t).is_ok(),
                &[
                    "250ms",
                    "2s",
                    "5m",
                    "1h",
                    "1h 30m",
                    "1h30m",
                    "1.5s",
                    "0",
                    "7 days",
                    "30sec",
                    "2 s",
                    "soon",
                    "5",
                    "-1s",
                    "1.s",
                    "5 parsecs",
                    "",
                ],
            ),
            (
                PERCENT_PATTERN,
                |t| parse_percent(t).is_ok(),
                &[
                    "5", "5%", "0.25%", "100%", "100.0%", " 5 % ", "0", ".5%", "99.99", "101%",
                    "150", "-1%", "five", "%", "100.1%",
                ],
            ),
            (
                BYTE_SIZE_PATTERN,
                |t| parse_byte_size(t).is_ok(),
                &[
                    "512",
                    "64KiB",
                    "64 KiB",
                    "1MiB",
                    "10MB",
                    "1.5GB",
                    "2k",
                    "1gib",
                    "8b",
                    "3 parsecs",
                    "MiB",
                    "1KiBB",
                    "-5",
                ],
            ),
        ];
        for (pattern, parses, samples) in cases {
            let regex = regex::Regex::new(pattern).expect("the pattern is a valid regex");
            for sample in samples {
                assert_eq!(
                    regex.is_match(sample),
                    parses(sample),
                    "pattern and parser disagree on {sample:?}"
                );
            }
        }
    }
}
