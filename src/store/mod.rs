//! The store: the only module that touches sled. It owns the trees (run,
//! actor snapshots, iteration log, experiences, cognition jobs, research
//! cache), the codec, and durability: nothing is reported as committed before
//! `flush_async` has returned, because sled on its own syncs only every 500 ms.
#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the store is the one module that opens and holds sled"
)]

pub mod audit;
pub mod codec;
mod convert;
pub mod records;
mod retention;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

pub use codec::CodecError;
pub use records::{
    ApprovalRecord, BackupRecord, JobRecord, JobRecordV1, JobSession, McpJobRecord, ResearchRecord,
    ResearchRecordV1, RunRecord, SnapshotRecord, UpgradeRecord, VariantRecord,
};

pub use retention::{AUDIT_ARCHIVE, Pruned, Retention};

use crate::domain::{Experience, Iteration, OutcomeCounts, Sibling, Variant};
use records::{ExperienceRecord, ExperienceRecordV1, ExperienceRecordV2, IterationRecord};

/// Fails the store call it stands in with an injected sled error when the
/// named failpoint is set: how a test makes one request's write fail while
/// the process lives on (a `crash_point!` would end it). Only for functions
/// of the store that return `Result<_, StoreError>`.
macro_rules! store_fault {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            return Err(crate::store::StoreError::Sled(sled::Error::Io(
                std::io::Error::other(concat!("injected by the failpoint ", $name)),
            )));
        }
    };
}

const RUN_KEY: &[u8] = b"run";
const PAUSE_REASON_KEY: &[u8] = b"pause_reason";
const WORKSPACE_KEY: &[u8] = b"workspace";
/// Committed iterations by outcome, kept beside the log so that counting
/// them does not read it (and survives its pruning).
const OUTCOMES_KEY: &[u8] = b"outcomes";
/// The registry of tools discovered on MCP servers.
const TOOLS_KEY: &[u8] = b"tools";
/// Self-upgrade attempts, by iteration: `upgrade/<iteration, big-endian>`.
const UPGRADE_PREFIX: &[u8] = b"upgrade/";
/// The second witness of what was committed, beside the store: a plain file
/// holding the last committed iteration, replaced after every flushed commit.
/// sled can come back from a damaged file with its last records silently
/// missing; this file (with the agent branch) is how that is noticed.
const WITNESS_FILE: &str = "committed";
/// The trees a backup carries, in order.
const TREES: [&str; 10] = [
    "meta",
    "snapshots",
    "iterations",
    "experiences",
    "jobs",
    "research",
    "mcp_jobs",
    "approvals",
    "variants",
    "audit",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state directory {0} is in use by a running agent; talk to it with `agent ctl --state {0}` or stop it first"
    )]
    InUse(PathBuf),
    /// `message` is sled's text without the debug dump it may carry;
    /// `source` is sled's error itself, for whoever walks the chain.
    #[error("cannot open the store in {path}: {message}")]
    Open {
        path: PathBuf,
        message: String,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the store in {0} is damaged (sled found corrupted data); restore it from a backup with `agent restore`, or move the state directory away to start over"
    )]
    Damaged(PathBuf),
    #[error("{0}")]
    Backup(String),
    /// A sled read, write or flush failed; the error is kept as the source
    /// (the text shown is the one `Io` showed before it was kept).
    #[error("store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    /// A transaction failed in sled: the text is the transaction error's
    /// debug form, as it always was; sled's own error is the source.
    #[error("store I/O failed: {message}")]
    Transaction {
        message: String,
        #[source]
        source: sled::Error,
    },
    /// A failure outside sled (the witness file, an archive), as text.
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("a stored {what} is unreadable: {source}")]
    Corrupt {
        what: &'static str,
        source: CodecError,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl From<sled::transaction::TransactionError<()>> for StoreError {
    fn from(error: sled::transaction::TransactionError<()>) -> Self {
        let message = format!("{error:?}");
        match error {
            sled::transaction::TransactionError::Storage(source) => {
                StoreError::Transaction { message, source }
            }
            // Nothing in this store aborts a transaction on purpose.
            sled::transaction::TransactionError::Abort(()) => StoreError::Io(message),
        }
    }
}

/// The most sled keeps of the store in memory.
const CACHE_BYTES: u64 = 1024 * 1024;

static FLUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// When a write must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Flushed before the call returns: the write is acknowledged to
    /// someone, or must survive a crash of the iteration it belongs to.
    Now,
    /// Made durable by the iteration's commit (one flush for all). A crash
    /// before the commit loses it together with the iteration, which runs
    /// again and writes it again.
    AtCommit,
}

