//! The invariants of `docs/ARCHITECTURE.md`, checked against the source
//! tree (in the manner of rust-analyzer's tidy tests): the domain module is a
//! leaf, actors never import each other, only `src/store` names sled, only
//! the listed edge files derive serde, every source file opens with `//!`,
//! every allowed use of a disallowed method says why, and the code map names
//! every module and nothing that is gone. Each check reports every violation
//! with its file and line.

use std::path::{Path, PathBuf};

/// The files that may derive serde: wire types, stored records, actor
/// snapshots and raw config — the edges where bytes meet the program.
const SERDE_EDGES: &[&str] = &[
    "src/ctl/protocol.rs",
    "src/ctl/replies.rs",
    "src/store/records.rs",
    "src/store/audit.rs",
    "src/config/mod.rs",
    "src/config/actors.rs",
    "src/config/run.rs",
    "src/config/cognition.rs",
    "src/config/validation.rs",
    "src/config/governor.rs",
    "src/config/observability.rs",
    "src/config/alerts.rs",
    "src/config/learning.rs",
    "src/config/tool_servers.rs",
    "src/config/safety.rs",
    "src/config/sandbox.rs",
    "src/config/upgrade.rs",
    "src/config/workers.rs",
    "src/mcp/tools.rs",
    "src/claude/mod.rs",
    "src/claude/stream.rs",
    "src/upgrade/candidate.rs",
    "src/upgrade/attempts.rs",
    "src/actors/governor/mod.rs",
    "src/actors/governor/budget.rs",
    "src/actors/learner/snapshot.rs",
    "src/actors/researcher.rs",
    "src/actors/executor/mod.rs",
    "src/actors/modifier/mod.rs",
    "src/actors/planner/mod.rs",
    "src/learning/bandit.rs",
    "src/learning/rules.rs",
    "src/workers/wire.rs",
];

const ACTORS: &[&str] = &[
    "governor",
    "learner",
    "researcher",
    "executor",
    "modifier",
    "planner",
];

/// One source file: its path from the project root and its lines.
struct Source {
    path: String,
    text: String,
}

impl Source {
    /// The lines of code outside `#[cfg(test)]` modules, numbered from 1,
    /// with `//` comments removed (doc comments describe, they do not import).
    fn code_lines(&self) -> Vec<(usize, String)> {
        let mut lines = Vec::new();
        for (index, line) in self.text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                let next = self.text.lines().nth(index + 1).unwrap_or_default();
                if next.trim_start().starts_with("mod ") {
                    break;
                }
            }
            let code = match line.find("//") {
                Some(at) if !line[..at].contains('"') => &line[..at],
                _ => line,
            };
            lines.push((index + 1, code.to_string()));
        }
        lines
    }

    fn at(&self, line: usize) -> String {
        format!("{}:{line}", self.path)
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources_under(dir: &str) -> Vec<Source> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Source>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(Source {
                    path: path
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    text: std::fs::read_to_string(&path).unwrap(),
                });
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    walk(&root, &root.join(dir), &mut out);
    out
}

fn assert_none(what: &str, violations: Vec<String>) {
    assert!(
        violations.is_empty(),
        "{what}:\n  {}",
        violations.join("\n  ")
    );
}

