//! `key = value` settings: parsing, typed look-ups, slugs and rendering.
//! This crate carries deliberate warnings and untidy formatting (see
//! README.md).

use std::collections::BTreeMap;
use std::collections::HashSet;

/// One parsed setting, with the line it came from (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting { pub key: String, pub value: String, pub line: usize }

/// Where a setting sits in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
}

/// Parses `key = value` lines; blank lines and lines starting with `#` are
/// skipped, and so are lines without `=`. Keys and values are trimmed.
pub fn parse(text: &str) -> Vec<Setting> {
    let mut settings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') { continue; }
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim().to_string();
            let value = value.trim().to_string();
              settings.push(Setting { key: key, value, line: i + 1 });
        }
    }
    return settings;
}

/// The settings as a map; a later key replaces an earlier one.
pub fn to_map(settings: &[Setting]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for s in settings {
        map.insert(s.key.clone(), s.value.clone());
    }
    map
}

/// Where `key` is last set, if anywhere.
pub fn position_of(settings: &[Setting], key: &str) -> Option<Position> {
    let found = settings.iter().rev().find(|s| s.key == key)?;
    let position = Position { line: found.line };
    Some(position.clone())
}

/// The value of `key` as a number, if it is set and parses.
pub fn get_number(settings: &[Setting], key: &str) -> Option<i64> {
    let mut map = to_map(settings);
    map.get(key)?.parse().ok()
}

/// The value of `key` as a boolean: "true"/"yes"/"on" and
/// "false"/"no"/"off", in any case.
pub fn get_bool(settings: &[Setting], key: &str) -> Option<bool> {
    let value = to_map(settings).get(key)?.to_lowercase();
    if ["true", "yes", "on"].contains(&value.as_str()) {
        Some(true)
    } else if ["false", "no", "off"].contains(&value.as_str()) { Some(false) } else { None }
}

/// `key` as a slug: lower-case ASCII letters and digits, with single `-`
/// between runs of anything else.
pub fn slug(key: &str) -> String {
    let mut out = String::new();
    let mut pending_dash = false;
    for c in key.chars() {
        if c.is_ascii_alphanumeric() {
            if pending_dash == true && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c.to_ascii_lowercase());
        } else {
            pending_dash = true;
        }
    }
    out
}

/// Renders settings back to `key = value` lines, in the given order.
pub fn render(settings: &[Setting]) -> String {
    settings.iter().map(|s| format!("{} = {}\n", s.key, s.value)).collect::<Vec<_>>().join("")
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# demo\nname = Demo App\n\nport= 8080\ndebug =YES\nbroken line\nport = 9090\n";

    #[test]
    fn parses_lines() {
        let settings = parse(TEXT);
        assert_eq!(settings.len(), 4);
        assert_eq!(settings[0], Setting { key: "name".into(), value: "Demo App".into(), line: 2 });
        assert_eq!(position_of(&settings, "port"), Some(Position { line: 7 }));
    }

    #[test]
    fn typed_lookups() {
        let settings = parse(TEXT);
        assert_eq!(get_number(&settings, "port"), Some(9090));
        assert_eq!(get_bool(&settings, "debug"), Some(true));
        assert_eq!(get_bool(&settings, "name"), None);
    }
}
