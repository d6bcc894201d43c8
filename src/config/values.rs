//! Value types that validate themselves while the TOML is deserialized, so
//! that a bad value is reported with the span of the value itself.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration written as a humantime string (`"10s"`, `"1m 30s"`, `"250ms"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer).map_err(|_| {
            de::Error::custom("expected a duration string such as \"10s\", \"1m 30s\" or \"250ms\"")
        })?;
        let duration = parse_duration(&text).map_err(de::Error::custom)?;
        Ok(HumanDuration(duration))
    }
}

/// Parses a humantime duration and rejects zero, with a message that says
/// what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if duration.is_zero() => Err(format!(
            "expected a duration greater than zero, found \"{text}\""
        )),
        Ok(duration) => Ok(duration),
        Err(error) => Err(format!(
            "expected a duration such as \"10s\", \"1m 30s\" or \"250ms\", found \"{text}\" ({error})"
        )),
    }
}

/// A whole number that must be at least one (a limit, a count, a size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Positive(pub u64);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PositiveVisitor;
        impl de::Visitor<'_> for PositiveVisitor {
            type Value = Positive;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number greater than zero")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Positive, E> {
                if value <= 0 {
                    Err(E::custom(format!(
                        "expected a whole number greater than zero, found {value}"
                    )))
                } else {
                    Ok(Positive(value as u64))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Positive, E> {
                self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_i64(PositiveVisitor)
    }
}

impl Positive {
    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_zero_is_refused() {
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(parse_duration("ten").unwrap_err().contains("found \"ten\""));
    }
}