/// The identifiers that follow `prefix::` in a line, including each name of
/// a `prefix::{a, b::c}` group.
fn names_after(line: &str, prefix: &str) -> Vec<String> {
    let needle = format!("{prefix}::");
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().last();
        rest = &rest[at + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            names.extend(inner.split(',').map(|item| {
                item.trim()
                    .split("::")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            }));
        } else {
            names.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    names
}

/// The actor a file under `src/actors/` belongs to, if any.
fn actor_of(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("src/actors/")?;
    let first = rest.split('/').next()?.trim_end_matches(".rs");
    ACTORS.iter().copied().find(|a| *a == first)
}

#[test]
fn the_domain_module_is_a_leaf() {
    let domain = sources_under("src")
        .into_iter()
        .find(|s| s.path == "src/domain.rs")
        .expect("src/domain.rs exists");
    let violations = domain
        .code_lines()
        .into_iter()
        .filter(|(_, line)| line.contains("crate::") || line.contains("super::"))
        .map(|(n, line)| format!("{}: {}", domain.at(n), line.trim()))
        .collect();
    assert_none("src/domain.rs imports from the crate", violations);
}

#[test]
fn layers_below_the_actors_do_not_speak_the_actor_protocol() {
    const BELOW: &[&str] = &[
        "src/domain.rs",
        "src/claude/",
        "src/events.rs",
        "src/process.rs",
        "src/workspace.rs",
        "src/cognition/",
        "src/config/",
        "src/learning/",
        "src/mcp/",
        "src/store/",
        "src/supervisor/",
    ];
    let mut violations = Vec::new();
    for source in sources_under("src") {
        if !BELOW.iter().any(|b| source.path.starts_with(b)) {
            continue;
        }
        for (n, line) in source.code_lines() {
            if line.contains("messages::") {
                violations.push(format!("{}: {}", source.at(n), line.trim()));
            }
        }
    }
    assert_none(
        "below the actors, values come from `domain`, not from `messages`",
        violations,
    );
}

#[test]
fn actors_never_import_each_other() {
    let mut violations = Vec::new();
    for source in sources_under("src/actors") {
        let Some(own) = actor_of(&source.path) else {
            continue;
        };
        for (n, line) in source.code_lines() {
            for prefix in ["actors", "super"] {
                for name in names_after(&line, prefix) {
                    if name != own && ACTORS.contains(&name.as_str()) {
                        violations.push(format!(
                            "{}: the {own} actor imports the {name} actor: {}",
                            source.at(n),
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert_none(
        "actors reach peers through `messages` by name, never by import",
        violations,
    );
}

#[test]
fn only_the_store_names_sled() {
    let mut violations = Vec::new();
    for source in sources_under("src") {
        if source.path.starts_with("src/store/") {
            continue;
        }
        for (n, line) in source.code_lines() {
            if names_after(&line, "sled").iter().any(|s| !s.is_empty())
                || line.trim_start().starts_with("use sled")
            {
                violations.push(format!("{}: {}", source.at(n), line.trim()));
            }
        }
    }
    assert_none("only src/store may name sled", violations);
}

#[test]
fn only_the_edge_files_derive_serde() {
    let mut violations = Vec::new();
    for source in sources_under("src") {
        if SERDE_EDGES.contains(&source.path.as_str()) {
            continue;
        }
        // A derive may be wrapped over several lines: join them first.
        let mut derive: Option<(usize, String)> = None;
        for (n, line) in source.code_lines() {
            if let Some(at) = line.find("#[derive(") {
                derive = Some((n, line[at..].to_string()));
            } else if let Some((_, text)) = derive.as_mut() {
                text.push_str(&line);
            }
            if let Some((start, text)) = derive.take_if(|(_, text)| text.contains(")]"))
                && (text.contains("Serialize") || text.contains("Deserialize"))
            {
                violations.push(format!("{}: {}", source.at(start), text.trim()));
            }
        }
    }
    assert_none(
        "serde belongs to wire types, stored records, snapshots and raw config \
         (tests/it/tidy.rs SERDE_EDGES and docs/ARCHITECTURE.md list them)",
        violations,
    );
    let architecture = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let unlisted: Vec<String> = SERDE_EDGES
        .iter()
        .filter(|path| !architecture.contains(&format!("`{path}`")))
        .map(|path| format!("{path} is not named in docs/ARCHITECTURE.md"))
        .collect();
    assert_none("the serde edges are documented", unlisted);
}

#[test]
fn every_source_file_opens_with_a_doc_comment() {
    let violations = sources_under("src")
        .into_iter()
        .chain(sources_under("tests"))
        .filter(|s| !s.text.trim_start().starts_with("//!"))
        .map(|s| format!("{} does not open with `//!` saying what it owns", s.path))
        .collect();
    assert_none("files without a module doc", violations);
}

#[test]
fn every_allowed_disallowed_method_says_why() {
    let mut violations = Vec::new();
    for source in sources_under("src")
        .into_iter()
        .chain(sources_under("tests"))
    {
        let lines: Vec<&str> = source.text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            if !(trimmed.starts_with("#[allow(") || trimmed.starts_with("#![allow(")) {
                continue;
            }
            // The whole attribute, which rustfmt may wrap over lines.
            let mut attribute = String::new();
            for next in &lines[index..] {
                attribute.push_str(next.trim());
                attribute.push(' ');
                if next.contains(")]") {
                    break;
                }
            }
            if attribute.contains("clippy::disallowed_") && !attribute.contains("reason =") {
                violations.push(format!("{}: {}", source.at(index + 1), attribute.trim()));
            }
        }
    }
    assert_none(
        "an allowed use of a disallowed method or type (clippy.toml) needs `reason = \"...\"`",
        violations,
    );
}

/// The bullets of the code map section of docs/ARCHITECTURE.md.
fn code_map() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let section = text
        .split("## Code map")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a `## Code map` section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut bullets: Vec<String> = Vec::new();
    for line in section.lines() {
        if line.starts_with("- ") {
            bullets.push(line.to_string());
        } else if let Some(last) = bullets.last_mut() {
            last.push(' ');
            last.push_str(line.trim());
        }
    }
    bullets
}

#[test]
fn the_code_map_names_every_module_and_nothing_else() {
    let bullets = code_map();
    let mut violations = Vec::new();
    for source in sources_under("src") {
        let path = Path::new(&source.path);
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let folder = format!("{}/", path.parent().unwrap().display());
        let named = bullets.iter().any(|bullet| {
            bullet.contains(&format!("`{}`", source.path))
                || (bullet.contains(&format!("`{folder}")) && {
                    file == "mod.rs" || bullet.contains(&format!("`{file}`"))
                })
        });
        if !named && source.path != "src/lib.rs" {
            violations.push(format!(
                "{} is not in the code map (name `{}`, or `{file}` on the bullet of `{folder}`)",
                source.path, source.path
            ));
        }
    }
    for bullet in &bullets {
        for named in bullet
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|n| n.starts_with("src/") || n.starts_with("tests/"))
        {
            if !root().join(named).exists() {
                violations.push(format!(
                    "the code map names `{named}`, which does not exist"
                ));
            }
        }
    }
    assert_none(
        "docs/ARCHITECTURE.md's code map and src/ disagree",
        violations,
    );
}

/// The longest a function in `src/` may be, from its `fn` to its closing
/// brace: past it, a function is doing several things that want names.
const MAX_FUNCTION_LINES: usize = 80;

/// Functions allowed past the limit, each with its reason. Empty is best.
const LONG_FUNCTION_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Every function, method and nested function of `text` longer than
/// `MAX_FUNCTION_LINES`: its name, first line and length. Counted with
/// `syn`, so braces in strings and comments do not confuse it.
fn long_functions(text: &str) -> Vec<(String, usize, usize)> {
    use syn::visit::Visit;
    #[derive(Default)]
    struct Lengths(Vec<(String, usize, usize)>);
    impl Lengths {
        fn measure(&mut self, sig: &syn::Signature, block: &syn::Block) {
            let first = sig.fn_token.span.start().line;
            let last = block.brace_token.span.close().end().line;
            let lines = last + 1 - first;
            if lines > MAX_FUNCTION_LINES {
                self.0.push((sig.ident.to_string(), first, lines));
            }
        }
    }
    impl<'ast> Visit<'ast> for Lengths {
        fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
            self.measure(&item.sig, &item.block);
            syn::visit::visit_item_fn(self, item);
        }
        fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
            self.measure(&item.sig, &item.block);
            syn::visit::visit_impl_item_fn(self, item);
        }
        fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
            if let Some(block) = &item.default {
                self.measure(&item.sig, block);
            }
            syn::visit::visit_trait_item_fn(self, item);
        }
    }
    let file = syn::parse_file(text).expect("a source file parses");
    let mut lengths = Lengths::default();
    lengths.visit_file(&file);
    lengths.0
}

#[test]
fn no_function_in_src_is_over_80_lines() {
    let mut violations = Vec::new();
    for source in sources_under("src") {
        for (name, line, lines) in long_functions(&source.text) {
            let excepted = LONG_FUNCTION_EXCEPTIONS
                .iter()
                .any(|(path, function, _)| *path == source.path && *function == name);
            if !excepted {
                violations.push(format!(
                    "{}:{line}: fn {name} is {lines} lines (at most {MAX_FUNCTION_LINES}): give its parts names",
                    source.path
                ));
            }
        }
    }
    assert_none("functions over the limit", violations);
}

#[test]
fn the_function_length_rule_sees_an_81_line_function_and_passes_an_80_line_one() {
    let function = |name: &str, lines: usize| {
        let body: String = (0..lines - 2)
            .map(|n| format!("    let _x{n} = {n};\n"))
            .collect();
        format!("fn {name}() {{\n{body}}}\n")
    };
    let text = format!(
        "{}\nimpl S {{\n{}}}\n",
        function("fits", 80),
        function("too_long", 81)
    );
    let found = long_functions(&text);
    assert_eq!(found, [("too_long".to_string(), 83, 81)], "{found:?}");
}
