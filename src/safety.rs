//! The safety rules a change must pass before any build runs: its scope
//! (protected paths, allowed paths, size) and, for every changed Rust file,
//! rules that compare the base's syntax tree with the new one (`syn`), never
//! the text: no new `unsafe`, no new process spawning outside the modules
//! allowed to, no removed `#[test]`, no edit of a protected function. Pure:
//! the modifier hands in the base and new contents and gets the first
//! violation, named by its rule, file and line.

use std::collections::BTreeMap;

/// The rules, from `[safety]` in the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Path prefixes no change may touch (`.git/`, `actors.toml` and
    /// `config/` always are).
    pub protected_paths: Vec<String>,
    /// When not empty, every changed path must start with one of these.
    pub allowed_paths: Vec<String>,
    pub max_files: usize,
    pub max_changed_lines: usize,
    /// Files that may spawn processes (`Command::new`).
    pub process_spawn_allowed: Vec<String>,
    /// Functions no change may edit or remove, as `path::name`.
    pub protected_fns: Vec<String>,
}

/// Paths protected whatever the configuration says.
pub const ALWAYS_PROTECTED: [&str; 3] = [".git/", "actors.toml", "config/"];

/// One changed file: its path in the worktree and its text before and after
/// (`None`: absent).
#[derive(Debug, Clone)]
pub struct ChangedFile {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The first rule a change breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by rule {rule}: {place}{detail}", place = place(.file, *.line))]
pub struct Violation {
    pub rule: &'static str,
    pub file: String,
    pub line: Option<usize>,
    pub detail: String,
}

fn place(file: &str, line: Option<usize>) -> String {
    match (file.is_empty(), line) {
        (true, _) => String::new(),
        (false, Some(line)) => format!("{file}:{line}: "),
        (false, None) => format!("{file}: "),
    }
}

fn violation(rule: &'static str, file: &str, line: Option<usize>, detail: String) -> Violation {
    Violation {
        rule,
        file: file.to_string(),
        line,
        detail,
    }
}

/// The scope rules, checked first.
pub const SCOPE_RULES: [&str; 3] = [
    "protected-path",
    "outside-allowed-paths",
    "change-too-large",
];
/// The syntax-tree rules, checked on every changed Rust file.
pub const SYNTAX_RULES: [&str; 5] = [
    "rust-syntax",
    "no-new-unsafe",
    "no-process-spawn",
    "no-removed-test",
    "no-edit-protected-fn",
];

/// Checks a change: scope first, then the syntax-tree rules.
pub fn check(rules: &Rules, changes: &[ChangedFile]) -> Result<(), Violation> {
    scope(rules, changes)?;
    syntax(rules, changes)
}

/// Runs `work`, which parses Rust with `syn`, then frees what proc-macro2
/// keeps of every parsed text on this thread: with `span-locations` (which
/// gives violations their line) it keeps each text's line table until told
/// otherwise, so a run of weeks would keep every file it ever parsed.
/// Nothing parsed may outlive `work`: it must return plain data.
pub fn parsing<T>(work: impl FnOnce() -> T) -> T {
    let done = work();
    proc_macro2::extra::invalidate_current_thread_spans();
    done
}

/// The syntax-tree rules on every changed Rust file.
pub fn syntax(rules: &Rules, changes: &[ChangedFile]) -> Result<(), Violation> {
    for change in changes.iter().filter(|c| c.path.ends_with(".rs")) {
        rust(rules, change)?;
    }
    Ok(())
}

/// The scope rules: protected and allowed paths, size.
pub fn scope(rules: &Rules, changes: &[ChangedFile]) -> Result<(), Violation> {
    for change in changes {
        let protected = ALWAYS_PROTECTED
            .iter()
            .copied()
            .chain(rules.protected_paths.iter().map(String::as_str))
            .find(|prefix| {
                change.path == prefix.trim_end_matches('/') || change.path.starts_with(prefix)
            });
        if let Some(prefix) = protected {
            return Err(violation(
                "protected-path",
                &change.path,
                None,
                format!("`{prefix}` may not be changed"),
            ));
        }
        if !rules.allowed_paths.is_empty()
            && !rules
                .allowed_paths
                .iter()
                .any(|p| change.path.starts_with(p))
        {
            return Err(violation(
                "outside-allowed-paths",
                &change.path,
                None,
                format!(
                    "changes are allowed only under {}",
                    rules.allowed_paths.join(", ")
                ),
            ));
        }
    }
    if changes.len() > rules.max_files {
        return Err(violation(
            "change-too-large",
            "",
            None,
            format!(
                "{} files changed, at most {} allowed",
                changes.len(),
                rules.max_files
            ),
        ));
    }
    let lines: usize = changes.iter().map(changed_lines).sum();
    if lines > rules.max_changed_lines {
        return Err(violation(
            "change-too-large",
            "",
            None,
            format!(
                "{lines} lines changed, at most {} allowed",
                rules.max_changed_lines
            ),
        ));
    }
    Ok(())
}

/// Lines added plus lines removed, counted as multisets of lines.
fn changed_lines(change: &ChangedFile) -> usize {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for line in change.before.as_deref().unwrap_or_default().lines() {
        *counts.entry(line).or_default() -= 1;
    }
    for line in change.after.as_deref().unwrap_or_default().lines() {
        *counts.entry(line).or_default() += 1;
    }
    counts.values().map(|n| n.unsigned_abs() as usize).sum()
}

/// What the rules look for in one syntax tree.
#[derive(Debug, Default)]
struct Facts {
    /// Line of each `unsafe` block, fn, impl or trait.
    unsafe_at: Vec<usize>,
    /// Line of each call through a path ending in `Command::new`.
    spawn_at: Vec<usize>,
    /// Names of `#[test]` functions.
    tests: Vec<String>,
    /// Each function's name, its line and its tokens (to see an edit).
    fns: BTreeMap<String, (usize, String)>,
}

impl<'ast> syn::visit::Visit<'ast> for Facts {
    fn visit_expr_unsafe(&mut self, node: &'ast syn::ExprUnsafe) {
        self.unsafe_at.push(node.unsafe_token.span.start().line);
        syn::visit::visit_expr_unsafe(self, node);
    }

