//! The supervision tree in-process: injected panics and errors in each of the
//! six actors, and a child that fails every time. ractor's registry is global
//! to the process, so these tests take turns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::actors::{Factory, Shared};
use agent::cognition::claude_cli::ClaudeCli;
use agent::config::{Config, TreeSpec};
use agent::domain::{ActorKind, FaultKind, Outcome, PermissionMode, PlannerStatus, RunState};
use agent::events::{Event, EventBus};
use agent::messages::{self, Common, GovernorMsg, PlannerMsg};
use agent::store::Store;
use agent::supervisor::{
    ChildFactory, ChildStatus, SpawnFuture, Supervisor, SupervisorArgs, SupervisorMsg,
};
use agent::workspace::Workspace;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use crate::harness::{actors_config, fake_claude_program, fast_config, tiny_crate};

static REGISTRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(60);

/// Polls an async condition every 25 ms.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn children(supervisor: &ActorRef<SupervisorMsg>) -> BTreeMap<ActorKind, ChildStatus> {
    supervisor
        .call(SupervisorMsg::Children, Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|c| (c.kind, c))
        .collect()
}

async fn planner_status() -> Option<PlannerStatus> {
    messages::call(
        ActorKind::Planner,
        Duration::from_secs(5),
        PlannerMsg::Status,
    )
    .await
    .ok()
}

async fn set_paused(paused: bool) {
    messages::call(ActorKind::Governor, Duration::from_secs(5), |reply| {
        GovernorMsg::SetPaused {
            paused,
            reason: None,
            reply,
        }
    })
    .await
    .unwrap()
    .unwrap();
    messages::lookup::<PlannerMsg>(ActorKind::Planner)
        .unwrap()
        .cast(PlannerMsg::Paused(paused))
        .unwrap();
}

/// The fast configuration (with `agent` and `actors` replacements) and a
/// tree that restarts quickly and often.
fn start_config(dir: &Path, agent: &[(&str, &str)], actors: &[(&str, &str)]) -> (Config, TreeSpec) {
    let config_path = fast_config(dir, agent);
    let mut tree_changes = vec![
        ("max_restarts = 5", "max_restarts = 100"),
        ("backoff_initial = \"100ms\"", "backoff_initial = \"10ms\""),
    ];
    tree_changes.extend_from_slice(actors);
    let actors_path = actors_config(dir, &tree_changes);
    let mut config = Config::load(&config_path).unwrap();
    config.workspace = agent::domain::AbsolutePath::given(tiny_crate(dir)).unwrap();
    config.state_dir = agent::domain::AbsolutePath::given(dir.join("state")).unwrap();
    (config, TreeSpec::load(&actors_path).unwrap())
}

