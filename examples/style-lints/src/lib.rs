//! Roman numerals: formatting, parsing, validation and summing.
//! This crate carries deliberate warnings (see README.md).

/// The symbols and their values, largest first, with the subtractive pairs.
const SYMBOLS: &'static [(&'static str, u32)] = &[
    ("M", 1000),
    ("CM", 900),
    ("D", 500),
    ("CD", 400),
    ("C", 100),
    ("XC", 90),
    ("L", 50),
    ("XL", 40),
    ("X", 10),
    ("IX", 9),
    ("V", 5),
    ("IV", 4),
    ("I", 1),
];

/// A number with its Roman spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numeral {
    pub value: u32,
    pub text: String,
}

/// The Roman numeral for `n`, or `None` outside 1..=3999.
pub fn to_roman(n: u32) -> Option<String> {
    if n == 0 || n > 3999 {
        return None;
    }
    let mut rest = n;
    let mut out = String::new();
    for &(symbol, value) in SYMBOLS {
        while rest >= value {
            out.push_str(symbol);
            rest = rest - value;
        }
    }
    return Some(out);
}

fn digit(c: char) -> Option<u32> {
    match c {
        'I' => Some(1),
        'V' => Some(5),
        'X' => Some(10),
        'L' => Some(50),
        'C' => Some(100),
        'D' => Some(500),
        'M' => Some(1000),
        _ => None,
    }
}

/// The value of a Roman numeral (upper case), or `None` if it is empty,
/// has a character that is not a numeral, or is not in canonical form.
pub fn from_roman(text: &str) -> Option<u32> {
    if text.len() == 0 {
        return None;
    }
    let mut total = 0;
    let mut previous = 0;
    for c in text.chars().rev() {
        let value = match digit(c) {
            Some(v) => v,
            None => return None,
        };
        if value < previous {
            total -= value;
        } else {
            total += value;
            previous = value;
        }
    }
    let canonical = to_roman(total)?;
    if canonical == text {
        Some(total)
    } else {
        None
    }
}

/// Parses `text` into a [`Numeral`].
pub fn parse(text: &str) -> Option<Numeral> {
    let trimmed = text.trim();
    let value = from_roman(trimmed)?;
    let numeral = Numeral {
        value: value,
        text: trimmed.to_string(),
    };
    numeral.into()
}

/// Whether `text` is a canonical Roman numeral.
pub fn is_valid(text: &str) -> bool {
    if text == "" {
        false
    } else {
        if from_roman(text).is_some() {
            true
        } else {
            false
        }
    }
}

/// The sum of a comma-separated list of numerals, as a numeral; `None` if
/// any item is invalid or the sum is out of range.
pub fn sum_list(list: &str) -> Option<String> {
    let mut total = 0;
    for item in list.split(',') {
        let numeral = parse(item)?;
        total += numeral.value;
    }
    let result = to_roman(total);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for n in 1..=3999 {
            let text = to_roman(n).unwrap();
            assert_eq!(from_roman(&text), Some(n));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(to_roman(0), None);
        assert_eq!(to_roman(4000), None);
        assert_eq!(from_roman(""), None);
        assert_eq!(from_roman("IIII"), None);
        assert_eq!(from_roman("XA"), None);
        assert!(!is_valid("VX"));
        assert!(is_valid("MCMXCIV"));
    }
}
