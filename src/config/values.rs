//! Scalar value types of route files: durations, percentages, byte sizes.
//!
//! Each accepts the spelling a person writes (`2s`, `5%`, `1MiB`) and the
//! plain number a generator writes, and rejects anything else at parse time.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

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
}
