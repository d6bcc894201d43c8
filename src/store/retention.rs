//! Retention: what the store keeps of a run that goes on for weeks. The
//! records of the newest `iterations` committed iterations stay (log entry,
//! experience, archived variant, jobs, approvals); older ones are deleted
//! after each commit, oldest first, so each record is deleted once and a
//! commit's share of the work is constant. Deletions are not flushed on their
//! own: the next commit's flush carries them, and one lost to a crash is
//! deleted again.
//!
//! The audit chain is not cut: the store keeps its newest `audit_entries`,
//! and older entries move to `<state>/audit-archive.jsonl` (JSON Lines, the
//! export format), appended and synced before they leave the store. The
//! chain is whole across the two; `audit_entries()` reads both.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::audit::AuditEntry;
use super::{Store, StoreError, decode};
use crate::store::records::ApprovalRecord;

/// The file the audit chain's oldest entries move to.
pub const AUDIT_ARCHIVE: &str = "audit-archive.jsonl";
/// Entries move to the archive in batches of this many, so a commit rarely
/// touches the file.
const AUDIT_BATCH: u64 = 1_000;

/// How much of a run's history the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Records of the newest this many iterations are kept.
    pub iterations: u64,
    /// The newest this many audit entries stay in the store; older ones are
    /// in the archive file.
    pub audit_entries: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            iterations: 10_000,
            audit_entries: 50_000,
        }
    }
}

/// What one pruning removed, for the caller's log and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub iterations: u64,
    /// Iterations whose archived variant was deleted: their variant refs
    /// can go too.
    pub variants: Vec<u64>,
    pub jobs: u64,
    pub audit_archived: u64,
}

impl Store {
    /// Deletes what `retention` no longer keeps, given the newest committed
    /// iteration. Running jobs and pending approvals are never deleted.
    pub fn prune(&self, retention: Retention, committed: u64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let Some(cutoff) = committed.checked_sub(retention.iterations) else {
            return self.archive_audit(retention, pruned);
        };
        // Iterations `..=cutoff` go. Keys are big-endian numbers, so the
        // front of each tree is its oldest.
        let _writing = self.writing();
        pruned.iterations = remove_through(&self.iterations, cutoff)?.len() as u64;
        remove_through(&self.experiences, cutoff)?;
        pruned.variants = remove_through(&self.variants, cutoff)?;
        // Jobs and approvals are in the order they were made, which is the
        // order of their iterations; one still running or pending stays and
        // is stepped over.
        for entry in self.jobs.iter() {
            let (key, bytes) = entry?;
            let job = super::decode_job(&bytes)?;
            if job.iteration > cutoff {
                break;
            }
            if !job.status.is_running() {
                self.jobs.remove(key)?;
                pruned.jobs += 1;
            }
        }
        for entry in self.approvals.iter() {
            let (key, bytes) = entry?;
            let approval: ApprovalRecord = decode(&bytes, "approval")?;
            if approval.iteration > cutoff {
                break;
            }
            if approval.state != crate::domain::ApprovalState::Pending {
                self.approvals.remove(key)?;
            }
        }
        drop(_writing);
        self.archive_audit(retention, pruned)
    }

    /// Moves the oldest audit entries beyond `retention` to the archive file
    /// (synced) and only then out of the store.
    fn archive_audit(
        &self,
        retention: Retention,
        mut pruned: Pruned,
    ) -> Result<Pruned, StoreError> {
        let (Some((first, _)), Some((last, _))) = (self.audit.first()?, self.audit.last()?) else {
            return Ok(pruned);
        };
        let (first, last) = (u64_key(&first), u64_key(&last));
        let held = last - first + 1;
        let batch = AUDIT_BATCH.min(retention.audit_entries);
        if held < retention.audit_entries + batch {
            return Ok(pruned);
        }
        let through = last - retention.audit_entries;
        let path = self.audit_archive_path();
        // A crash between the append and the removal leaves entries in both;
        // those already archived are not appended twice.
        let archived = last_archived_seq(&path)?.unwrap_or(0);
        let mut lines = String::new();
        for entry in self
            .audit
            .range(first.to_be_bytes()..=through.to_be_bytes())
        {
            let (_, bytes) = entry?;
            let entry: AuditEntry = decode(&bytes, "audit entry")?;
            if entry.seq > archived {
                lines.push_str(&serde_json::to_string(&entry).map_err(|e| {
                    StoreError::Io(format!("cannot write an audit entry as JSON: {e}"))
                })?);
                lines.push('\n');
            }
        }
        append_synced(&path, lines.as_bytes())?;
        let _writing = self.writing();
        for seq in first..=through {
            self.audit.remove(seq.to_be_bytes())?;
            pruned.audit_archived += 1;
        }
        Ok(pruned)
    }

    pub fn audit_archive_path(&self) -> PathBuf {
        self.state_dir.join(AUDIT_ARCHIVE)
    }

    /// The archived part of the audit chain, oldest first (empty when
    /// nothing was archived yet).
    pub(super) fn archived_audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let path = self.audit_archive_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(StoreError::Io(format!(
                    "cannot read {}: {error}",
                    path.display()
                )));
            }
        };
        text.lines()
            .enumerate()
            .map(|(index, line)| {
                serde_json::from_str(line).map_err(|error| {
                    StoreError::Io(format!(
                        "{}:{}: not an audit entry: {error}",
                        path.display(),
                        index + 1
                    ))
                })
            })
            .collect()
    }
}