fn upgrade_key(iteration: u64) -> Vec<u8> {
    [UPGRADE_PREFIX, &iteration.to_be_bytes()].concat()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An open store. Cheap to clone: sled trees are reference-counted.
#[derive(Clone)]
pub struct Store {
    state_dir: PathBuf,
    /// Writers share it; a backup copies while no writer runs, and takes it
    /// alone only when writers keep overlapping its copy.
    writes: Arc<WriteGate>,
    db: sled::Db,
    meta: sled::Tree,
    snapshots: sled::Tree,
    iterations: sled::Tree,
    experiences: sled::Tree,
    jobs: sled::Tree,
    research: sled::Tree,
    mcp_jobs: sled::Tree,
    approvals: sled::Tree,
    /// The variant archive: each change an iteration produced, by iteration.
    variants: sled::Tree,
    /// The audit chain, by sequence number.
    audit: sled::Tree,
    /// Held while an entry is chained to the last one (never across an await).
    chaining: Arc<std::sync::Mutex<()>>,
    /// Held while an iteration's transaction runs (never across an await).
    committing: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store under `state_dir/store`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("store");
        // sled caches up to 1 GB of pages by default, so a long run's memory
        // would grow with its store; what is read often (snapshots, the
        // newest records) is small.
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|error| {
                if is_lock_error(&error) {
                    StoreError::InUse(state_dir.to_path_buf())
                } else if matches!(error, sled::Error::Corruption { .. }) {
                    StoreError::Damaged(path.clone())
                } else {
                    StoreError::Open {
                        path: path.clone(),
                        // sled's text may carry a debug dump after the cause.
                        message: error
                            .to_string()
                            .split(" backtrace")
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                        source: error,
                    }
                }
            })?;
        Ok(Store {
            state_dir: state_dir.to_path_buf(),
            writes: Arc::default(),
            meta: db.open_tree("meta")?,
            snapshots: db.open_tree("snapshots")?,
            iterations: db.open_tree("iterations")?,
            experiences: db.open_tree("experiences")?,
            jobs: db.open_tree("jobs")?,
            research: db.open_tree("research")?,
            mcp_jobs: db.open_tree("mcp_jobs")?,
            approvals: db.open_tree("approvals")?,
            variants: db.open_tree("variants")?,
            audit: db.open_tree("audit")?,
            chaining: Arc::default(),
            committing: Arc::default(),
            db,
        })
    }

    /// Taken by every write, so that a backup sees it (and, when it copies
    /// alone, waits for it).
    fn writing(&self) -> Writing<'_> {
        let shared = self
            .writes
            .lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.writes.started.fetch_add(1, Ordering::SeqCst);
        Writing {
            _shared: shared,
            gate: &self.writes,
        }
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        FLUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.db.flush_async().await?;
        Ok(())
    }

    /// How many flushes this process has asked for, every store counted:
    /// the overhead benchmark divides it by the iterations.
    pub fn flushes() -> u64 {
        FLUSHES.load(std::sync::atomic::Ordering::Relaxed)
    }

    // ------------------------------------------------------------- run --

    pub fn run(&self) -> Result<Option<RunRecord>, StoreError> {
        self.get(&self.meta, RUN_KEY, "run record")
    }

    pub async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.meta.insert(RUN_KEY, codec::encode(run)?)?;
        }
        self.flush().await
    }

    /// The workspace (canonical path) this state directory belongs to.
    pub fn workspace_source(&self) -> Result<Option<String>, StoreError> {
        self.get(&self.meta, WORKSPACE_KEY, "workspace path")
    }

    pub async fn put_workspace_source(&self, path: &str) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.meta
                .insert(WORKSPACE_KEY, codec::encode(&path.to_string())?)?;
        }
        self.flush().await
    }

    /// Why the run was paused, when it was paused for a reason (not by an
    /// operator's plain `pause`).
    pub fn pause_reason(&self) -> Result<Option<String>, StoreError> {
        self.get(&self.meta, PAUSE_REASON_KEY, "pause reason")
    }

    pub async fn put_pause_reason(&self, reason: Option<&str>) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            match reason {
                Some(reason) => self
                    .meta
                    .insert(PAUSE_REASON_KEY, codec::encode(&reason.to_string())?)?,
                None => self.meta.remove(PAUSE_REASON_KEY)?,
            };
        }
        self.flush().await
    }

    // --------------------------------------------------------- upgrades --

    /// Records (or replaces) the self-upgrade attempt of its iteration.
    pub async fn put_upgrade(&self, attempt: &UpgradeRecord) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.meta
                .insert(upgrade_key(attempt.iteration), codec::encode(attempt)?)?;
        }
        self.flush().await
    }

    /// Every self-upgrade attempt, oldest first.
    pub fn upgrades(&self) -> Result<Vec<UpgradeRecord>, StoreError> {
        self.meta
            .scan_prefix(UPGRADE_PREFIX)
            .map(|entry| {
                let (_, bytes) = entry?;
                decode(&bytes, "upgrade attempt")
            })
            .collect()
    }

    /// Marks the archived variant of `iteration` as a failed upgrade, with
    /// why; `false` when there is no such variant.
    pub async fn mark_upgrade_failed(
        &self,
        iteration: u64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let key = iteration.to_be_bytes();
        let Some(mut record) = self.get::<VariantRecord>(&self.variants, &key, "variant")? else {
            return Ok(false);
        };
        record.outcome = crate::domain::Outcome::UpgradeFailed;
        record.refused_by = Some(format!("upgrade: {reason}"));
        {
            let _writing = self.writing();
            self.variants.insert(key, codec::encode(&record)?)?;
        }
        self.flush().await?;
        Ok(true)
    }

    // -------------------------------------------------------- snapshots --

    pub fn snapshot(&self, actor: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        self.get(&self.snapshots, actor.as_bytes(), "actor snapshot")
    }

    /// Writes one actor's snapshot on its own (for facts that are durable
    /// whatever happens to the iteration, such as money spent) and flushes.
    pub async fn put_snapshot(&self, record: &SnapshotRecord) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.snapshots
                .insert(record.actor.as_bytes(), codec::encode(record)?)?;
        }
        self.flush().await
    }

    // ------------------------------------------------------- iterations --

    /// Commits an iteration: its record, its experience, the siblings its
    /// candidates left (each experience and archived change, keyed by the
    /// iteration and the candidate's slot), the outcome counts and every
    /// actor's snapshot in one transaction, flushed and witnessed. A repeated
    /// commit of the same iteration replaces it and does not count twice.
    pub async fn commit_iteration(
        &self,
        iteration: &Iteration,
        experience: Option<&Experience>,
        siblings: &[Sibling],
        snapshots: &[SnapshotRecord],
    ) -> Result<(), StoreError> {
        let key = iteration.number.to_be_bytes();
        let record_bytes = codec::encode(&IterationRecord::from(iteration))?;
        let experience_bytes = experience
            .map(|e| codec::encode(&ExperienceRecord::from(e)))
            .transpose()?;
        let snapshot_bytes: Vec<(Vec<u8>, Vec<u8>)> = snapshots
            .iter()
            .map(|s| Ok((s.actor.as_bytes().to_vec(), codec::encode(s)?)))
            .collect::<Result<_, CodecError>>()?;
        let variant_bytes = iteration
            .variant
            .as_ref()
            .map(|v| codec::encode(&VariantRecord::from(&**v)))
            .transpose()?;
        let sibling_bytes = sibling_records(iteration.number, siblings)?;
        let writing = self.writing();
        let committing = self
            .committing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Commits are taken one at a time (`committing`), so the counts read
        // here are the ones this transaction replaces, written with the
        // record; a repeated commit of the same iteration does not count
        // twice. (Reading them inside the transaction instead hangs sled
        // under concurrent commits.)
        let mut outcomes = self.outcome_counts()?;
        if !self.iterations.contains_key(key)? {
            outcomes.add(iteration.outcome);
        }
        let outcome_bytes = codec::encode(&records::OutcomesRecord::from(outcomes))?;
        (
            &self.iterations,
            &self.experiences,
            &self.snapshots,
            &self.variants,
            &self.meta,
        )
            .transaction(|(iterations, experiences, snapshots, variants, meta)| {
                iterations.insert(&key, record_bytes.as_slice())?;
                meta.insert(OUTCOMES_KEY, outcome_bytes.as_slice())?;
                if let Some(bytes) = &experience_bytes {
                    experiences.insert(&key, bytes.as_slice())?;
                }
                if let Some(bytes) = &variant_bytes {
                    variants.insert(&key, bytes.as_slice())?;
                }
                for (key, experience, variant) in &sibling_bytes {
                    experiences.insert(key.as_slice(), experience.as_slice())?;
                    if let Some(bytes) = variant {
                        variants.insert(key.as_slice(), bytes.as_slice())?;
                    }
                }
                for (actor, bytes) in &snapshot_bytes {
                    snapshots.insert(actor.as_slice(), bytes.as_slice())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(StoreError::from)?;
        drop(committing);
        drop(writing);
        crash_point!("store.before_flush");
        self.flush().await?;
        self.witness_durably(iteration.number).await
    }

    /// The other candidates of `iteration`, by slot: what the learner took
    /// from each and the change it left, if any, archived beside the one
    /// committed.
    pub fn siblings(&self, iteration: u64) -> Result<Vec<Sibling>, StoreError> {
        let mut siblings = Vec::new();
        for entry in self.experiences.scan_prefix(iteration.to_be_bytes()) {
            let (key, bytes) = entry?;
            let Some(slot) = sibling_slot(&key) else {
                continue;
            };
            let variant = self
                .get::<VariantRecord>(&self.variants, &key, "variant")?
                .map(Variant::from);
            siblings.push(Sibling {
                slot,
                experience: decode_experience(&bytes).map(Experience::from)?,
                variant,
            });
        }
        Ok(siblings)
    }

    /// `witness` on the blocking pool: its fsync would otherwise hold one of
    /// the runtime's worker threads for as long as the disk takes.
    async fn witness_durably(&self, iteration: u64) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.witness(iteration))
            .await
            .map_err(|e| StoreError::Io(format!("the witness task failed: {e}")))?
    }

    /// Records `iteration` as the last committed one in the witness file,
    /// durably (written aside, synced, renamed over).
    fn witness(&self, iteration: u64) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.state_dir.join(WITNESS_FILE);
        let aside = path.with_extension("tmp");
        let io =
            |e: std::io::Error| StoreError::Io(format!("cannot write {}: {e}", path.display()));
        // One witness written at a time: they share the file written aside.
        let _committing = self
            .committing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut file = std::fs::File::create(&aside).map_err(io)?;
        file.write_all(format!("{iteration}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        std::fs::rename(&aside, &path).map_err(io)
    }

    /// The last committed iteration according to the witness file; `None`
    /// for a state directory written before the file existed.
    pub fn witnessed(&self) -> Option<u64> {
        std::fs::read_to_string(self.state_dir.join(WITNESS_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Committed iterations by outcome. A store written before the counts
    /// were kept counts its log once.
    pub fn outcome_counts(&self) -> Result<OutcomeCounts, StoreError> {
        if let Some(record) =
            self.get::<records::OutcomesRecord>(&self.meta, OUTCOMES_KEY, "outcome counts")?
        {
            return Ok(record.into());
        }
        let mut counts = OutcomeCounts::default();
        for entry in self.iterations.iter() {
            let (_, bytes) = entry?;
            counts.add(decode::<IterationRecord>(&bytes, "iteration record")?.outcome);
        }
        Ok(counts)
    }

    pub fn last_iteration(&self) -> Result<Option<Iteration>, StoreError> {
        match self.iterations.last()? {
            Some((_, bytes)) => Ok(Some(
                self.with_variant(decode::<IterationRecord>(&bytes, "iteration record")?)?,
            )),
            None => Ok(None),
        }
    }

    /// A committed iteration with its archived variant.
    fn with_variant(&self, record: IterationRecord) -> Result<Iteration, StoreError> {
        let variant = self.variant(record.number)?;
        let mut iteration = Iteration::from(record);
        iteration.variant = variant.map(Box::new);
        Ok(iteration)
    }

    /// The archived variant of `iteration`, if it produced a change.
    pub fn variant(&self, iteration: u64) -> Result<Option<Variant>, StoreError> {
        Ok(self
            .get::<VariantRecord>(&self.variants, &iteration.to_be_bytes(), "variant")?
            .map(Variant::from))
    }

    /// The last `count` archived variants, oldest first.
    pub fn variants(&self, count: usize) -> Result<Vec<Variant>, StoreError> {
        self.variants_after(0, count)
    }

    /// Up to `count` archived variants of iterations after `iteration`,
    /// oldest first (the newest `count` when there are more).
    pub fn variants_after(&self, iteration: u64, count: usize) -> Result<Vec<Variant>, StoreError> {
        let mut variants: Vec<Variant> = self
            .variants
            .range((iteration + 1).to_be_bytes()..)
            .rev()
            // An iteration's own variant; its candidates' siblings are read
            // with `siblings`.
            .filter(|entry| entry.as_ref().map_or(true, |(key, _)| key.len() == 8))
            .take(count)
            .map(|entry| {
                let (_, bytes) = entry?;
                decode::<VariantRecord>(&bytes, "variant").map(Variant::from)
            })
            .collect::<Result<_, StoreError>>()?;
        variants.reverse();
        Ok(variants)
    }

    /// The last `count` committed iterations, oldest first.
    pub fn iterations(&self, count: usize) -> Result<Vec<Iteration>, StoreError> {
        let mut records: Vec<Iteration> = self
            .iterations
            .iter()
            .rev()
            .take(count)
            .map(|entry| {
                let (_, bytes) = entry?;
                self.with_variant(decode::<IterationRecord>(&bytes, "iteration record")?)
            })
            .collect::<Result<_, StoreError>>()?;
        records.reverse();
        Ok(records)
    }

    /// The last `count` experiences, oldest first.
    pub fn experiences(&self, count: usize) -> Result<Vec<Experience>, StoreError> {
        let mut records: Vec<Experience> = self
            .experiences
            .iter()
            .rev()
            .take(count)
            .map(|entry| {
                let (_, bytes) = entry?;
                decode_experience(&bytes).map(Experience::from)
            })
            .collect::<Result<_, StoreError>>()?;
        records.reverse();
        Ok(records)
    }

    // ------------------------------------------------------------ audit --

    /// Appends a decision to the audit chain and makes it durable; call it
    /// before the decision is acknowledged.
    pub async fn audit(&self, decision: audit::Decision) -> Result<audit::AuditEntry, StoreError> {
        self.audit_with(decision, Durable::Now).await
    }

    /// Appends a decision to the audit chain; with `Durable::AtCommit` it is
    /// made durable by the iteration's commit (a decision taken inside an
    /// iteration, which a crash before the commit makes again).
    pub async fn audit_with(
        &self,
        decision: audit::Decision,
        durable: Durable,
    ) -> Result<audit::AuditEntry, StoreError> {
        let entry = {
            let _writing = self.writing();
            let _chaining = self.chaining.lock().unwrap_or_else(|p| p.into_inner());
            let last = match self.audit.last()? {
                Some((_, bytes)) => Some(decode::<audit::AuditEntry>(&bytes, "audit entry")?),
                None => None,
            };
            let entry = audit::chain(last.as_ref(), decision, now_ms());
            self.audit
                .insert(entry.seq.to_be_bytes(), codec::encode(&entry)?)?;
            entry
        };
        if durable == Durable::Now {
            self.flush().await?;
        }
        Ok(entry)
    }

    /// The whole audit chain, oldest first: the archived part (see
    /// `retention`), then what the store holds.
    pub fn audit_entries(&self) -> Result<Vec<audit::AuditEntry>, StoreError> {
        let mut entries = self.archived_audit()?;
        let archived = entries.last().map_or(0, |e| e.seq);
        for entry in self.audit.iter() {
            let (_, bytes) = entry?;
            let entry: audit::AuditEntry = decode(&bytes, "audit entry")?;
            // Archived just before a crash and still here: once is enough.
            if entry.seq > archived {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    // ------------------------------------------------------------- jobs --

    /// A fresh, never reused job id.
    pub fn next_job_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    pub async fn put_job(&self, job: &JobRecord, durable: Durable) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.jobs
                .insert(job.id.to_be_bytes(), codec::encode(job)?)?;
        }
        if durable == Durable::Now {
            self.flush().await?;
        }
        Ok(())
    }

    /// Every kept job, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.jobs
            .iter()
            .map(|entry| decode_job(&entry?.1))
            .collect()
    }

    /// The newest `count` jobs, oldest first.
    pub fn last_jobs(&self, count: usize) -> Result<Vec<JobRecord>, StoreError> {
        let mut jobs: Vec<JobRecord> = self
            .jobs
            .iter()
            .rev()
            .take(count)
            .map(|entry| decode_job(&entry?.1))
            .collect::<Result<_, _>>()?;
        jobs.reverse();
        Ok(jobs)
    }

    pub fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        self.jobs
            .get(id.to_be_bytes())?
            .map(|bytes| decode_job(&bytes))
            .transpose()
    }

    /// The jobs of `iteration`, newest first. Job ids grow with time and an
    /// iteration's jobs are the newest when it runs, so this reads from the
    /// end and stops at the first job of an earlier iteration.
    pub fn jobs_of(&self, iteration: u64) -> Result<Vec<JobRecord>, StoreError> {
        let mut found = Vec::new();
        for entry in self.jobs.iter().rev() {
            let job = decode_job(&entry?.1)?;
            if job.iteration < iteration {
                break;
            }
            if job.iteration == iteration {
                found.push(job);
            }
        }
        Ok(found)
    }

    // --------------------------------------------------------- mcp jobs --

    pub async fn put_mcp_job(&self, job: &McpJobRecord) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.mcp_jobs
                .insert(job.id.as_bytes(), codec::encode(job)?)?;
        }
        self.flush().await
    }

    pub fn mcp_job(&self, id: &str) -> Result<Option<McpJobRecord>, StoreError> {
        self.get(&self.mcp_jobs, id.as_bytes(), "MCP job record")
    }

    /// Every MCP job, oldest first (ids are zero-padded sequence numbers).
    pub fn mcp_jobs(&self) -> Result<Vec<McpJobRecord>, StoreError> {
        self.mcp_jobs
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                decode(&bytes, "MCP job record")
            })
            .collect()
    }

    // -------------------------------------------------------- approvals --

    /// Writes an approval and flushes: a decision is acknowledged only once
    /// it is durable.
    pub async fn put_approval(&self, approval: &ApprovalRecord) -> Result<(), StoreError> {
        store_fault!("store.put_approval");
        {
            let _writing = self.writing();
            self.approvals
                .insert(approval.id.as_bytes(), codec::encode(approval)?)?;
        }
        self.flush().await
    }

    /// Every approval, oldest first (ids sort by iteration and attempt).
    pub fn approvals(&self) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.approvals
            .iter()
            .map(|entry| {
                let (_, bytes) = entry?;
                decode(&bytes, "approval")
            })
            .collect()
    }

    // --------------------------------------------------------- research --

    /// Drops a cached research answer; whether there was one.
    pub async fn remove_research(&self, topic: &str) -> Result<bool, StoreError> {
        let removed = {
            let _writing = self.writing();
            self.research.remove(topic.as_bytes())?.is_some()
        };
        self.flush().await?;
        Ok(removed)
    }

    pub fn research(&self, topic: &str) -> Result<Option<ResearchRecord>, StoreError> {
        let Some(bytes) = self.research.get(topic.as_bytes())? else {
            return Ok(None);
        };
        decode(&bytes, "research entry")
            .or_else(|error| {
                decode::<ResearchRecordV1>(&bytes, "research entry")
                    .map(ResearchRecord::from)
                    .map_err(|_| error)
            })
            .map(Some)
    }

    /// How many answers the research cache holds and their size in bytes.
    pub fn research_size(&self) -> Result<(u64, u64), StoreError> {
        let mut entries = 0;
        let mut bytes = 0;
        for entry in self.research.iter() {
            let (key, value) = entry?;
            entries += 1;
            bytes += (key.len() + value.len()) as u64;
        }
        Ok((entries, bytes))
    }

    pub async fn put_research(&self, entry: &ResearchRecord) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            self.research
                .insert(entry.topic.as_bytes(), codec::encode(entry)?)?;
        }
        self.flush().await
    }

    // ------------------------------------------------------------ tools --

    /// Replaces one server's entries in the tool registry (durable at once).
    pub async fn put_tools(
        &self,
        server: &str,
        tools: &[crate::domain::DiscoveredTool],
    ) -> Result<(), StoreError> {
        {
            let _writing = self.writing();
            let mut records: Vec<records::ToolRecord> = self
                .tool_records()?
                .into_iter()
                .filter(|r| r.server != server)
                .collect();
            records.extend(tools.iter().map(records::ToolRecord::from));
            self.meta.insert(TOOLS_KEY, codec::encode(&records)?)?;
        }
        self.flush().await
    }

    /// The tool registry: every tool discovered, registered or not.
    pub fn tools(&self) -> Result<Vec<crate::domain::DiscoveredTool>, StoreError> {
        Ok(self
            .tool_records()?
            .into_iter()
            .map(crate::domain::DiscoveredTool::from)
            .collect())
    }

    fn tool_records(&self) -> Result<Vec<records::ToolRecord>, StoreError> {
        Ok(self
            .get(&self.meta, TOOLS_KEY, "tool registry")?
            .unwrap_or_default())
    }

    // ----------------------------------------------------------- backup --

    /// A consistent copy of every tree and the witness, as one record's
    /// bytes: a state the store had. Blocks (it reads every tree): call it
    /// off the runtime's worker threads (`backup_to` does).
    ///
    /// It copies without stopping writers, and keeps the copy when no write
    /// ran during it (writers are counted as they start and end); a store
    /// written to that often is copied again, and after `OPTIMISTIC_COPIES`
    /// such tries alone, writes waiting, as every copy was before. Either
    /// way the copy is encoded after writers are free again.
    pub fn export(&self) -> Result<(Vec<u8>, u64), StoreError> {
        let record = self.consistent_copy()?;
        let iterations = record.iterations;
        Ok((codec::encode(&record)?, iterations))
    }

    /// A copy no write overlapped (see `export`).
    fn consistent_copy(&self) -> Result<BackupRecord, StoreError> {
        for _ in 0..OPTIMISTIC_COPIES {
            let started = self.writes.started.load(Ordering::SeqCst);
            if self.writes.finished.load(Ordering::SeqCst) == started {
                let copy = self.copy()?;
                if self.writes.started.load(Ordering::SeqCst) == started {
                    return Ok(copy);
                }
            }
            // A writer is at work: let it finish before copying again.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::info!("backup: writes kept overlapping the copy; copying with writes held");
        let _alone = self.writes.lock.write().unwrap_or_else(|p| p.into_inner());
        self.copy()
    }

    /// `export` then `write_backup` to `to`, on the blocking pool. Returns
    /// the iterations the backup holds.
    pub async fn backup_to(&self, to: &Path) -> Result<u64, StoreError> {
        let (store, to) = (self.clone(), to.to_path_buf());
        tokio::task::spawn_blocking(move || {
            tracing::info!(to = %to.display(), "backup: copying the store");
            let (bytes, iterations) = store.export()?;
            write_backup(&to, &bytes)?;
            Ok(iterations)
        })
        .await
        .map_err(|e| StoreError::Io(format!("the backup task failed: {e}")))?
    }

    /// Every tree and the witness as they read now.
    fn copy(&self) -> Result<BackupRecord, StoreError> {
        let mut trees = Vec::with_capacity(TREES.len());
        for name in TREES {
            // A test holds a backup open here, tree by tree, to see the
            // daemon answer meanwhile.
            delay_point!("store.export.tree");
            let tree = self.db.open_tree(name)?;
            let pairs = tree
                .iter()
                .map(|entry| {
                    let (key, value) = entry?;
                    Ok((key.to_vec(), value.to_vec()))
                })
                .collect::<Result<Vec<_>, sled::Error>>()?;
            trees.push((name.to_string(), pairs));
        }
        Ok(BackupRecord {
            created_at_ms: now_ms(),
            iterations: self.last_iteration()?.map_or(0, |i| i.number),
            witnessed: self.witnessed(),
            trees,
        })
    }

    /// Creates the store of `state_dir` from a backup; refuses when the
    /// state directory already holds a store. Returns the iterations it holds.
    pub async fn import(state_dir: &Path, bytes: &[u8]) -> Result<u64, StoreError> {
        let record: BackupRecord = codec::decode(bytes).map_err(|e| {
            StoreError::Backup(format!("the file is not a backup of an agent store: {e}"))
        })?;
        if state_dir.join("store").exists() {
            return Err(StoreError::Backup(format!(
                "{} already holds a store; move it away first (restore never overwrites)",
                state_dir.display()
            )));
        }
        std::fs::create_dir_all(state_dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", state_dir.display())))?;
        let store = Store::open(state_dir)?;
        for (name, pairs) in &record.trees {
            if !TREES.contains(&name.as_str()) {
                return Err(StoreError::Backup(format!(
                    "the backup holds an unknown tree \"{name}\""
                )));
            }
            let tree = store.db.open_tree(name)?;
            for (key, value) in pairs {
                tree.insert(key.as_slice(), value.as_slice())?;
            }
        }
        store.flush().await?;
        if let Some(witnessed) = record.witnessed {
            store.witness_durably(witnessed).await?;
        }
        Ok(record.iterations)
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key)? {
            Some(bytes) => Ok(Some(decode(&bytes, what)?)),
            None => Ok(None),
        }
    }
}

