//! The fitness of a worktree (lower is better): distinct compiler and
//! clippy warnings, or the number a configured command prints last; the
//! signals the same measure shows (warning codes and counts, what stops the
//! build); and the one line that says why a build failed.

use std::collections::BTreeMap;
use std::path::Path;

use super::run_confined;
use crate::actors::Context;
use crate::config::Fitness;
use crate::domain::Signals;
use crate::process::CommandSpec;
use crate::sandbox::Reach;

/// A worktree's fitness and what the measure showed of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub fitness: f64,
    pub signals: Signals,
}

/// Measures the worktree's fitness (lower is better).
/// `reach`: `Baseline` on the unchanged head (it may fetch dependencies),
/// `Check` on a change.
pub async fn measure_fitness(ctx: &Context, cwd: &Path, reach: Reach) -> Result<f64, String> {
    measure(ctx, cwd, reach).await.map(|m| m.fitness)
}

/// Measures the worktree: its fitness and its signals. A workspace that
/// does not build is an error whose text is the compiler's first error.
pub async fn measure(ctx: &Context, cwd: &Path, reach: Reach) -> Result<Measure, String> {
    if let Some(checks) = &ctx.checks {
        return checks.fitness(cwd).await.map(|fitness| Measure {
            fitness,
            signals: Signals::default(),
        });
    }
    let timeout = ctx.config.validation_timeout;
    match &ctx.config.fitness {
        Fitness::CargoWarnings => {
            let spec = CommandSpec {
                program: "cargo".into(),
                args: [
                    "clippy",
                    "--all-targets",
                    "--message-format=json",
                    "--quiet",
                ]
                .map(String::from)
                .to_vec(),
                cwd: cwd.to_path_buf(),
                env: Vec::new(),
                timeout,
            };
            let finished = run_confined(ctx, spec, reach).await?;
            if !finished.success() {
                let why = first_compiler_error(&finished.stdout)
                    .unwrap_or_else(|| finished.first_error_line());
                return Err(format!(
                    "fitness: `cargo clippy` failed, the workspace does not build: {why}"
                ));
            }
            let (warnings, places) = warning_codes(&finished.stdout);
            Ok(Measure {
                fitness: count_warnings(&finished.stdout) as f64,
                signals: Signals {
                    warnings,
                    places,
                    ..Signals::default()
                },
            })
        }
        Fitness::Command(command) => {
            let spec = CommandSpec::shell(command, cwd, timeout);
            let finished = run_confined(ctx, spec, reach).await?;
            if !finished.success() {
                return Err(format!(
                    "fitness command `{command}` failed: {}",
                    finished.first_error_line()
                ));
            }
            let last = finished
                .stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let fitness = last.trim().parse::<f64>().map_err(|_| {
                format!("fitness command `{command}` must print a number on its last line, printed {last:?}")
            })?;
            Ok(Measure {
                fitness,
                signals: Signals::default(),
            })
        }
    }
}

