//! Number formatting: digit grouping, human-readable byte sizes and
//! percentages. The library is clean; the deliberate warnings of this crate
//! are in its tests (see README.md).

/// `n` with its digits grouped in threes by `separator`, e.g. "1,234,567".
pub fn group_digits(n: i64, separator: char) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(separator);
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Parses a number written with `separator` between digit groups; `None`
/// if the groups are malformed.
pub fn parse_grouped(text: &str, separator: char) -> Option<i64> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let groups: Vec<&str> = body.split(separator).collect();
    let first_ok = groups.first().is_some_and(|g| (1..=3).contains(&g.len()));
    let rest_ok = groups.iter().skip(1).all(|g| g.len() == 3);
    if !first_ok || !rest_ok || !body.chars().all(|c| c == separator || c.is_ascii_digit()) {
        return None;
    }
    let value: i64 = groups.concat().parse().ok()?;
    Some(if negative { -value } else { value })
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// A byte count in the largest binary unit that keeps it at least 1, with
/// one decimal for anything above bytes, e.g. "1.5 KiB".
pub fn human_bytes(bytes: u64) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `part / whole` as a percentage with `decimals` decimals; `None` if
/// `whole` is zero.
pub fn percent(part: f64, whole: f64, decimals: usize) -> Option<String> {
    if whole == 0.0 {
        return None;
    }
    Some(format!("{:.*}%", decimals, part / whole * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn roundtrip(n: i64) -> bool {
        let text = group_digits(n, ',');
        return parse_grouped(&text, ',') == Some(n);
    }

    #[test]
    fn groups_digits() {
        assert_eq!(group_digits(0, ','), "0");
        assert_eq!(group_digits(999, ','), "999");
        assert_eq!(group_digits(1234567, ','), "1,234,567");
        assert_eq!(group_digits(-1000, '.'), "-1.000");
    }

    #[test]
    fn round_trips() {
        let mut samples = vec![0, 7, 1000, -123456, i64::MAX];
        for n in samples {
            assert_eq!(roundtrip(n), true);
        }
    }

    #[test]
    fn rejects_malformed_groups() {
        assert_eq!(parse_grouped("1,23", ','), None);
        assert_eq!(parse_grouped(",123", ','), None);
        assert_eq!(parse_grouped("12a", ','), None);
        assert_eq!(parse_grouped("", ',').is_none(), true);
    }
}