/// How many times a backup copies while writers run before it copies alone.
const OPTIMISTIC_COPIES: usize = 5;

/// What writers share and a backup watches: a backup's copy is kept when no
/// writer started during it and none was at work when it began.
#[derive(Default)]
struct WriteGate {
    lock: RwLock<()>,
    started: AtomicU64,
    finished: AtomicU64,
}

/// One writer at work; counted as finished when dropped.
struct Writing<'a> {
    _shared: RwLockReadGuard<'a, ()>,
    gate: &'a WriteGate,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.gate.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// Writes a backup file durably (aside, synced, renamed over).
pub fn write_backup(to: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let io = |e: std::io::Error| StoreError::Backup(format!("cannot write {}: {e}", to.display()));
    let aside = to.with_extension("partial");
    let mut file = std::fs::File::create(&aside).map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&aside, to).map_err(io)
}

/// An experience record in the current layout or an earlier one.
fn decode_experience(bytes: &[u8]) -> Result<ExperienceRecord, StoreError> {
    decode(bytes, "experience").or_else(|error| {
        decode::<ExperienceRecordV2>(bytes, "experience")
            .or_else(|_| {
                decode::<ExperienceRecordV1>(bytes, "experience").map(ExperienceRecordV2::from)
            })
            .map(ExperienceRecord::from)
            .map_err(|_| error)
    })
}

