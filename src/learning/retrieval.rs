//! Retrieval of the past experiences that match a situation: each
//! experience is a document of terms (its situation's terms, its
//! capability, its outcome, the words of its error), the situation is the
//! query, and BM25 (the `bm25` crate) ranks them. Terms are kept whole
//! (`warn:clippy::needless_return` is one term): they are identifiers, not
//! prose, so stemming and stop words would only blur them.

use bm25::{Document, SearchEngine, SearchEngineBuilder, Tokenizer};

use crate::domain::Experience;

/// Splits on whitespace and lowercases: one token per term.
#[derive(Debug, Clone, Copy, Default)]
pub struct Terms;

impl Tokenizer for Terms {
    fn tokenize(&self, input_text: &str) -> Vec<String> {
        input_text
            .split_whitespace()
            .map(str::to_lowercase)
            .collect()
    }
}

/// An experience as the document retrieval scores.
pub fn document(experience: &Experience) -> String {
    let mut terms = experience.signals.terms();
    terms.push(format!("capability:{}", experience.capability));
    terms.push(format!("outcome:{}", experience.outcome.as_str()));
    if let Some(prompt) = &experience.prompt {
        terms.push(format!("prompt:{prompt}"));
    }
    if let Some(signature) = &experience.error_signature {
        terms.extend(signature.split_whitespace().map(str::to_string));
    }
    terms.join(" ")
}

/// The `limit` experiences most relevant to a situation's `terms`, best
/// first; experiences that share no term with it are not returned.
pub fn most_relevant(
    experiences: &[Experience],
    terms: &[String],
    limit: usize,
) -> Vec<Experience> {
    if experiences.is_empty() || terms.is_empty() || limit == 0 {
        return Vec::new();
    }
    let documents = experiences
        .iter()
        .enumerate()
        .map(|(index, experience)| Document::new(index, document(experience)));
    let engine: SearchEngine<usize, u32, Terms> =
        SearchEngineBuilder::with_tokenizer_and_documents(Terms, documents).build();
    engine
        .search(&terms.join(" "), limit)
        .into_iter()
        .filter(|result| result.score > 0.0)
        .filter_map(|result| experiences.get(result.document.id).cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Outcome, Signals, Usage};
    use std::time::Duration;

    fn experience(iteration: u64, capability: &str, codes: &[&str]) -> Experience {
        Experience {
            iteration,
            capability: capability.into(),
            prompt: None,
            signals: Signals {
                warnings: codes.iter().map(|c| (c.to_string(), 2)).collect(),
                ..Signals::default()
            },
            outcome: Outcome::Accepted,
            fitness_before: Some(4.0),
            fitness_after: Some(2.0),
            files_changed: 1,
            usage: Usage::default(),
            duration: Duration::from_secs(1),
            error_signature: None,
            denied_tools: Vec::new(),
            repaired: false,
        }
    }

    #[test]
    fn retrieval_returns_the_experience_that_matches_the_situation() {
        let past = vec![
            experience(1, "fmt", &["clippy::len_zero"]),
            experience(2, "cargo-fix", &["unused_imports", "unused_mut"]),
            experience(3, "clippy-fix", &["clippy::needless_return"]),
            experience(4, "clippy-fix-tests", &["unused_mut@tests"]),
        ];
        let now = Signals {
            warnings: [("unused_imports".to_string(), 5)].into(),
            ..Signals::default()
        };
        let found = most_relevant(&past, &now.terms(), 3);
        assert_eq!(found.first().map(|e| e.iteration), Some(2), "{found:?}");
        assert!(
            found.iter().all(|e| e.iteration != 3 && e.iteration != 1),
            "unrelated experiences are not returned: {found:?}"
        );
    }

    #[test]
    fn nothing_to_match_is_nothing_returned() {
        let past = vec![experience(1, "fmt", &["clippy::len_zero"])];
        assert!(most_relevant(&past, &[], 3).is_empty());
        assert!(most_relevant(&[], &["warn:x".to_string()], 3).is_empty());
    }
}