/// The real tree in this process, with the stand-in claude (editing, with
/// `claude_env` added) as the backend; returns once an iteration committed.
async fn start_tree(
    config: Config,
    tree: TreeSpec,
    claude_env: &[(&str, &str)],
) -> (Store, ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>) {
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let store = Store::open(&config.state_dir).unwrap();
    let workspace = Workspace::prepare(&config.workspace, &config.state_dir).unwrap();
    let mut env = vec![("FAKE_CLAUDE_MODE".to_string(), "edit".to_string())];
    env.extend(
        claude_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let backend =
        ClaudeCli::new(fake_claude_program(), PermissionMode::AcceptEdits, None).with_env(env);
    let events = EventBus::default();
    let shared = Arc::new(Shared {
        config,
        tree: tree.clone(),
        store: store.clone(),
        workspace,
        backend: Arc::new(backend),
        events: events.clone(),
        prompts: agent::cognition::prompt::Prompts::single("{goal}"),
        // In-process: the fault tests watch the stand-in's own pids.
        sandbox: None,
        checks: None,
    });
    let (supervisor, handle) = Actor::spawn(
        Some(agent::supervisor::NAME.into()),
        Supervisor,
        SupervisorArgs {
            tree,
            factory: Arc::new(Factory { context: shared }),
            events,
        },
    )
    .await
    .unwrap();
    until("a first committed iteration", || async {
        planner_status().await.filter(|s| s.iteration >= 1)
    })
    .await;
    (store, supervisor, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_actor_survives_an_injected_panic_and_error_with_its_committed_state() {
    let _turn = REGISTRY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, tree) = start_config(dir.path(), &[], &[]);
    let (store, supervisor, handle) = start_tree(config, tree, &[]).await;

    for kind in ActorKind::ALL {
        for fault in [FaultKind::Panic, FaultKind::Error] {
            set_paused(true).await;
            let idle = until("the planner to be idle and paused", || async {
                planner_status()
                    .await
                    .filter(|s| s.in_flight.is_none() && s.run_state == RunState::Paused)
            })
            .await;
            let before = children(&supervisor).await;
            messages::send_common(kind, Common::Fault(fault)).unwrap();
            let after = until(
                &format!("{kind} to be restarted after {fault:?}"),
                || async {
                    let now = children(&supervisor).await;
                    let child = &now[&kind];
                    (child.restarts == before[&kind].restarts + 1 && child.status == "running")
                        .then_some(now)
                },
            )
            .await;
            let injected = after[&kind].last_error.clone().unwrap_or_default();
            assert!(
                injected.contains(&format!("injected {}", format!("{fault:?}").to_lowercase())),
                "{injected}"
            );
            for other in ActorKind::ALL.into_iter().filter(|k| *k != kind) {
                assert_eq!(
                    after[&other].restarts, before[&other].restarts,
                    "{other} was restarted with {kind}"
                );
                assert_eq!(after[&other].status, "running");
            }
            // The restarted actor holds exactly what was last committed.
            let live = messages::call_common(kind, Duration::from_secs(5), Common::Snapshot)
                .await
                .unwrap()
                .unwrap();
            let stored = store.snapshot(kind.name()).unwrap().unwrap();
            assert_eq!(
                live.body, stored.body,
                "{kind} state after restart differs from the committed one"
            );
            if kind != ActorKind::Governor {
                // The governor also writes its ledger on its own, between commits.
                assert_eq!(
                    stored.iteration, idle.iteration,
                    "{kind} snapshot is of the last committed iteration"
                );
            }

            // And the run goes on.
            set_paused(false).await;
            until(
                &format!("an iteration after the {kind} {fault:?}"),
                || async {
                    planner_status()
                        .await
                        .filter(|s| s.iteration > idle.iteration)
                },
            )
            .await;
        }
    }

    supervisor
        .call(SupervisorMsg::Shutdown, Some(WAIT))
        .await
        .unwrap();
    handle.await.unwrap();
    // Every accepted change is one commit: one agent commit per iteration.
    let log = crate::harness::worktree_log(&dir.path().join("state"));
    let committed = store.last_iteration().unwrap().unwrap().number as usize;
    assert!(committed >= 13);
    // The tree was stopped mid-iteration: a git commit whose store commit
    // never happened may be on the branch; the next start drops it.
    let iteration_commits = log
        .iter()
        .filter_map(|m| agent::workspace::iteration_of(m))
        .filter(|iteration| *iteration as usize <= committed)
        .count();
    let accepted = store
        .iterations(1000)
        .unwrap()
        .iter()
        .filter(|r| r.outcome == Outcome::Accepted)
        .count();
    assert_eq!(iteration_commits, accepted);
}

// ------------------------------------------------------- faults mid-work --

/// When a fault is injected: what the iteration is doing at that moment.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// The executor runs the cognition job.
    Job,
    /// The modifier's validation command runs.
    Validation,
    /// The modifier is inside the git commit of an accepted change.
    Commit,
}

/// A failpoint that only raises a flag (and holds the thread for `hold`).
fn signal_at(failpoint: &str, hold: Duration) -> Arc<std::sync::atomic::AtomicBool> {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let raised = flag.clone();
    fail::cfg_callback(failpoint, move || {
        raised.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(hold);
    })
    .unwrap();
    flag
}

async fn job_running() -> bool {
    messages::call(ActorKind::Executor, Duration::from_secs(5), |reply| {
        agent::messages::ExecutorMsg::Jobs { last: 1, reply }
    })
    .await
    .is_ok_and(|jobs| jobs.last().is_some_and(|(j, _)| j.status.is_running()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints: the test waits at the validation and commit windows"
)]
async fn faults_during_work_restart_the_actor_at_its_committed_state_and_the_run_goes_on() {
    let _turn = REGISTRY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, tree) = start_config(
        dir.path(),
        &[("command = \"true\"", "command = \"sleep 1\"")],
        &[("hang_timeout = \"30s\"", "hang_timeout = \"1s\"")],
    );
    let (store, supervisor, handle) = start_tree(config, tree, &[("FAKE_CLAUDE_DELAY", "1")]).await;

    let cases = [
        (ActorKind::Executor, FaultKind::Panic, Moment::Job),
        (ActorKind::Executor, FaultKind::Error, Moment::Validation),
        (ActorKind::Modifier, FaultKind::Panic, Moment::Validation),
        (ActorKind::Modifier, FaultKind::Error, Moment::Commit),
        (ActorKind::Planner, FaultKind::Panic, Moment::Job),
        (ActorKind::Planner, FaultKind::Error, Moment::Validation),
        (ActorKind::Executor, FaultKind::Hang, Moment::Job),
        (ActorKind::Learner, FaultKind::Hang, Moment::Validation),
    ];
    for (kind, fault, moment) in cases {
        let what = format!("{kind} {fault:?} during the {moment:?}");
        let at = planner_status().await.unwrap().iteration;
        let validating = signal_at("validation.running", Duration::ZERO);
        let committing = signal_at("git.commit", Duration::from_millis(1500));
        until(&format!("{what}: the moment"), || {
            let (validating, committing) = (validating.clone(), committing.clone());
            async move {
                let reached = match moment {
                    Moment::Job => job_running().await,
                    Moment::Validation => validating.load(std::sync::atomic::Ordering::SeqCst),
                    Moment::Commit => committing.load(std::sync::atomic::Ordering::SeqCst),
                };
                reached.then_some(())
            }
        })
        .await;
        fail::remove("validation.running");
        // What the actor held at its last commit: the stored snapshot, which
        // carries the iteration it was committed with (nothing commits
        // mid-iteration; an actor that wrote its state between commits
        // would show here).
        let committed_state = store.snapshot(kind.name()).unwrap().unwrap();
        let committed = planner_status().await.unwrap().iteration;
        assert_eq!(
            committed_state.iteration, committed,
            "{what}: the stored snapshot is not the one committed with iteration {committed}"
        );
        let before = children(&supervisor).await;
        messages::send_common(kind, Common::Fault(fault)).unwrap();
        until(&format!("{what}: the restart"), || async {
            let now = children(&supervisor).await;
            let child = &now[&kind];
            (child.restarts == before[&kind].restarts + 1 && child.status == "running")
                .then_some(())
        })
        .await;
        fail::remove("git.commit");
        let live = messages::call_common(kind, Duration::from_secs(5), Common::Snapshot)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            live.body, committed_state.body,
            "{what}: the restarted actor does not hold its committed state"
        );
        until(&format!("{what}: an iteration after it"), || async {
            planner_status().await.filter(|s| s.iteration > at)
        })
        .await;
    }

    supervisor
        .call(SupervisorMsg::Shutdown, Some(WAIT))
        .await
        .unwrap();
    handle.await.unwrap();
    // No change was committed twice, whatever the faults interrupted.
    let log = crate::harness::worktree_log(&dir.path().join("state"));
    let mut iterations: Vec<u64> = log
        .iter()
        .filter_map(|m| agent::workspace::iteration_of(m))
        .collect();
    let all = iterations.len();
    iterations.sort_unstable();
    iterations.dedup();
    assert_eq!(iterations.len(), all, "an iteration was committed twice");
}