/// Removes the entries of `tree` (keyed by iteration) up to `cutoff`;
/// returns their iterations.
fn remove_through(tree: &sled::Tree, cutoff: u64) -> Result<Vec<u64>, StoreError> {
    let mut removed = Vec::new();
    while let Some((key, _)) = tree.first()? {
        let iteration = u64_key(&key);
        if iteration > cutoff {
            break;
        }
        tree.remove(key)?;
        // An iteration's siblings (longer keys) follow its own record.
        if removed.last() != Some(&iteration) {
            removed.push(iteration);
        }
    }
    Ok(removed)
}

/// The iteration a key starts with (a sibling's key goes on with its slot).
fn u64_key(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|head| head.try_into().ok())
        .map_or(u64::MAX, u64::from_be_bytes)
}

/// The sequence number of the archive's last entry, read from its tail.
fn last_archived_seq(path: &Path) -> Result<Option<u64>, StoreError> {
    let io = |e: std::io::Error| StoreError::Io(format!("cannot read {}: {e}", path.display()));
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io(error)),
    };
    let length = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)))
        .map_err(io)?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).map_err(io)?;
    Ok(tail
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<AuditEntry>(line).ok())
        .map(|entry| entry.seq))
}

fn append_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io =
        |e: std::io::Error| StoreError::Io(format!("cannot append to {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Iteration, JobStatus, Outcome, Usage, Variant};
    use crate::store::audit::{Decision, verify};
    use crate::store::{Durable, JobRecord, JobSession};

    fn iteration(number: u64) -> Iteration {
        Iteration {
            number,
            goal: "g".into(),
            capability: "fmt".into(),
            outcome: if number.is_multiple_of(2) {
                Outcome::Accepted
            } else {
                Outcome::Rejected
            },
            fitness_before: None,
            fitness_after: None,
            usage: Usage::default(),
            duration: std::time::Duration::ZERO,
            commit: None,
            summary: String::new(),
            finished_at_ms: 0,
            variant: Some(Box::new(Variant {
                iteration: number,
                commit: format!("c{number}"),
                parent: "p".into(),
                outcome: Outcome::Accepted,
                refused_by: None,
                rules_checked: Vec::new(),
                fitness_before: None,
                fitness_after: None,
                validation: crate::domain::Validation::NotRun,
                generated_tests: Vec::new(),
                started_from: None,
                change_id: String::new(),
            })),
        }
    }

    fn job(id: u64, iteration: u64, status: JobStatus) -> JobRecord {
        JobRecord {
            id,
            iteration,
            backend: crate::domain::BackendKind::Offline,
            capability: "fmt".into(),
            status,
            process_group: None,
            remote_id: None,
            started_at_ms: 0,
            ended_at_ms: None,
            error: None,
            session: JobSession::default(),
        }
    }

    #[tokio::test]
    async fn a_long_run_keeps_the_retention_and_the_whole_audit_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let retention = Retention {
            iterations: 10,
            audit_entries: 5,
        };
        // A job left running by iteration 2 is never pruned.
        store
            .put_job(&job(1, 2, JobStatus::Running), Durable::Now)
            .await
            .unwrap();
        for n in 1..=30 {
            store
                .put_job(&job(n + 1, n, JobStatus::Completed), Durable::AtCommit)
                .await
                .unwrap();
            store
                .audit_with(
                    Decision::new("governor", "permit.granted", format!("{n}")),
                    Durable::AtCommit,
                )
                .await
                .unwrap();
            store
                .commit_iteration(&iteration(n), None, &[], &[])
                .await
                .unwrap();
            store.prune(retention, n).unwrap();
        }
        let kept = store.iterations(100).unwrap();
        assert_eq!(kept.len(), 10, "the newest 10 iterations stay");
        assert_eq!(kept[0].number, 21);
        assert_eq!(store.variants(100).unwrap().len(), 10);
        // Counted beside the log: all 30, though 20 records are gone.
        let counts = store.outcome_counts().unwrap();
        assert_eq!((counts.kept, counts.rejected), (15, 15));
        // The running job and the jobs of the kept iterations.
        let jobs = store.jobs().unwrap();
        assert_eq!(jobs[0].id, 1);
        assert_eq!(jobs.len(), 1 + 10, "{jobs:?}");
        // The chain is whole across the archive and the store, which holds
        // only its newest entries.
        let chain = store.audit_entries().unwrap();
        assert_eq!(verify(&chain), Ok(30));
        assert!(store.audit.len() < 10, "{}", store.audit.len());
        // A crash after the archive was written but before the store let go
        // of those entries: each entry is still read once.
        let stored: Vec<AuditEntry> = store
            .audit
            .iter()
            .map(|e| decode(&e.unwrap().1, "audit entry").unwrap())
            .collect();
        let lines: String = stored
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        append_synced(&store.audit_archive_path(), lines.as_bytes()).unwrap();
        assert_eq!(verify(&store.audit_entries().unwrap()), Ok(30));
    }
}