    fn visit_item_impl(&mut self, node: &'ast syn::ItemImpl) {
        if let Some(token) = node.unsafety {
            self.unsafe_at.push(token.span.start().line);
        }
        syn::visit::visit_item_impl(self, node);
    }

    fn visit_item_trait(&mut self, node: &'ast syn::ItemTrait) {
        if let Some(token) = node.unsafety {
            self.unsafe_at.push(token.span.start().line);
        }
        syn::visit::visit_item_trait(self, node);
    }

    fn visit_signature(&mut self, node: &'ast syn::Signature) {
        if let Some(token) = node.unsafety {
            self.unsafe_at.push(token.span.start().line);
        }
        syn::visit::visit_signature(self, node);
    }

    fn visit_expr_path(&mut self, node: &'ast syn::ExprPath) {
        let segments: Vec<String> = node
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        if segments.ends_with(&["Command".to_string(), "new".to_string()]) {
            let line = node
                .path
                .segments
                .first()
                .map_or(0, |s| s.ident.span().start().line);
            self.spawn_at.push(line);
        }
        syn::visit::visit_expr_path(self, node);
    }

    fn visit_item_fn(&mut self, node: &'ast syn::ItemFn) {
        let name = node.sig.ident.to_string();
        if node.attrs.iter().any(|a| a.path().is_ident("test")) {
            self.tests.push(name.clone());
        }
        let tokens = quote_tokens(node);
        self.fns
            .insert(name, (node.sig.ident.span().start().line, tokens));
        syn::visit::visit_item_fn(self, node);
    }
}

/// A function's tokens as text: the same for the same syntax tree,
/// whatever the formatting.
fn quote_tokens(node: &syn::ItemFn) -> String {
    use quote::ToTokens;
    node.to_token_stream().to_string()
}

fn facts(text: &str) -> Result<Facts, syn::Error> {
    let file = syn::parse_file(text)?;
    let mut facts = Facts::default();
    syn::visit::visit_file(&mut facts, &file);
    Ok(facts)
}

/// The AST rules on one changed Rust file, the first broken one reported.
fn rust(rules: &Rules, change: &ChangedFile) -> Result<(), Violation> {
    let path = &change.path;
    let Some(after) = &change.after else {
        return deleted_file(change);
    };
    let new = facts(after).map_err(|error| {
        violation(
            "rust-syntax",
            path,
            Some(error.span().start().line),
            format!("does not parse: {error}"),
        )
    })?;
    // A base that does not parse has nothing to protect.
    let old = change
        .before
        .as_deref()
        .and_then(|text| facts(text).ok())
        .unwrap_or_default();
    no_new_unsafe(path, &old, &new)?;
    no_process_spawn(rules, path, &old, &new)?;
    if let Some(gone) = old.tests.iter().find(|t| !new.tests.contains(t)) {
        return Err(violation(
            "no-removed-test",
            path,
            None,
            format!("removes the test `{gone}`"),
        ));
    }
    no_edit_protected_fn(rules, path, &old, &new)
}

/// A deleted file: every test and protected function in it is gone.
fn deleted_file(change: &ChangedFile) -> Result<(), Violation> {
    let before = change
        .before
        .as_deref()
        .map(facts)
        .transpose()
        .ok()
        .flatten();
    match before.as_ref().and_then(|f| f.tests.first()) {
        Some(test) => Err(violation(
            "no-removed-test",
            &change.path,
            None,
            format!("the file with test `{test}` was deleted"),
        )),
        None => Ok(()),
    }
}

fn no_new_unsafe(path: &str, old: &Facts, new: &Facts) -> Result<(), Violation> {
    if new.unsafe_at.len() <= old.unsafe_at.len() {
        return Ok(());
    }
    let line = new
        .unsafe_at
        .iter()
        .copied()
        .find(|l| !old.unsafe_at.contains(l));
    Err(violation(
        "no-new-unsafe",
        path,
        line.or(new.unsafe_at.last().copied()),
        "adds `unsafe`".into(),
    ))
}

fn no_process_spawn(rules: &Rules, path: &str, old: &Facts, new: &Facts) -> Result<(), Violation> {
    let may_spawn = rules.process_spawn_allowed.iter().any(|p| path == p);
    if may_spawn || new.spawn_at.len() <= old.spawn_at.len() {
        return Ok(());
    }
    Err(violation(
        "no-process-spawn",
        path,
        new.spawn_at
            .iter()
            .copied()
            .find(|l| !old.spawn_at.contains(l)),
        "spawns a process (`Command::new`) outside the modules allowed to".into(),
    ))
}

fn no_edit_protected_fn(
    rules: &Rules,
    path: &str,
    old: &Facts,
    new: &Facts,
) -> Result<(), Violation> {
    for protected in &rules.protected_fns {
        let Some((file, name)) = protected.rsplit_once("::") else {
            continue;
        };
        if file != path {
            continue;
        }
        if let Some((line, before)) = old.fns.get(name)
            && new.fns.get(name).map(|(_, t)| t) != Some(before)
        {
            return Err(violation(
                "no-edit-protected-fn",
                path,
                Some(*line),
                format!("edits the protected function `{name}`"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            protected_paths: vec!["src/governor/".into()],
            allowed_paths: vec![],
            max_files: 3,
            max_changed_lines: 20,
            process_spawn_allowed: vec!["src/process.rs".into()],
            protected_fns: vec!["src/lib.rs::evaluate".into()],
        }
    }

    fn change(path: &str, before: &str, after: &str) -> ChangedFile {
        ChangedFile {
            path: path.into(),
            before: Some(before.into()),
            after: Some(after.into()),
        }
    }

    const BASE: &str = "pub fn evaluate() -> u32 {\n    1\n}\n\n#[test]\nfn evaluates() {\n    assert_eq!(evaluate(), 1);\n}\n";

    fn rule_of(changes: &[ChangedFile]) -> Option<&'static str> {
        check(&rules(), changes).err().map(|v| v.rule)
    }

    #[test]
    fn a_plain_change_passes() {
        let after = format!("{BASE}\npub fn more() -> u32 {{\n    2\n}}\n");
        assert_eq!(rule_of(&[change("src/lib.rs", BASE, &after)]), None);
    }

    #[test]
    fn each_scope_rule_refuses_its_change() {
        assert_eq!(
            rule_of(&[change("actors.toml", "a", "b")]),
            Some("protected-path")
        );
        assert_eq!(
            rule_of(&[change("config/agent.toml", "a", "b")]),
            Some("protected-path")
        );
        assert_eq!(
            rule_of(&[change("src/governor/mod.rs", "a", "b")]),
            Some("protected-path")
        );
        let mut only_src = rules();
        only_src.allowed_paths = vec!["src/".into()];
        let refused = check(&only_src, &[change("build.rs", "a", "b")]).unwrap_err();
        assert_eq!(refused.rule, "outside-allowed-paths");
        let many: Vec<ChangedFile> = (0..4)
            .map(|i| change(&format!("f{i}.txt"), "a", "b"))
            .collect();
        assert_eq!(rule_of(&many), Some("change-too-large"));
        let long = "x\n".repeat(30);
        assert_eq!(
            rule_of(&[change("notes.txt", "", &long)]),
            Some("change-too-large")
        );
    }

    #[test]
    fn each_syntax_rule_refuses_its_change_and_names_the_line() {
        let unsafe_added = format!("{BASE}\nfn raw() {{\n    unsafe {{}}\n}}\n");
        let refused = check(&rules(), &[change("src/lib.rs", BASE, &unsafe_added)]).unwrap_err();
        assert_eq!((refused.rule, refused.line), ("no-new-unsafe", Some(11)));
        assert!(
            refused
                .to_string()
                .starts_with("refused by rule no-new-unsafe: src/lib.rs:11: "),
            "{refused}"
        );

        let spawn =
            format!("{BASE}\nfn run() {{\n    let _ = std::process::Command::new(\"ls\");\n}}\n");
        let refused = check(&rules(), &[change("src/lib.rs", BASE, &spawn)]).unwrap_err();
        assert_eq!((refused.rule, refused.line), ("no-process-spawn", Some(11)));
        assert_eq!(rule_of(&[change("src/process.rs", BASE, &spawn)]), None);

        let no_test = "pub fn evaluate() -> u32 {\n    1\n}\n";
        assert_eq!(
            rule_of(&[change("src/lib.rs", BASE, no_test)]),
            Some("no-removed-test")
        );

        let edited = BASE.replace("    1\n", "    2\n");
        let refused = check(&rules(), &[change("src/lib.rs", BASE, &edited)]).unwrap_err();
        assert_eq!(
            (refused.rule, refused.line),
            ("no-edit-protected-fn", Some(1))
        );
        // The same tree written differently is not an edit.
        let reformatted = BASE.replace(
            "pub fn evaluate() -> u32 {\n    1\n}",
            "pub fn evaluate()->u32{1}",
        );
        assert_eq!(rule_of(&[change("src/lib.rs", BASE, &reformatted)]), None);

        assert_eq!(
            rule_of(&[change("src/lib.rs", BASE, "fn broken( {")]),
            Some("rust-syntax")
        );
    }

    #[test]
    fn unsafe_in_a_comment_or_string_is_not_unsafe() {
        let after = format!("{BASE}\n// unsafe {{}}\nconst S: &str = \"unsafe {{}}\";\n");
        assert_eq!(rule_of(&[change("src/lib.rs", BASE, &after)]), None);
    }
}
