//! Configuration errors that point at the offending place: file, line, column
//! and what was expected. Every config failure a user can cause ends up here,
//! and `agent` prints it as one line and exits with status 2.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem with one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole (missing, unreadable, incomplete).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }

    /// An error at a byte span of the file's text.
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: span.map(|span| line_and_column(text, span.start)),
            message: message.into(),
        }
    }

    /// Converts a TOML parse or deserialization error, keeping its place.
    pub fn from_toml(file: &Path, text: &str, error: &toml::de::Error) -> Self {
        // toml's messages end with a newline and sometimes repeat the place;
        // keep the sentence only.
        let message = error.message().trim().replace('\n', "; ");
        Self::at(file, text, error.span(), message)
    }
}

impl ConfigError {
    /// An error found in the user's file merged over the defaults: named by
    /// its key (`governor.retry_after: ...`) and placed in the user's file,
    /// the only place a wrong value can come from.
    pub fn from_merged(file: &Path, user: &str, merged: &str, error: &toml::de::Error) -> Self {
        let message = error.message().trim().replace('\n', "; ");
        let Some((section, key)) = error
            .span()
            .and_then(|span| key_at(merged, line_and_column(merged, span.start).0))
        else {
            return Self::whole_file(file, message);
        };
        let name = if section.is_empty() {
            key.clone()
        } else {
            format!("{section}.{key}")
        };
        ConfigError {
            file: file.to_path_buf(),
            position: line_of_key(user, &section, &key),
            message: format!("{name}: {message}"),
        }
    }
}

/// The (section, key) of the `key = value` line `line` (1-based) of a TOML
/// text, the section being the nearest `[header]` above it.
fn key_at(text: &str, line: usize) -> Option<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let key = lines.get(line.checked_sub(1)?)?.split('=').next()?.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = lines[..line - 1]
        .iter()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')?.strip_suffix(']').map(str::to_string)
        })
        .unwrap_or_default();
    Some((section, key.trim_matches('"').to_string()))
}

/// Where `key` of `[section]` is written in `text`: line, and the column of
/// its value.
fn line_of_key(text: &str, section: &str, key: &str) -> Option<(usize, usize)> {
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim().to_string();
            continue;
        }
        let Some((name, _)) = trimmed.split_once('=') else {
            continue;
        };
        if current == section && name.trim().trim_matches('"') == key {
            let value = line.find('=').map_or(0, |at| {
                at + 1 + line[at + 1..].len() - line[at + 1..].trim_start().len()
            });
            return Some((index + 1, line[..value].chars().count() + 1));
        }
    }
    None
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                line,
                column,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        assert_eq!(line_and_column(text, 8), (2, 3));
    }
}
