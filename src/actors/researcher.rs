//! The researcher: answers research requests from a cache in the store with a
//! time-to-live. A miss is filled off the mailbox from local sources (the
//! workspace's README and docs, the paragraphs that share words with the
//! topic) and, with a model backend, a read-only research prompt. A cache hit
//! costs no tokens.

use std::path::Path;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Context, handle_common, load_snapshot};
use crate::domain::{ActorKind, Research, ResearcherStatus, Usage};
use crate::messages::{ActorError, ResearcherMsg};
use crate::store::{ResearchRecord, now_ms};

const KIND: ActorKind = ActorKind::Researcher;
const SCHEMA: u32 = 1;
/// Most paragraphs a local answer carries.
const MAX_PARAGRAPHS: usize = 6;
const MAX_NOTES: usize = 4000;

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
                let span = tracing::info_span!(
                    "researcher.research",
                    actor = KIND.name(),
                    cache = tracing::field::Empty
                );
                let ttl = state.ctx.config.research_ttl;
                let cached = state.ctx.store.research(&topic).ok().flatten();
                if let Some(entry) = cached.filter(|e| is_fresh(e, ttl, now_ms())) {
                    span.record("cache", "hit");
                    state.snapshot.hits += 1;
                    let _ = reply.send(Research {
                        topic,
                        notes: entry.notes,
                        from_cache: true,
                        usage: Usage::default(),
                    });
                    return Ok(());
                }
                span.record("cache", "miss");
                let ctx = state.ctx.clone();
                state.tasks.spawn(async move {
                    let research = fill(&ctx, &topic).instrument(span).await;
                    let entry = ResearchRecord {
                        topic: topic.clone(),
                        notes: research.notes.clone(),
                        fetched_at_ms: now_ms(),
                    };
                    if let Err(error) = ctx.store.put_research(&entry).await {
                        tracing::warn!(%error, "cannot cache research");
                    }
                    let _ = myself.cast(ResearcherMsg::Filled { research, reply });
                });
            }
            ResearcherMsg::Status(reply) => {
                let _ = reply.send(ResearcherStatus {
                    hits: state.snapshot.hits,
                    misses: state.snapshot.misses,
                });
            }
            ResearcherMsg::Invalidate { topic, reply } => {
                let removed = state.ctx.store.remove_research(&topic).await;
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

/// Answers a miss: local notes, then the model's answer when there is one.
async fn fill(ctx: &Context, topic: &str) -> Research {
    let root = ctx.workspace.path.clone();
    let topic_owned = topic.to_string();
    let local = tokio::task::spawn_blocking(move || local_notes(&root, &topic_owned))
        .await
        .unwrap_or_default();
    let mut notes = local;
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
        let mut found = Vec::new();
        for answer in answers {
            usage.input_tokens += answer.usage.input_tokens;
            usage.output_tokens += answer.usage.output_tokens;
            usage.cost_usd += answer.usage.cost_usd;
            if answer.error.is_none() && !answer.output.trim().is_empty() {
                found.push(answer.output.trim().to_string());
            }
        }
        found.push(notes);
        notes = found.join("\n\n");
    }
    notes.truncate(floor_char_boundary(&notes, MAX_NOTES));
    Research {
        topic: topic.to_string(),
        notes,
        from_cache: false,
        usage,
    }
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Paragraphs of the workspace's README and docs that share the most words
/// with the topic.
pub fn local_notes(root: &Path, topic: &str) -> String {
    let words: Vec<String> = topic
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 4)
        .map(str::to_lowercase)
        .collect();
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
    let mut scored: Vec<(usize, String)> = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for paragraph in text.split("\n\n") {
            let lower = paragraph.to_lowercase();
            let score = words.iter().filter(|w| lower.contains(w.as_str())).count();
            if score > 0 {
                scored.push((score, format!("[{name}] {}", paragraph.trim())));
            }
        }
    }
    scored.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
    scored
        .into_iter()
        .take(MAX_PARAGRAPHS)
        .map(|(_, p)| p)
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_notes_pick_paragraphs_that_share_words_with_the_topic() {
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
        assert!(notes.contains("median of samples"), "{notes}");
        assert!(
            notes.contains("[warnings.md] Warnings are deliberate."),
            "{notes}"
        );
        assert!(!notes.contains("Unrelated"), "{notes}");
    }

    #[test]
    fn cache_entries_expire_after_the_ttl() {
        let entry = ResearchRecord {
            topic: "t".into(),
            notes: String::new(),
            fetched_at_ms: 1_000,
        };
        assert!(is_fresh(&entry, Duration::from_secs(1), 1_999));
        assert!(!is_fresh(&entry, Duration::from_secs(1), 2_000));
    }
}
