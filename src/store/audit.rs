//! The audit chain: every decision the agent makes (permits and denials,
//! modification verdicts with the rule that refused them, approvals, budget
//! changes, pause and resume, faults, ctl commands that change anything) is
//! one entry, appended with the next sequence number and the hash of the
//! entry before it, and flushed before the decision is acknowledged. The
//! hash is SHA-256 over the entry's fields as a JSON array, so a changed
//! byte, a removed entry or a reordering breaks the chain at that entry.
//! Exported as JSON Lines, the same check runs on an archived copy.
//!
//! A chain detects a change to part of the log; a whole log rewritten from
//! some entry on, hashes recomputed, is not detected by the chain alone —
//! which is why exports leave the machine.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1 for the first entry, then one more each.
    pub seq: u64,
    pub at_ms: u64,
    /// Who decided: an actor's name, `ctl`, `daemon`.
    pub actor: String,
    /// What kind of decision, e.g. `permit.denied`, `change.refused`.
    pub action: String,
    /// The decision in one line: its subject, reason, rule.
    pub detail: String,
    /// The hash of the entry before (`GENESIS` for the first).
    pub prev: String,
    /// SHA-256 of this entry's other fields, hex.
    pub hash: String,
}

/// What to append: the chain fields are added by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actor: String,
    pub action: String,
    pub detail: String,
}

impl Decision {
    pub fn new(actor: &str, action: &str, detail: impl Into<String>) -> Decision {
        Decision {
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.into(),
        }
    }
}

/// The entry following `prev` (sequence and hash) for `decision`.
pub fn chain(prev: Option<&AuditEntry>, decision: Decision, at_ms: u64) -> AuditEntry {
    let (seq, prev) = match prev {
        Some(entry) => (entry.seq + 1, entry.hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    let mut entry = AuditEntry {
        seq,
        at_ms,
        actor: decision.actor,
        action: decision.action,
        detail: decision.detail,
        prev,
        hash: String::new(),
    };
    entry.hash = hash_of(&entry);
    entry
}

fn hash_of(entry: &AuditEntry) -> String {
    let fields = serde_json::json!([
        entry.seq,
        entry.at_ms,
        entry.actor,
        entry.action,
        entry.detail,
        entry.prev
    ]);
    let digest = Sha256::digest(fields.to_string().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Where a chain breaks: the position (1-based) of the first bad entry and
/// why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {position} is broken: {why}")]
pub struct Broken {
    pub position: usize,
    pub why: String,
}

/// Checks a whole chain from its first entry; `Ok` with the count.
pub fn verify<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Result<usize, Broken> {
    let mut previous: Option<&AuditEntry> = None;
    let mut count = 0;
    for (index, entry) in entries.into_iter().enumerate() {
        let position = index + 1;
        let broken = |why: String| Broken { position, why };
        let (seq, prev) = match previous {
            Some(before) => (before.seq + 1, before.hash.as_str()),
            None => (1, GENESIS),
        };
        if entry.seq != seq {
            return Err(broken(format!(
                "its sequence number is {}, expected {seq} (an entry is missing or out of order)",
                entry.seq
            )));
        }
        if entry.prev != prev {
            return Err(broken(format!(
                "seq {}: it does not follow the entry before it (prev hash differs)",
                entry.seq
            )));
        }
        if hash_of(entry) != entry.hash {
            return Err(broken(format!(
                "seq {}: its contents do not match its hash (changed after it was written)",
                entry.seq
            )));
        }
        previous = Some(entry);
        count += 1;
    }
    Ok(count)
}

/// Reads an export (JSON Lines) and checks it; a line that is not an entry
/// is broken at that line.
pub fn verify_lines(text: &str) -> Result<usize, Broken> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let entry = serde_json::from_str::<AuditEntry>(line).map_err(|error| Broken {
            position: index + 1,
            why: format!("line {} is not an audit entry: {error}", index + 1),
        })?;
        entries.push(entry);
    }
    verify(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: usize) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let entry = chain(
                entries.last(),
                Decision::new("governor", "permit.granted", format!("iteration {i}")),
                1000 + i as u64,
            );
            entries.push(entry);
        }
        entries
    }

    #[test]
    fn a_chain_verifies_and_any_change_breaks_it_at_that_entry() {
        let entries = log(5);
        assert_eq!(verify(&entries), Ok(5));
        let mut changed = entries.clone();
        changed[2].detail = "iteration 9".into();
        assert_eq!(verify(&changed).unwrap_err().position, 3);
        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(verify(&removed).unwrap_err().position, 2);
        let mut swapped = entries;
        swapped.swap(3, 4);
        assert_eq!(verify(&swapped).unwrap_err().position, 4);
    }
}
