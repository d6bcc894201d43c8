//! The researcher: answers research requests from a cache in the store,
//! keyed by the normalised query (case, punctuation and spacing do not make
//! a new entry), with a time-to-live. A miss is filled off the mailbox from
//! local sources, always: the workspace's README and docs, the sources of
//! its dependencies in the cargo registry, `rustc --explain` for each error
//! code the query names; then, with a model backend, a read-only research
//! prompt (plan mode). Every answer carries its sources. A hit costs no
//! tokens and calls no backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Context, handle_common, load_snapshot};
use crate::domain::{ActorKind, Research, ResearcherStatus, Usage};
use crate::messages::{ActorError, ResearcherMsg};
use crate::process::{self, CommandSpec};
use crate::store::{ResearchRecord, now_ms};

const KIND: ActorKind = ActorKind::Researcher;
pub(crate) const SCHEMA: u32 = 1;
/// Most paragraphs a local answer carries.
const MAX_PARAGRAPHS: usize = 6;
const MAX_NOTES: usize = 6000;
/// What one `rustc --explain` contributes at most.
const MAX_EXPLANATION: usize = 1500;
/// Deadline of `rustc --explain`.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// The researcher's committed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResearcherSnapshot {
    pub hits: u64,
    pub misses: u64,
}

pub struct Researcher;

pub struct ResearcherState {
    ctx: Context,
    snapshot: ResearcherSnapshot,
    /// Misses being filled; aborted if the actor dies.
    tasks: JoinSet<()>,
}