// ------------------------------------------------------------ escalation --

/// Stand-in children: the `failing` kind fails as soon as it starts.
struct ToyFactory {
    failing: ActorKind,
    stopped: Arc<Mutex<Vec<ActorKind>>>,
}

struct Toy;

enum ToyMsg {
    Boom,
}

struct ToyArgs {
    kind: ActorKind,
    fails: bool,
    stopped: Arc<Mutex<Vec<ActorKind>>>,
}

impl Actor for Toy {
    type Msg = ToyMsg;
    type State = ToyArgs;
    type Arguments = ToyArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ToyMsg>,
        args: ToyArgs,
    ) -> Result<ToyArgs, ActorProcessingErr> {
        if args.fails {
            myself.cast(ToyMsg::Boom)?;
        }
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<ToyMsg>,
        message: ToyMsg,
        state: &mut ToyArgs,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ToyMsg::Boom => Err(format!("{} always fails", state.kind).into()),
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<ToyMsg>,
        state: &mut ToyArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.stopped.lock().unwrap().push(state.kind);
        Ok(())
    }
}

impl ChildFactory for ToyFactory {
    fn spawn(&self, kind: ActorKind, supervisor: ActorCell) -> SpawnFuture {
        let args = ToyArgs {
            kind,
            fails: kind == self.failing,
            stopped: self.stopped.clone(),
        };
        Box::pin(async move {
            Ok(Actor::spawn_linked(None, Toy, args, supervisor)
                .await?
                .0
                .get_cell())
        })
    }
}

