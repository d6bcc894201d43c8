//! Small text helpers: word counts, Title Case, initials and line wrapping.
//! This crate carries deliberate warnings (see README.md).

use std::collections::HashMap;
use std::fmt::Write;

/// The number of whitespace-separated words in `text`.
pub fn word_count(text: &str) -> usize {
    let mut words = text.split_whitespace();
    let mut count = 0;
    for _ in words {
        count += 1;
    }
    count
}

/// `text` with the first letter of every word upper-cased and the rest
/// lower-cased; words are joined by single spaces.
pub fn title_case(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if (!out.is_empty()) {
            out.push(' ');
        }
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(&chars.as_str().to_lowercase());
        }
    }
    out
}

/// The upper-cased first letters of the words of `name`, e.g. "A.L." for
/// "Ada Lovelace".
pub fn initials(name: &str, separator: char) -> String {
    let mut out = String::new();
    let style = separator;
    for word in name.split_whitespace() {
        if let Some(first) = word.chars().next() {
            out.extend(first.to_uppercase());
            out.push('.');
        }
    }
    out
}

/// Greedy word wrapping: lines no longer than `width` characters unless a
/// single word is longer. A `width` of zero puts every word on its own line.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let needed = (current.chars().count() + 1 + word.chars().count());
        if !current.is_empty() && (width == 0 || needed > width) {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words() {
        assert_eq!(word_count("  one two\tthree\n"), 3);
        assert_eq!(word_count(""), 0);
    }

    #[test]
    fn title_cases_words() {
        assert_eq!(title_case("hello   wORLD"), "Hello World");
        let mut empty = title_case("");
        assert_eq!(empty, "");
    }

    #[test]
    fn takes_initials() {
        assert_eq!(initials("ada lovelace", '.'), "A.L.");
    }
}
