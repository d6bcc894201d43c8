//! What the executor writes about a job, apart from the store and the
//! backend: a new job's record, where it runs, how it ended, which jobs are
//! remote, and the outcome of a job that could not run. Pure, with its unit
//! tests.

use crate::cognition::Started;
use crate::domain::{BackendKind, JobOutcome, JobStatus, Plan, Usage};
use crate::store::{JobRecord, JobSession};

/// A job on the MCP server: it outlives the agent and can be found again,
/// by its id or, if the agent died before it saw the id, by its request key.
pub(super) fn is_remote(job: &JobRecord) -> bool {
    job.remote_id.is_some() || matches!(job.backend, BackendKind::Mcp | BackendKind::Nats)
}

/// The outcome of a job that failed before the backend ran it.
pub(super) fn failed(job_id: u64, error: String) -> JobOutcome {
    JobOutcome {
        job_id,
        status: JobStatus::Failed,
        output: String::new(),
        error: Some(error),
        usage: Usage::default(),
        claude: Default::default(),
    }
}

/// The record of job `id` for `plan` on `backend`, running from `now_ms`,
/// before it is known where it runs.
pub(super) fn started(id: u64, plan: &Plan, backend: BackendKind, now_ms: u64) -> JobRecord {
    JobRecord {
        id,
        iteration: plan.iteration,
        backend,
        capability: plan.capability.clone(),
        status: JobStatus::Running,
        process_group: None,
        remote_id: None,
        started_at_ms: now_ms,
        ended_at_ms: None,
        error: None,
        session: JobSession::default(),
    }
}

/// The record once the backend said where the job runs.
pub(super) fn running_at(record: &JobRecord, place: &Started) -> JobRecord {
    let mut running = record.clone();
    match place {
        Started::Process(group) => running.process_group = Some(*group),
        Started::Remote(id) => running.remote_id = Some(id.clone()),
    }
    running
}

/// The record of a job that ended at `now_ms` with `outcome`, with what
/// Claude Code said of its session.
pub(super) fn ended(mut record: JobRecord, outcome: &JobOutcome, now_ms: u64) -> JobRecord {
    record.status = outcome.status;
    record.ended_at_ms = Some(now_ms);
    record.error = outcome.error.clone();
    record.session = JobSession {
        session_id: outcome.claude.session_id.clone(),
        turns: outcome.claude.turns,
        permission_denials: outcome.claude.permission_denials,
        api_error_status: outcome.claude.api_error_status.clone(),
    };
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ClaudeFacts, Execution};

    fn plan() -> Plan {
        Plan {
            iteration: 4,
            capability: "claude-edit".into(),
            prompt: Some("fix it".into()),
            prompt_name: Some("iteration".into()),
            prompt_tokens: 2,
            rationale: String::new(),
            execution: Execution::Async,
            resume: None,
            slot: 0,
            lane: None,
        }
    }

    #[test]
    fn a_job_on_the_mcp_server_is_remote_before_its_id_is_known() {
        let on_server = started(7, &plan(), BackendKind::Mcp, 100);
        assert!(is_remote(&on_server));
        let local = started(8, &plan(), BackendKind::Offline, 100);
        assert!(!is_remote(&local));
        let reported = running_at(&local, &Started::Remote("r-1".into()));
        assert!(is_remote(&reported), "a reported remote id makes it remote");
    }

    #[test]
    fn a_new_record_runs_for_its_plan_from_now() {
        let record = started(7, &plan(), BackendKind::ClaudeCli, 100);
        assert_eq!((record.id, record.iteration), (7, 4));
        assert_eq!(record.capability, "claude-edit");
        assert_eq!(record.status, JobStatus::Running);
        assert_eq!((record.started_at_ms, record.ended_at_ms), (100, None));
    }

    #[test]
    fn where_a_job_runs_goes_on_its_record() {
        let record = started(7, &plan(), BackendKind::ClaudeCli, 100);
        let local = running_at(&record, &Started::Process(4242));
        assert_eq!(local.process_group, Some(4242));
        assert_eq!(local.remote_id, None);
        let remote = running_at(&record, &Started::Remote("r-1".into()));
        assert_eq!(remote.remote_id.as_deref(), Some("r-1"));
        assert_eq!(remote.process_group, None);
    }

    #[test]
    fn the_end_keeps_the_status_the_error_and_the_session() {
        let outcome = JobOutcome {
            claude: ClaudeFacts {
                session_id: Some("s-1".into()),
                turns: Some(3),
                permission_denials: 1,
                api_error_status: Some("529".into()),
                ..ClaudeFacts::default()
            },
            ..failed(7, "overloaded".into())
        };
        let record = ended(
            started(7, &plan(), BackendKind::ClaudeCli, 100),
            &outcome,
            250,
        );
        assert_eq!(record.status, JobStatus::Failed);
        assert_eq!(record.ended_at_ms, Some(250));
        assert_eq!(record.error.as_deref(), Some("overloaded"));
        assert_eq!(record.session.session_id.as_deref(), Some("s-1"));
        assert_eq!(record.session.turns, Some(3));
        assert_eq!(record.session.permission_denials, 1);
        assert_eq!(record.session.api_error_status.as_deref(), Some("529"));
        let unreached = failed(0, "the executor is shutting down".into());
        assert_eq!((unreached.job_id, unreached.status), (0, JobStatus::Failed));
    }
}