#[tokio::test]
async fn a_child_that_always_fails_is_restarted_up_to_the_intensity_then_the_tree_escalates() {
    let _turn = REGISTRY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let tree = TreeSpec::load(&actors_config(
        dir.path(),
        &[
            ("max_restarts = 5", "max_restarts = 3"),
            ("within = \"30s\"", "within = \"1m\""),
            ("backoff_initial = \"100ms\"", "backoff_initial = \"5ms\""),
            ("backoff_max = \"5s\"", "backoff_max = \"20ms\""),
        ],
    ))
    .unwrap();
    let events = EventBus::default();
    let mut received = events.subscribe();
    let stopped = Arc::new(Mutex::new(Vec::new()));
    let (_supervisor, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            tree,
            factory: Arc::new(ToyFactory {
                failing: ActorKind::Researcher,
                stopped: stopped.clone(),
            }),
            events,
        },
    )
    .await
    .unwrap();
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("the supervisor stopped")
        .unwrap();

    let mut restarts = 0;
    let mut escalation = None;
    while let Ok(event) = received.try_recv() {
        match event {
            Event::ActorRestarted { actor, .. } => {
                assert_eq!(actor, ActorKind::Researcher);
                restarts += 1;
            }
            Event::Escalated { reason } => escalation = Some(reason),
            _ => {}
        }
    }
    assert_eq!(restarts, 3, "restarts are bounded by max_restarts");
    let reason = escalation.expect("an escalation event");
    assert!(
        reason.contains("researcher") && reason.contains("more than 3 restarts within 1m"),
        "{reason}"
    );
    // Siblings were stopped in reverse start order (the failing child was
    // already down when the tree escalated).
    let order = stopped.lock().unwrap().clone();
    let siblings: Vec<ActorKind> = order
        .into_iter()
        .filter(|k| *k != ActorKind::Researcher)
        .collect();
    assert_eq!(
        siblings,
        vec![
            ActorKind::Planner,
            ActorKind::Modifier,
            ActorKind::Executor,
            ActorKind::Learner,
            ActorKind::Governor
        ]
    );
}