impl Actor for Researcher {
    type Msg = ResearcherMsg;
    type State = ResearcherState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let snapshot = load_snapshot(&ctx.store, KIND, SCHEMA)?.unwrap_or_default();
        Ok(ResearcherState {
            ctx,
            snapshot,
            tasks: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ResearcherMsg,
        state: &mut ResearcherState,
    ) -> Result<(), ActorProcessingErr> {
        while state.tasks.try_join_next().is_some() {}
        match message {
            ResearcherMsg::Research { topic, reply } => {
                let key = normalise(&topic);
                let span = tracing::info_span!(
                    "researcher.research",
                    actor = KIND.name(),
                    query = %key,
                    cache = tracing::field::Empty,
                    sources = tracing::field::Empty,
                );
                let ttl = state.ctx.config.research_ttl;
                let cached = state.ctx.store.research(&key).ok().flatten();
                if let Some(entry) = cached.filter(|e| is_fresh(e, ttl, now_ms())) {
                    span.record("cache", "hit");
                    state.snapshot.hits += 1;
                    let _ = reply.send(Research {
                        topic,
                        notes: entry.notes,
                        sources: entry.sources,
                        from_cache: true,
                        usage: Usage::default(),
                    });
                    return Ok(());
                }
                span.record("cache", "miss");
                let ctx = state.ctx.clone();
                state.tasks.spawn(async move {
                    let research = fill(&ctx, &topic).instrument(span.clone()).await;
                    span.record("sources", research.sources.len() as i64);
                    let entry = ResearchRecord {
                        topic: key,
                        notes: research.notes.clone(),
                        fetched_at_ms: now_ms(),
                        sources: research.sources.clone(),
                    };
                    if let Err(error) = ctx.store.put_research(&entry).await {
                        tracing::warn!(%error, "cannot cache research");
                    }
                    let _ = myself.cast(ResearcherMsg::Filled { research, reply });
                });
            }
            ResearcherMsg::Status(reply) => {
                let (entries, bytes) = state.ctx.store.research_size().unwrap_or_default();
                let _ = reply.send(ResearcherStatus {
                    hits: state.snapshot.hits,
                    misses: state.snapshot.misses,
                    entries,
                    bytes,
                });
            }
            ResearcherMsg::Invalidate { topic, reply } => {
                let removed = state.ctx.store.remove_research(&normalise(&topic)).await;
                let _ = reply.send(removed.map_err(|e| ActorError::Store(e.to_string())));
            }
            ResearcherMsg::Filled { research, reply } => {
                state.snapshot.misses += 1;
                let _ = reply.send(research);
            }
            ResearcherMsg::Common(common) => {
                handle_common(KIND, SCHEMA, &state.ctx.store, &mut state.snapshot, common).await?
            }
        }
        Ok(())
    }
}

/// Whether a cache entry is younger than `ttl`.
pub fn is_fresh(entry: &ResearchRecord, ttl: Duration, now_ms: u64) -> bool {
    now_ms.saturating_sub(entry.fetched_at_ms) < ttl.as_millis() as u64
}

/// The cache key of a query: lowercase words, single-spaced, without
/// punctuation — "Median of samples?" and "median  of SAMPLES" are one entry.
pub fn normalise(query: &str) -> String {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Answers a miss: local notes (workspace, dependencies, rustc), then the
/// model's answer when there is one.
async fn fill(ctx: &Context, topic: &str) -> Research {
    let root = ctx.workspace.path.clone();
    let topic_owned = topic.to_string();
    let mut found = tokio::task::spawn_blocking(move || {
        let mut notes = local_notes(&root, &topic_owned);
        notes.extend(dependency_notes(&root, &cargo_registry(), &topic_owned));
        notes
    })
    .await
    .unwrap_or_default();
    found.sort_by_key(|n| std::cmp::Reverse(n.score));
    found.truncate(MAX_PARAGRAPHS);
    let mut parts: Vec<String> = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    for code in error_codes(topic) {
        if let Some(explanation) = explain(&ctx.workspace.path, &code).await {
            parts.push(explanation);
            sources.push(format!("rustc --explain {code}"));
        }
    }
    for note in found {
        if !sources.contains(&note.source) {
            sources.push(note.source.clone());
        }
        parts.push(format!("[{}] {}", note.source, note.text));
    }
    let mut usage = Usage::default();
    if let Some(answers) = ctx
        .backend
        .research(
            &crate::cognition::research_questions(topic),
            &ctx.workspace.path,
            ctx.config.job_timeout,
        )
        .await
    {
        let mut answered = Vec::new();
        for answer in answers {
            usage.input_tokens += answer.usage.input_tokens;
            usage.output_tokens += answer.usage.output_tokens;
            usage.cost_usd += answer.usage.cost_usd;
            if answer.error.is_none() && !answer.output.trim().is_empty() {
                answered.push(answer.output.trim().to_string());
            }
        }
        if !answered.is_empty() {
            sources.insert(
                0,
                format!("{} (research prompt, plan mode)", ctx.backend.name()),
            );
            answered.extend(parts);
            parts = answered;
        }
    }
    let mut notes = parts.join("\n\n");
    notes.truncate(floor_char_boundary(&notes, MAX_NOTES));
    Research {
        topic: topic.to_string(),
        notes,
        sources,
        from_cache: false,
        usage,
    }
}

/// The rustc error codes a query names (`E0554`), each once.
pub fn error_codes(query: &str) -> Vec<String> {
    let mut codes: Vec<String> = Vec::new();
    let mut rest = query;
    while let Some(code) = crate::domain::error_code(rest) {
        if !codes.iter().any(|c| c == code) {
            codes.push(code.to_string());
        }
        let at = rest.find(code).map_or(rest.len(), |at| at + code.len());
        rest = &rest[at..];
    }
    codes
}

/// `rustc --explain <code>`, shortened; `None` when rustc does not know it.
async fn explain(cwd: &Path, code: &str) -> Option<String> {
    let spec = CommandSpec {
        program: "rustc".into(),
        args: vec!["--explain".into(), code.into()],
        cwd: cwd.to_path_buf(),
        env: Vec::new(),
        timeout: EXPLAIN_TIMEOUT,
    };
    let finished = process::run(&spec).await.ok()?;
    if !finished.success() || finished.stdout.trim().is_empty() {
        return None;
    }
    let mut text = finished.stdout.trim().to_string();
    text.truncate(floor_char_boundary(&text, MAX_EXPLANATION));
    Some(format!("[rustc --explain {code}] {text}"))
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// One paragraph found for a query, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub source: String,
    pub text: String,
    pub score: usize,
}

/// The words of a query that carry meaning (four letters or more).
fn query_words(query: &str) -> Vec<String> {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 4)
        .map(str::to_lowercase)
        .collect()
}

/// The paragraphs of `text` that share words with the query, scored by how
/// many they share.
fn paragraphs(text: &str, words: &[String], source: &str) -> Vec<Note> {
    text.split("\n\n")
        .filter_map(|paragraph| {
            let lower = paragraph.to_lowercase();
            let score = words.iter().filter(|w| lower.contains(w.as_str())).count();
            (score > 0).then(|| Note {
                source: source.to_string(),
                text: paragraph.trim().to_string(),
                score,
            })
        })
        .collect()
}

/// Paragraphs of the workspace's README and docs that share words with the
/// query.
pub fn local_notes(root: &Path, query: &str) -> Vec<Note> {
    let words = query_words(query);
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        files.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.to_lowercase().starts_with("readme"))
        }));
    }
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        files.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "md")),
        );
    }
    files.sort();
    let mut notes = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let source = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        notes.extend(paragraphs(&text, &words, &source));
    }
    notes
}

/// Where cargo unpacks the registry's sources: `$CARGO_HOME/registry/src`,
/// else `~/.cargo/registry/src`.
pub fn cargo_registry() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("registry/src")
}