/// A job record in the current layout or the first one.
fn decode_job(bytes: &[u8]) -> Result<JobRecord, StoreError> {
    decode(bytes, "job record").or_else(|error| {
        decode::<JobRecordV1>(bytes, "job record")
            .map(JobRecord::from)
            .map_err(|_| error)
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StoreError> {
    codec::decode(bytes).map_err(|source| StoreError::Corrupt { what, source })
}

fn is_lock_error(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().to_lowercase().contains("lock")
        }
        _ => false,
    }
}

/// Each sibling's key with its experience's and its variant's bytes.
type SiblingBytes = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn sibling_records(iteration: u64, siblings: &[Sibling]) -> Result<Vec<SiblingBytes>, CodecError> {
    siblings
        .iter()
        .map(|sibling| {
            let experience = codec::encode(&ExperienceRecord::from(&sibling.experience))?;
            let variant = sibling
                .variant
                .as_ref()
                .map(|v| codec::encode(&VariantRecord::from(v)))
                .transpose()?;
            Ok((sibling_key(iteration, sibling.slot), experience, variant))
        })
        .collect()
}

/// The key of a sibling's record: its iteration, then its slot, so that an
/// iteration's siblings sort right after its own record and go with it when
/// the retention prunes.
fn sibling_key(iteration: u64, slot: u32) -> Vec<u8> {
    let mut key = iteration.to_be_bytes().to_vec();
    key.extend_from_slice(&slot.to_be_bytes());
    key
}

/// The slot of a sibling's key; `None` for an iteration's own record.
fn sibling_slot(key: &[u8]) -> Option<u32> {
    let slot: [u8; 4] = key.get(8..)?.try_into().ok()?;
    Some(u32::from_be_bytes(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::{Outcome, Usage};

    fn record(number: u64) -> Iteration {
        Iteration {
            number,
            goal: "g".into(),
            capability: "fmt".into(),
            outcome: Outcome::Accepted,
            fitness_before: Some(3.0),
            fitness_after: Some(2.0),
            usage: Usage {
                input_tokens: 1,
                output_tokens: 2,
                cost_usd: 0.0,
            },
            duration: std::time::Duration::from_millis(5),
            commit: None,
            summary: String::new(),
            finished_at_ms: 0,
            variant: None,
        }
    }

    fn experience(iteration: u64, capability: &str) -> Experience {
        Experience {
            iteration,
            capability: capability.into(),
            prompt: None,
            signals: Default::default(),
            outcome: Outcome::Rejected,
            fitness_before: Some(3.0),
            fitness_after: Some(4.0),
            files_changed: 1,
            usage: Usage::default(),
            duration: std::time::Duration::from_millis(5),
            error_signature: None,
            denied_tools: Vec::new(),
            repaired: false,
        }
    }

    #[tokio::test]
    async fn an_iteration_is_counted_once_and_committed_with_its_siblings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in 1..=6 {
            let mut iteration = record(n);
            iteration.outcome = if n % 2 == 0 {
                Outcome::Accepted
            } else {
                Outcome::NoChange
            };
            let siblings: Vec<Sibling> = (1..=3)
                .map(|slot| Sibling {
                    slot,
                    experience: experience(n, "other"),
                    variant: None,
                })
                .collect();
            let chosen = experience(n, "chosen");
            // Each twice: a repeated commit replaces, never counts again.
            for _ in 0..2 {
                store
                    .commit_iteration(&iteration, Some(&chosen), &siblings, &[])
                    .await
                    .unwrap();
            }
        }
        let counts = store.outcome_counts().unwrap();
        assert_eq!((counts.kept, counts.no_change), (3, 3));
        let experiences = store.experiences(1000).unwrap();
        assert_eq!(
            experiences.len(),
            6 * 4,
            "the chosen and three siblings each"
        );
        let of_three: Vec<&str> = experiences
            .iter()
            .filter(|e| e.iteration == 3)
            .map(|e| e.capability.as_str())
            .collect();
        assert_eq!(
            of_three,
            ["chosen", "other", "other", "other"],
            "an iteration's experiences sort together"
        );
        // The retention prunes an iteration with its siblings.
        let pruned = store
            .prune(
                Retention {
                    iterations: 2,
                    ..Default::default()
                },
                6,
            )
            .unwrap();
        assert_eq!(pruned.variants, Vec::<u64>::new());
        let left = store.experiences(1000).unwrap();
        assert!(left.iter().all(|e| e.iteration > 4), "{left:?}");
    }

    #[tokio::test]
    async fn a_committed_iteration_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let snapshot = SnapshotRecord {
                actor: "learner".into(),
                schema: 1,
                iteration: 1,
                body: vec![1, 2, 3],
            };
            store
                .commit_iteration(&record(1), None, &[], std::slice::from_ref(&snapshot))
                .await
                .unwrap();
            let mut refused = record(2);
            refused.variant = Some(Box::new(crate::domain::Variant {
                iteration: 2,
                commit: "c2".into(),
                parent: "c1".into(),
                outcome: Outcome::Rejected,
                refused_by: Some(crate::domain::RefusedBy::Rule("no-new-unsafe".into())),
                rules_checked: vec!["protected-path".into()],
                fitness_before: Some(3.0),
                fitness_after: None,
                validation: crate::domain::Validation::NotRun,
                generated_tests: Vec::new(),
                started_from: None,
                change_id: String::new(),
            }));
            store
                .commit_iteration(&refused, None, &[], &[])
                .await
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.last_iteration().unwrap().unwrap().number, 2);
        assert_eq!(store.iterations(10).unwrap().len(), 2);
        let variants = store.variants(10).unwrap();
        assert_eq!(variants.len(), 1, "only the iteration with a change");
        assert_eq!(
            variants[0].refused_by.as_ref().map(|by| by.as_str()),
            Some("no-new-unsafe")
        );
        assert_eq!(
            store.last_iteration().unwrap().unwrap().variant,
            Some(Box::new(variants[0].clone())),
            "an iteration reads back with its variant"
        );
        assert_eq!(
            store.snapshot("learner").unwrap().unwrap().body,
            vec![1, 2, 3]
        );
    }

    #[test]
    fn statuses_are_stored_as_their_names() {
        // Records written before statuses were typed held these strings; the
        // typed records must read them back (and write them) unchanged.
        #[derive(serde::Serialize)]
        struct OldRun {
            goal: String,
            created_at_ms: u64,
            state: String,
            last_escalation: Option<String>,
        }
        let old = codec::encode(&OldRun {
            goal: "g".into(),
            created_at_ms: 7,
            state: "finished".into(),
            last_escalation: None,
        })
        .unwrap();
        let run: RunRecord = codec::decode(&old).unwrap();
        assert_eq!(run.state, crate::domain::RunPhase::Finished);
        assert_eq!(codec::encode(&run).unwrap(), old);
        let unknown = codec::encode(&OldRun {
            goal: "g".into(),
            created_at_ms: 7,
            state: "dancing".into(),
            last_escalation: None,
        })
        .unwrap();
        let error = codec::decode::<RunRecord>(&unknown).unwrap_err();
        assert!(
            error.to_string().contains("unknown run phase \"dancing\""),
            "{error}"
        );
    }

    /// The keys of `tree` in a backup's bytes.
    fn keys_in(bytes: &[u8], tree: &str) -> Vec<Vec<u8>> {
        let record: BackupRecord = codec::decode(bytes).unwrap();
        let (_, pairs) = record.trees.into_iter().find(|(n, _)| n == tree).unwrap();
        pairs.into_iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn a_backup_copies_without_writers_and_never_half_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.meta.insert(b"before", b"1".as_slice()).unwrap();
        // No writer at work: copied at once, as the store is.
        let (bytes, _) = store.export().unwrap();
        assert_eq!(keys_in(&bytes, "meta"), vec![b"before".to_vec()]);
        // A writer at work across the backup's tries: the copy waits for
        // it and holds both of its inserts, never only the first.
        let (took, go) = std::sync::mpsc::channel();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                let writing = store.writing();
                store.meta.insert(b"half", b"1".as_slice()).unwrap();
                took.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
                store.meta.insert(b"whole", b"1".as_slice()).unwrap();
                drop(writing);
            })
        };
        go.recv().unwrap();
        let (bytes, _) = store.export().unwrap();
        writer.join().unwrap();
        let keys = keys_in(&bytes, "meta");
        assert!(
            keys.contains(&b"half".to_vec()) && keys.contains(&b"whole".to_vec()),
            "{keys:?}"
        );
    }

    #[test]
    fn a_second_open_says_the_directory_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path()).unwrap_err();
        assert!(matches!(second, StoreError::InUse(_)), "{second}");
    }

    #[test]
    fn sleds_error_is_kept_as_the_source_and_the_text_is_unchanged() {
        let sled_error = || sled::Error::Io(std::io::Error::other("disk on fire"));
        let error = StoreError::from(sled_error());
        assert_eq!(
            error.to_string(),
            format!("store I/O failed: {}", sled_error())
        );
        let source = std::error::Error::source(&error).expect("sled's error is the source");
        assert!(source.downcast_ref::<sled::Error>().is_some(), "{source:?}");

        let failed = sled::transaction::TransactionError::<()>::Storage(sled_error());
        let text = format!("store I/O failed: {failed:?}");
        let error = StoreError::from(failed);
        assert_eq!(error.to_string(), text);
        let source = std::error::Error::source(&error).expect("sled's error is the source");
        assert!(source.downcast_ref::<sled::Error>().is_some(), "{source:?}");
    }
}