/// The first compiler error in `cargo --message-format=json` output, as one
/// line with its code and place: what stops the build, rather than cargo's
/// closing "could not compile".
pub fn first_compiler_error(json_lines: &str) -> Option<String> {
    json_lines.lines().find_map(|line| {
        let value = serde_json::from_str::<serde_json::Value>(line).ok()?;
        let message = &value["message"];
        if value["reason"] != "compiler-message" || message["level"] != "error" {
            return None;
        }
        let code = message["code"]["code"]
            .as_str()
            .map(|c| format!("[{c}]"))
            .unwrap_or_default();
        let place = message["spans"]
            .get(0)
            .map(|span| {
                format!(
                    " ({}:{})",
                    span["file_name"].as_str().unwrap_or("?"),
                    span["line_start"].as_u64().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        Some(format!(
            "error{code}: {}{place}",
            message["message"].as_str().unwrap_or("(no message)")
        ))
    })
}

/// Distinct compiler and clippy warnings in `cargo --message-format=json`
/// output. A lib's warnings appear again when its tests are built, hence the
/// de-duplication by rendered text.
pub fn count_warnings(json_lines: &str) -> usize {
    let mut seen = std::collections::HashSet::new();
    for line in json_lines.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["reason"] != "compiler-message" {
            continue;
        }
        let message = &value["message"];
        let has_spans = message["spans"].as_array().is_some_and(|s| !s.is_empty());
        if message["level"] == "warning" && has_spans {
            seen.insert(message["rendered"].as_str().unwrap_or_default().to_string());
        }
    }
    seen.len()
}

/// The tests a `cargo test` output names as failed, in order, each once:
/// `test <name> ... FAILED` lines and the indented names under the closing
/// `failures:` heading (what `--quiet` prints).
pub fn failing_tests(output: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut push = |name: &str| {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    };
    let lines: Vec<&str> = output.lines().collect();
    for line in &lines {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            push(name.trim());
        }
    }
    if let Some(heading) = lines.iter().rposition(|l| l.trim_end() == "failures:") {
        for line in &lines[heading + 1..] {
            match line.strip_prefix("    ") {
                Some(name) if !name.trim().is_empty() => push(name.trim()),
                _ if line.trim().is_empty() => continue,
                _ => break,
            }
        }
    }
    names
}

/// The distinct warnings of `cargo --message-format=json` output by code,
/// with how many of each. A warning seen only where test code is built (an
/// integration test, or a `#[cfg(test)]` item: the lib's own warnings
/// appear in both its builds, these in one) is counted under `<code>@tests`.
/// Also where each code's first warning is (`file:line`).
pub fn warning_codes(json_lines: &str) -> (BTreeMap<String, u32>, BTreeMap<String, String>) {
    // rendered text → (code, times seen in lib builds, seen in a test target, place)
    let mut seen: BTreeMap<String, (String, u32, bool, (String, u64))> = BTreeMap::new();
    for line in json_lines.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let message = &value["message"];
        let has_spans = message["spans"].as_array().is_some_and(|s| !s.is_empty());
        if value["reason"] != "compiler-message" || message["level"] != "warning" || !has_spans {
            continue;
        }
        let code = message["code"]["code"]
            .as_str()
            .unwrap_or("warning")
            .to_string();
        let in_test_target = value["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test" || k == "bench"))
            || message["spans"][0]["file_name"]
                .as_str()
                .is_some_and(|f| f.starts_with("tests/"));
        let span = &message["spans"][0];
        let place = (
            span["file_name"].as_str().unwrap_or("?").to_string(),
            span["line_start"].as_u64().unwrap_or(0),
        );
        let entry = seen
            .entry(message["rendered"].as_str().unwrap_or_default().to_string())
            .or_insert((code, 0, false, place));
        if in_test_target {
            entry.2 = true;
        } else {
            entry.1 += 1;
        }
    }
    // With `--all-targets` the lib is built twice (as itself and with its
    // tests); a lib warning seen once comes from code only the test build has.
    let lib_built_twice = seen.values().any(|(_, lib, _, _)| *lib >= 2);
    let mut codes = BTreeMap::new();
    let mut first: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for (code, lib, test_target, place) in seen.into_values() {
        let only_tests = test_target || (lib_built_twice && lib == 1);
        let key = if only_tests {
            format!("{code}@tests")
        } else {
            code
        };
        *codes.entry(key.clone()).or_insert(0) += 1;
        // The earliest place in file order, whatever order rustc said them.
        if first.get(&key).is_none_or(|seen| place < *seen) {
            first.insert(key, place);
        }
    }
    let places = first
        .into_iter()
        .map(|(code, (file, line))| (code, format!("{file}:{line}")))
        .collect();
    (codes, places)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_compiler_error_is_named_with_its_code_and_place() {
        let error = r#"{"reason":"compiler-message","message":{"level":"error","message":"`#![feature]` may not be used on the stable release channel","code":{"code":"E0554"},"spans":[{"file_name":"benches/benches.rs","line_start":3}]}}"#;
        let warning = r#"{"reason":"compiler-message","message":{"level":"warning","message":"unused","spans":[]}}"#;
        assert_eq!(
            first_compiler_error(&[warning, error].join("\n")).as_deref(),
            Some(
                "error[E0554]: `#![feature]` may not be used on the stable release channel (benches/benches.rs:3)"
            )
        );
        assert_eq!(first_compiler_error(warning), None);
    }

    #[test]
    fn warning_codes_are_counted_with_their_first_place_and_test_code_marked() {
        let lib = |rendered: &str, code: &str, line: u64| {
            format!(
                r#"{{"reason":"compiler-message","target":{{"kind":["lib"]}},"message":{{"level":"warning","rendered":"{rendered}","code":{{"code":"{code}"}},"spans":[{{"file_name":"src/lib.rs","line_start":{line}}}]}}}}"#
            )
        };
        let output = [
            // The lib build, then the lib's test build: its own warnings twice.
            lib("w: unused a", "unused_imports", 10),
            lib("w: unused b", "unused_imports", 9),
            lib("w: unused a", "unused_imports", 10),
            lib("w: unused b", "unused_imports", 9),
            // Only in the test build: a #[cfg(test)] item.
            lib("w: mut x", "unused_mut", 40),
        ]
        .join("\n");
        let (codes, places) = warning_codes(&output);
        assert_eq!(
            codes,
            [
                ("unused_imports".to_string(), 2),
                ("unused_mut@tests".to_string(), 1)
            ]
            .into()
        );
        assert_eq!(places["unused_imports"], "src/lib.rs:9");
        assert_eq!(places["unused_mut@tests"], "src/lib.rs:40");
    }

    #[test]
    fn failing_tests_are_read_from_cargo_tests_output() {
        let verbose =
            "running 2 tests\ntest tests::adds ... ok\ntest tests::median_of_one ... FAILED\n";
        assert_eq!(failing_tests(verbose), ["tests::median_of_one"]);
        let quiet = "running 3 tests\n.F.\nfailures:\n\n---- tests::median_of_one stdout ----\nassertion failed\n\n\nfailures:\n    tests::median_of_one\n    tests::mean\n\ntest result: FAILED. 1 passed; 2 failed\n";
        assert_eq!(
            failing_tests(quiet),
            ["tests::median_of_one", "tests::mean"]
        );
        assert!(failing_tests("test result: ok. 3 passed").is_empty());
    }

    #[test]
    fn warnings_are_counted_once_and_summaries_are_ignored() {
        let warning = r#"{"reason":"compiler-message","message":{"level":"warning","rendered":"warning: unused x","spans":[{"file_name":"src/lib.rs"}]}}"#;
        let summary = r#"{"reason":"compiler-message","message":{"level":"warning","rendered":"warning: 1 warning emitted","spans":[]}}"#;
        let other = r#"{"reason":"compiler-artifact"}"#;
        let output = [warning, warning, summary, other, "not json"].join("\n");
        assert_eq!(count_warnings(&output), 1);
    }
}