/// Paragraphs of the workspace's dependencies — their README and the crate
/// docs (`//!`) of their `src/lib.rs`, from the sources cargo unpacked under
/// `registry` — that share words with the query. The version is the one
/// `Cargo.lock` names, else the newest unpacked.
pub fn dependency_notes(root: &Path, registry: &Path, query: &str) -> Vec<Note> {
    let words = query_words(query);
    let Ok(manifest) = std::fs::read_to_string(root.join("Cargo.toml")) else {
        return Vec::new();
    };
    let Ok(manifest) = manifest.parse::<toml::Table>() else {
        return Vec::new();
    };
    let locked: Vec<(String, String)> = std::fs::read_to_string(root.join("Cargo.lock"))
        .ok()
        .and_then(|lock| lock.parse::<toml::Table>().ok())
        .and_then(|lock| lock.get("package").and_then(|p| p.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some((
                p.get("name")?.as_str()?.to_string(),
                p.get("version")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let names: Vec<String> = ["dependencies", "dev-dependencies", "build-dependencies"]
        .iter()
        .filter_map(|table| manifest.get(*table).and_then(|t| t.as_table()))
        .flat_map(|table| table.keys().cloned())
        .collect();
    let indexes: Vec<PathBuf> = std::fs::read_dir(registry)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let mut notes = Vec::new();
    for name in names {
        let Some(dir) = unpacked(&indexes, &name, &locked) else {
            continue;
        };
        let label = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Ok(readme) = std::fs::read_to_string(dir.join("README.md")) {
            notes.extend(paragraphs(&readme, &words, &format!("{label}/README.md")));
        }
        if let Ok(lib) = std::fs::read_to_string(dir.join("src/lib.rs")) {
            let docs: Vec<&str> = lib
                .lines()
                .map_while(|l| l.trim_start().strip_prefix("//!"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            notes.extend(paragraphs(
                &docs.join("\n"),
                &words,
                &format!("{label}/src/lib.rs"),
            ));
        }
    }
    notes
}

/// The unpacked source directory of crate `name`: the locked version when
/// it is there, else the newest.
fn unpacked(indexes: &[PathBuf], name: &str, locked: &[(String, String)]) -> Option<PathBuf> {
    let prefix = format!("{name}-");
    let mut candidates: Vec<(Vec<u64>, PathBuf)> = indexes
        .iter()
        .flat_map(|index| std::fs::read_dir(index).into_iter().flatten().flatten())
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let version = file.strip_prefix(&prefix)?;
            version
                .starts_with(|c: char| c.is_ascii_digit())
                .then(|| (version.to_string(), entry.path()))
        })
        .map(|(version, path)| {
            if locked.iter().any(|(n, v)| n == name && *v == version) {
                (vec![u64::MAX], path)
            } else {
                let parts = version
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|p| p.parse().ok())
                    .collect();
                (parts, path)
            }
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_notes_pick_paragraphs_that_share_words_with_the_query() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("README.md"),
            "# Stats\n\nComputes the median of samples.\n\nUnrelated text here.\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        std::fs::write(
            dir.path().join("docs/warnings.md"),
            "Warnings are deliberate.\n",
        )
        .unwrap();
        let notes = local_notes(dir.path(), "reduce warnings, keep the median right");
        let texts: Vec<String> = notes
            .iter()
            .map(|n| format!("[{}] {}", n.source, n.text))
            .collect();
        assert!(
            texts.contains(&"[README.md] Computes the median of samples.".to_string()),
            "{texts:?}"
        );
        assert!(
            texts.contains(&"[docs/warnings.md] Warnings are deliberate.".to_string()),
            "{texts:?}"
        );
        assert!(!texts.iter().any(|t| t.contains("Unrelated")), "{texts:?}");
    }

    #[test]
    fn dependency_sources_are_read_at_the_locked_version() {
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(
            workspace.path().join("Cargo.toml"),
            "[package]\nname = \"w\"\n[dependencies]\nfastmath = \"1\"\n",
        )
        .unwrap();
        std::fs::write(
            workspace.path().join("Cargo.lock"),
            "[[package]]\nname = \"fastmath\"\nversion = \"1.2.0\"\n",
        )
        .unwrap();
        let registry = tempfile::tempdir().unwrap();
        for (version, text) in [
            ("1.2.0", "Rounding follows the median rule."),
            ("1.10.0", "Rounding changed in 1.10."),
        ] {
            let dir = registry
                .path()
                .join("index.example")
                .join(format!("fastmath-{version}"));
            std::fs::create_dir_all(dir.join("src")).unwrap();
            std::fs::write(
                dir.join("src/lib.rs"),
                format!("//! Fast math.\n//!\n//! {text}\nfn x() {{}}\n"),
            )
            .unwrap();
        }
        let notes = dependency_notes(workspace.path(), registry.path(), "rounding of the median");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].source, "fastmath-1.2.0/src/lib.rs");
        assert!(notes[0].text.contains("median rule"));
    }

    #[test]
    fn queries_are_keyed_without_case_punctuation_or_spacing() {
        assert_eq!(normalise("  Median, of SAMPLES? "), "median of samples");
        assert_eq!(
            normalise("median of samples"),
            normalise("Median  of samples!")
        );
        assert_ne!(normalise("median of samples"), normalise("mean of samples"));
        assert_eq!(
            error_codes("error[E0554]: feature; see E0554 and E0308"),
            ["E0554", "E0308"]
        );
        assert!(error_codes("E05541 XE0308").is_empty());
    }

    #[test]
    fn cache_entries_expire_after_the_ttl() {
        let entry = ResearchRecord {
            topic: "t".into(),
            notes: String::new(),
            fetched_at_ms: 1_000,
            sources: Vec::new(),
        };
        assert!(is_fresh(&entry, Duration::from_secs(1), 1_999));
        assert!(!is_fresh(&entry, Duration::from_secs(1), 2_000));
    }
}
