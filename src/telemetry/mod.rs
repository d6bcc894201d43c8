//! Telemetry: logs and OTLP traces ([`tracing`] set-up), Prometheus metrics
//! ([`metrics`]), the HTTP listener for metrics and health ([`http`]) and
//! alert rules ([`alerts`]). Names of spans, attributes and metrics follow
//! the scheme written in `docs/telemetry.md`.

pub mod alerts;
pub mod http;
pub mod metrics;
pub mod traces;

pub use traces::{
    LogFormat, SpanLink, current_link, current_traceparent, link_pending, set_remote_parent,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Every `.rs` file under `dir`.
    fn sources(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }

    /// The first string literal after each `_span!(` (skipping `parent: …,`).
    fn span_names(code: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (at, _) in code.match_indices("_span!(") {
            let rest = &code[at + "_span!(".len()..];
            let Some(quote) = rest.find('"') else {
                continue;
            };
            if rest[..quote].contains(')') {
                continue;
            }
            let name: String = rest[quote + 1..]
                .chars()
                .take_while(|c| *c != '"')
                .collect();
            // Only literals shaped like span names (this test mentions the macro too).
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
            {
                names.insert(name);
            }
        }
        names
    }

    /// Dotted attribute names in the GenAI namespace.
    fn genai_attributes(code: &str) -> BTreeSet<String> {
        code.match_indices("gen_ai.")
            .map(|(at, _)| {
                code[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '.' || *c == '_')
                    .collect::<String>()
                    .trim_end_matches('.')
                    .to_string()
            })
            .filter(|name| name.matches('.').count() >= 2 || name == "gen_ai.system")
            .collect()
    }

    /// Names written as `name` in the first column of the doc's tables.
    fn documented(doc: &str, prefix: &str) -> BTreeSet<String> {
        doc.lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .filter(|name| name.starts_with(prefix))
            .map(String::from)
            .collect()
    }

    #[test]
    fn docs_name_every_span_attribute_and_metric() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/telemetry.md")).unwrap();
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        let code = files.join("\n");

        let spans = span_names(&code);
        assert!(
            spans.contains("iteration") && spans.contains("cognition.run"),
            "{spans:?}"
        );
        let documented_spans: BTreeSet<String> = doc
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split('`').next())
            .filter(|name| !name.starts_with("agent_") && !name.contains(' '))
            .filter(|name| spans.contains(*name) || name.contains('.') || *name == "iteration")
            .map(String::from)
            .collect();
        assert_eq!(
            spans, documented_spans,
            "spans in the code vs the docs' span table"
        );

        for attribute in genai_attributes(&code) {
            assert!(
                doc.contains(&format!("`{attribute}`")),
                "docs/telemetry.md does not name {attribute}"
            );
        }

        let metrics: BTreeSet<String> = super::metrics::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            metrics,
            documented(&doc, "agent_"),
            "metrics in the code vs the docs' metric table"
        );
    }
}
