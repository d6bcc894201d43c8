//! `agent ctl` against a real daemon: every command, `send` to each actor,
//! approvals, `watch`, `checkpoint` + `kill -9`, a peer of another user, and
//! a socket fuzzed with garbage while `status` keeps answering.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, agent_bin, fast_config, json_of, poll_until, send, text, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    args: Vec<String>,
}

fn setup(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path(), &[]);
    let workspace = tiny_crate(dir.path());
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--workspace".into(),
        workspace.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Setup {
        state: dir.path().join("state"),
        _dir: dir,
        args,
    }
}

impl Setup {
    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Daemon::start(&self.state, &args, env)
    }
}

/// `send governor pause|resume` and `ctl pause|resume` are one action each:
/// either way the run stops starting iterations, and starts again.
#[test]
fn pause_and_resume_by_send_or_by_command_start_iterations_again() {
    let setup = setup(&[]);
    let mut daemon = setup.start(&[]);
    daemon.wait_status("a first iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let ways: [(&[&str], &[&str]); 2] = [
        (
            &["send", "governor", "pause"],
            &["send", "governor", "resume"],
        ),
        (&["pause"], &["resume"]),
    ];
    for (pause, resume) in ways {
        let paused = daemon.ctl(pause);
        assert!(paused.status.success(), "{}", text(&paused.stderr));
        let idle = daemon.wait_status("paused with nothing in flight", WAIT, |s| {
            s["in_flight"].is_null() && s["run_state"] == "paused"
        });
        let at = Daemon::committed(&idle);
        let resumed = daemon.ctl(resume);
        assert!(resumed.status.success(), "{}", text(&resumed.stderr));
        daemon.wait_status(
            &format!("an iteration after `{}`", resume.join(" ")),
            WAIT,
            |s| s["run_state"] == "running" && Daemon::committed(s) > at,
        );
    }
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

#[test]
fn send_reaches_every_actor_with_queries_and_commands() {
    let setup = setup(&["--mode", "debug"]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);

    // Every actor lists a query and a command.
    for actor in [
        "governor",
        "learner",
        "researcher",
        "executor",
        "modifier",
        "planner",
    ] {
        let listed = json_of(&daemon.ctl(&["send", actor, "--list", "--json"]));
        let kinds: Vec<&str> = listed["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"query") && kinds.contains(&"command"),
            "{actor}: {listed}"
        );
    }

    // governor: pause (command) shows in status (query), then resume.
    assert_eq!(send(&daemon, "governor", "pause", &[])["paused"], true);
    assert_eq!(send(&daemon, "governor", "status", &[])["paused"], true);
    assert_eq!(send(&daemon, "governor", "resume", &[])["paused"], false);
    let governor = send(&daemon, "governor", "status", &[]);
    assert!(
        governor["tokens_last_day"].as_u64().unwrap() >= 165,
        "{governor}"
    );

    // learner: stats (query) reflect the committed experience; forget (command).
    let stats = send(&daemon, "learner", "stats", &[]);
    assert_eq!(stats["capabilities"][0]["capability"], "claude-edit");
    let ranked = send(
        &daemon,
        "learner",
        "advise",
        &["candidates=claude-edit,never-tried"],
    );
    assert_eq!(
        ranked["ranked"][0]["capability"], "never-tried",
        "untried first: {ranked}"
    );
    assert_eq!(
        send(&daemon, "learner", "forget", &["capability=claude-edit"])["forgotten"],
        "claude-edit"
    );

    // From here on nothing runs beside the commands: pause and wait until idle.
    assert!(daemon.ctl(&["pause"]).status.success());
    daemon.wait_status("idle", WAIT, |s| {
        s["in_flight"].is_null() && s["run_state"] == "paused"
    });

    // researcher: research is answered from the cache filled by the first
    // iteration; invalidate drops it, and the next research fills it again.
    let goal = daemon.status().unwrap()["goal"]
        .as_str()
        .unwrap()
        .to_string();
    let topic = format!("topic={goal}");
    assert_eq!(
        send(&daemon, "researcher", "research", &[&topic])["from_cache"],
        true
    );
    assert_eq!(
        send(&daemon, "researcher", "invalidate", &[&topic])["removed"],
        true
    );
    assert_eq!(
        send(&daemon, "researcher", "research", &[&topic])["from_cache"],
        false
    );
    assert!(
        send(&daemon, "researcher", "status", &[])["hits"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // executor: capabilities and jobs (queries); kill-job (command) of a job
    // that already ended is refused with a reason.
    assert_eq!(
        send(&daemon, "executor", "capabilities", &[])["capabilities"][0]["id"],
        "claude-edit"
    );
    let jobs = send(&daemon, "executor", "jobs", &["last=1"]);
    let job = jobs["jobs"][0]["job"].as_u64().unwrap();
    let finished = daemon.ctl(&[
        "send",
        "executor",
        "kill-job",
        "--arg",
        &format!("job={job}"),
    ]);
    assert_eq!(finished.status.code(), Some(1));
    assert!(
        text(&finished.stderr).contains("refused"),
        "{}",
        text(&finished.stderr)
    );

    // modifier: status (query), rollback (command) while paused.
    assert!(daemon.ctl(&["pause"]).status.success());
    daemon.wait_status("idle", WAIT, |s| {
        s["in_flight"].is_null() && s["run_state"] == "paused"
    });
    let modifier = send(&daemon, "modifier", "status", &[]);
    assert_eq!(modifier["head"].as_str().unwrap().len(), 40);
    assert_eq!(
        send(&daemon, "modifier", "rollback", &[])["rolled_back"],
        true
    );
    assert_eq!(
        send(&daemon, "modifier", "status", &[])["changed_files"],
        serde_json::json!([])
    );

    // planner: status (query), goal and tick (commands).
    assert_eq!(
        send(&daemon, "planner", "goal", &["text=Keep it tidy"])["goal"],
        "Keep it tidy"
    );
    assert_eq!(
        send(&daemon, "planner", "status", &[])["goal"],
        "Keep it tidy"
    );
    assert!(daemon.ctl(&["resume"]).status.success());
    assert_eq!(send(&daemon, "planner", "tick", &[])["ticked"], true);

    // Typed errors: unknown message, bad and unknown arguments, unknown actor.
    let unknown = daemon.ctl(&["send", "learner", "dance", "--json"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(json_of_error(&unknown)["kind"], "unknown_message");
    let bad = daemon.ctl(&[
        "send",
        "executor",
        "kill-job",
        "--args",
        r#"{"job": "x"}"#,
        "--json",
    ]);
    assert_eq!(json_of_error(&bad)["kind"], "bad_arguments");
    let extra = daemon.ctl(&[
        "send",
        "planner",
        "status",
        "--arg",
        "verbose=true",
        "--json",
    ]);
    assert!(
        json_of_error(&extra)["message"]
            .as_str()
            .unwrap()
            .contains("unknown argument `verbose`")
    );
    let nobody = daemon.ctl(&["send", "nobody", "status", "--json"]);
    assert_eq!(json_of_error(&nobody)["kind"], "unknown_actor");
    // Usage errors are caught by the client: exit 2, nothing sent.
    assert_eq!(daemon.ctl(&["send", "learner"]).status.code(), Some(2));
    assert_eq!(
        daemon
            .ctl(&["send", "learner", "stats", "--args", "[1]"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        daemon
            .ctl(&["send", "learner", "stats", "--arg", "novalue"])
            .status
            .code(),
        Some(2)
    );

    // An actor that hangs makes `send` time out with a typed error, not hang the daemon.
    assert!(
        daemon
            .ctl(&["fault", "researcher", "hang"])
            .status
            .success()
    );
    assert_eq!(
        json_of(&daemon.ctl(&["status", "--json"]))["actors"][2]["status"],
        "running"
    );

    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    assert!(daemon.wait_exit(WAIT).success(), "{}", daemon.logs());
}

fn json_of_error(output: &std::process::Output) -> Value {
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    value["error"].clone()
}

#[test]
fn tree_history_goal_checkpoint_and_completions() {
    let setup = setup(&[]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("two committed iterations", WAIT, |s| {
        Daemon::committed(s) >= 2
    });

    let tree = json_of(&daemon.ctl(&["tree", "--json"]));
    assert_eq!(tree["strategy"], "OneForOne");
    assert_eq!(tree["max_restarts"], 5);
    assert_eq!(tree["within"], "30s");
    let children = tree["children"].as_array().unwrap();
    assert_eq!(children.len(), 6);
    assert!(
        children
            .iter()
            .all(|c| c["restart"] == "permanent" && c["restarts"] == 0 && c["uptime_ms"].is_u64())
    );
    let human = text(&daemon.ctl(&["tree"]).stdout);
    assert!(
        human.starts_with("supervisor  strategy OneForOne"),
        "{human}"
    );
    assert!(human.contains("└── planner"), "{human}");

    let history = json_of(&daemon.ctl(&["history", "--last", "1", "--json"]));
    let iterations = history["iterations"].as_array().unwrap();
    assert_eq!(iterations.len(), 1);
    assert_eq!(iterations[0]["outcome"], "accepted");
    assert_eq!(iterations[0]["input_tokens"], 120);
    assert!(text(&daemon.ctl(&["history"]).stdout).contains("claude-edit"));

    let goal = daemon.ctl(&["goal", "Write", "better", "docs"]);
    assert!(text(&goal.stdout).contains("goal set to \"Write better docs\""));
    assert_eq!(daemon.status().unwrap()["goal"], "Write better docs");

    let checkpoint = json_of(&daemon.ctl(&["checkpoint", "--json"]));
    assert!(checkpoint["iterations"].as_u64().unwrap() >= 2);
    assert!(
        checkpoint["message"]
            .as_str()
            .unwrap()
            .starts_with("checkpoint written")
    );

    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());

    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(agent_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success());
        let script = text(&output.stdout);
        assert!(
            script.contains("ctl") && script.contains("approve") && script.contains("mcp-serve"),
            "{shell}"
        );
    }
    let help = Command::new(agent_bin())
        .args(["ctl", "send", "--help"])
        .output()
        .unwrap();
    assert!(text(&help.stdout).contains("--arg <NAME=VALUE>"));
}

#[test]
fn supervised_changes_wait_for_approve_or_reject() {
    let setup = setup(&["--mode", "supervised"]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("the daemon", WAIT, |_| true);
    let first = poll_until("an approval to wait", WAIT, || {
        let approvals = json_of(&daemon.ctl(&["approvals", "--json"]));
        approvals["approvals"]
            .as_array()
            .unwrap()
            .first()
            .filter(|a| a["state"] == "pending")
            .cloned()
    });
    assert_eq!(first["iteration"], 1);
    assert_eq!(first["files"], serde_json::json!(["src/lib.rs"]));
    assert_eq!(
        Daemon::committed(&daemon.status().unwrap()),
        0,
        "nothing committed before approval"
    );
    let id = first["id"].as_str().unwrap().to_string();
    let approved = daemon.ctl(&["approve", &id]);
    assert!(text(&approved.stdout).contains(&format!("approved {id}")));
    let unknown = daemon.ctl(&["approve", &id]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("is not waiting (it is approved)"));

    let second = poll_until("the next approval", WAIT, || {
        let approvals = json_of(&daemon.ctl(&["approvals", "--json"]));
        approvals["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["state"] == "pending" && a["iteration"] == 2)
            .cloned()
    });
    let id = second["id"].as_str().unwrap().to_string();
    assert!(
        daemon
            .ctl(&["reject", &id, "--reason", "not this one"])
            .status
            .success()
    );
    daemon.wait_status("two committed iterations", WAIT, |s| {
        Daemon::committed(s) >= 2
    });
    let history = json_of(&daemon.ctl(&["history", "--json"]));
    assert_eq!(history["iterations"][0]["outcome"], "accepted");
    assert_eq!(history["iterations"][1]["outcome"], "rejected");
    assert!(
        history["iterations"][1]["summary"]
            .as_str()
            .unwrap()
            .contains("rejected by an operator: not this one")
    );
    let log = crate::harness::worktree_log(&setup.state);
    assert_eq!(
        log.iter().filter(|m| m.contains("\nIteration: ")).count(),
        1,
        "only the approved change is committed"
    );
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

/// A store failure in one request is that request's error, not the
/// governor's end: the decision's write fails (injected), `approve` answers
/// an error kind, the governor runs on without a restart, and the approval
/// (which a restart would have expired) still waits and can be approved.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints: the decision's store write fails on purpose"
)]
fn a_failed_decision_write_is_an_error_and_the_approval_keeps_waiting() {
    let setup = setup(&["--mode", "supervised"]);
    // The request's write passes, the first decision's write fails, the
    // retry's passes.
    let mut daemon = setup.start(&[
        ("FAKE_CLAUDE_MODE", "edit"),
        ("FAILPOINTS", "store.put_approval=1*off->1*return->off"),
    ]);
    daemon.wait_status("the daemon", WAIT, |_| true);
    let pending = || {
        let approvals = json_of(&daemon.ctl(&["approvals", "--json"]));
        approvals["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["state"] == "pending")
            .cloned()
    };
    let waiting = poll_until("an approval to wait", WAIT, pending);
    let id = waiting["id"].as_str().unwrap().to_string();

    let failed = json_of_error(&daemon.ctl(&["approve", &id, "--json"]));
    assert_eq!(failed["kind"], "internal", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("cannot record the decision: store I/O failed"),
        "{failed}"
    );
    let governor = Daemon::actor(&daemon.status().unwrap(), "governor").clone();
    assert_eq!(governor["status"], "running", "{governor}");
    assert_eq!(governor["restarts"], 0, "{governor}");
    let tree = json_of(&daemon.ctl(&["tree", "--json"]));
    let in_tree = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "governor")
        .cloned()
        .unwrap();
    assert_eq!(in_tree["restarts"], 0, "{tree}");
    assert_eq!(
        pending().map(|a| a["id"].clone()),
        Some(waiting["id"].clone()),
        "the approval still waits"
    );

    let approved = daemon.ctl(&["approve", &id]);
    assert!(
        text(&approved.stdout).contains(&format!("approved {id}")),
        "{}",
        text(&approved.stderr)
    );
    daemon.wait_status("the approved iteration", WAIT, |s| {
        Daemon::committed(s) >= 1
    });
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

#[test]
fn watch_sees_a_fault_the_restart_and_the_next_iteration_in_order() {
    let setup = setup(&["--mode", "debug"]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit"), ("FAKE_CLAUDE_DELAY", "0.2")]);
    daemon.wait_status("a committed iteration", WAIT, |s| Daemon::committed(s) >= 1);
    let mut watcher = Command::new(agent_bin())
        .args(["ctl", "--state"])
        .arg(&setup.state)
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = watcher.stdout.take().unwrap();
    // The stream has begun once its first line arrived.
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    assert!(daemon.ctl(&["fault", "learner", "panic"]).status.success());
    let committed = Daemon::committed(&daemon.status().unwrap());
    daemon.wait_status("an iteration after the fault", WAIT, |s| {
        Daemon::committed(s) > committed + 1
    });
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    // The watcher ends by itself when the daemon stops.
    let status = poll_until("the watcher to end", WAIT, || watcher.try_wait().unwrap());
    assert!(status.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let events: Vec<Value> = format!("{}{rest}", first[0] as char)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let failed = names
        .iter()
        .position(|n| *n == "actor_failed")
        .expect("actor_failed");
    let restarted = names
        .iter()
        .position(|n| *n == "actor_restarted")
        .expect("actor_restarted");
    let committed_after = names
        .iter()
        .skip(restarted)
        .position(|n| *n == "iteration_committed")
        .expect("a commit after the restart");
    assert!(failed < restarted && committed_after > 0, "{names:?}");
    assert_eq!(events[failed]["actor"], "learner");
    assert!(
        events[failed]["detail"]
            .as_str()
            .unwrap()
            .contains("injected panic in learner")
    );
    assert!(names.contains(&"step"), "{names:?}");
    // A running job's progress is announced between its plan and its end.
    let progress = events
        .iter()
        .find(|e| e["event"] == "step" && e["step"] == "progress")
        .unwrap_or_else(|| panic!("no progress step: {names:?}"));
    assert!(
        progress["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("turn 1, last tool Edit")),
        "{progress}"
    );
    let steps: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step" && e["step"] != "progress")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    let one = [
        "permit", "prepare", "plan", "execute", "validate", "learn", "commit",
    ];
    assert!(steps.windows(7).any(|w| w == one), "{steps:?}");
    assert_eq!(names.last(), Some(&"daemon_stopping"));
}

#[test]
fn checkpoint_then_kill_9_keeps_everything_the_daemon_held() {
    let setup = setup(&[]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("committed iterations", WAIT, |s| Daemon::committed(s) >= 2);
    assert!(daemon.ctl(&["pause"]).status.success());
    assert!(
        daemon
            .ctl(&["goal", "A goal set before the checkpoint"])
            .status
            .success()
    );
    let held = daemon.wait_status("idle", WAIT, |s| {
        s["in_flight"].is_null() && s["run_state"] == "paused"
    });
    let governor = send(&daemon, "governor", "status", &[]);
    let checkpoint = json_of(&daemon.ctl(&["checkpoint", "--json"]));
    assert_eq!(checkpoint["iterations"], held["iteration"]);
    daemon.kill9();

    let mut again = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    let status = again.wait_status("the restarted daemon", WAIT, |_| true);
    assert_eq!(status["iteration"], held["iteration"]);
    assert_eq!(status["goal"], "A goal set before the checkpoint");
    let restored = send(&again, "governor", "status", &[]);
    assert_eq!(restored["paused"], true);
    assert_eq!(restored["tokens_last_day"], governor["tokens_last_day"]);
    assert_eq!(restored["cost_usd_total"], governor["cost_usd_total"]);
    assert!(again.ctl(&["stop"]).status.success());
    assert!(again.wait_exit(WAIT).success());
}

/// Raw frames on the socket.
fn raw(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Vec::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn garbage_on_the_socket_gets_errors_and_the_daemon_keeps_answering() {
    let setup = setup(&[]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("the daemon", WAIT, |_| true);
    let socket = setup.state.join("agent.sock");
    // A deterministic generator, so a failure can be replayed.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let shapes = [
        r#"{"version":1,"id":1,"command":{"name":"send","actor":"learner","message":"stats","args":[1,2]}}"#,
        r#"{"version":1,"id":1,"command":{"name":"fault"}}"#,
        r#"{"version":2,"id":1,"command":{"name":"status"}}"#,
        r#"{"version":1,"id":"x","command":{"name":"status"}}"#,
        r#"{"version":1,"id":1,"command":"status"}"#,
        r#"[1,2,3]"#,
        r#"null"#,
        r#"{"version":1,"id":1,"command":{"name":"history","last":-1}}"#,
        r#"{"version":1,"id":1,"command":{"name":"send","actor":"governor","message":"pause","args":{"x":{"y":[]}}}}"#,
    ];
    for case in 0..300u64 {
        let bytes = match case % 5 {
            0 => (0..(next() % 64)).map(|_| next() as u8).collect(),
            1 => {
                let mut f = frame(shapes[(next() % shapes.len() as u64) as usize].as_bytes());
                f.truncate((next() % f.len() as u64) as usize);
                f
            }
            2 => {
                let mut f = ((next() as u32) | 0x1000_0000).to_be_bytes().to_vec();
                f.extend_from_slice(b"{}");
                f
            }
            3 => frame(shapes[(next() % shapes.len() as u64) as usize].as_bytes()),
            _ => frame(
                &(0..(next() % 200))
                    .map(|_| next() as u8)
                    .collect::<Vec<_>>(),
            ),
        };
        let answer = raw(&socket, &bytes);
        if case % 5 == 3 || case % 5 == 2 {
            // Whole frames always get an answer: an error, never silence.
            assert!(answer.len() > 4, "case {case}: no answer to {bytes:?}");
            let text = String::from_utf8_lossy(&answer[4..]).to_string();
            assert!(
                text.contains("\"error\"") || text.contains("\"ok\""),
                "case {case}: {text}"
            );
        }
        if case % 25 == 0 {
            assert!(daemon.status().is_some(), "status after case {case}");
        }
    }
    assert!(daemon.status().is_some());
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
    let logs = daemon.logs();
    assert!(!logs.contains("panic"), "{logs}");
}

#[test]
fn a_peer_of_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: changing to another uid needs root (run as root to cover this)");
        return;
    }
    let setup = setup(&[]);
    let mut daemon = setup.start(&[("FAKE_CLAUDE_MODE", "edit")]);
    daemon.wait_status("the daemon", WAIT, |_| true);
    let socket = setup.state.join("agent.sock");
    // Let another user reach the socket at all: the test's own directories
    // on the way (never a shared one such as /tmp, which is traversable).
    let mut dir = socket.parent().unwrap().to_path_buf();
    while dir.starts_with(setup._dir.path()) {
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        dir = dir.parent().unwrap().to_path_buf();
    }
    let as_nobody = |socket: &Path| {
        use std::os::unix::process::CommandExt;
        Command::new(agent_bin())
            .args(["ctl", "--socket"])
            .arg(socket)
            .args(["status", "--json"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    // Mode 0600: the kernel already keeps the other user out.
    let denied = as_nobody(&socket);
    assert_eq!(denied.status.code(), Some(3), "{}", text(&denied.stderr));
    assert!(
        text(&denied.stderr).contains("Permission denied"),
        "{}",
        text(&denied.stderr)
    );
    // Even with the mode opened up, the daemon checks the peer's uid.
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let refused = as_nobody(&socket);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert_eq!(json_of_error(&refused)["kind"], "not_permitted");
    assert!(daemon.status().is_some(), "the daemon goes on");
    assert!(
        daemon
            .logs()
            .contains("refused a control connection from another user")
    );
    assert!(daemon.ctl(&["stop"]).status.success());
    assert!(daemon.wait_exit(WAIT).success());
}

/// A daemon that closes the connection before answering (it is shutting
/// down) is an error `agent ctl` reports, not a SIGPIPE that ends it without
/// a word (exit 141, as it did while short commands reset SIGPIPE).
#[test]
fn a_connection_closed_by_the_daemon_is_reported_not_a_silent_death() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let closer = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((stream, _)) = listener.accept() {
                drop(stream);
            }
        }
    });
    for command in [["status"].as_slice(), &["watch"]] {
        let output = Command::new(agent_bin())
            .args(["ctl", "--socket"])
            .arg(&socket)
            .args(command)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{command:?}: {output:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(socket.to_str().unwrap()) && stderr.lines().count() == 1,
            "{command:?}: {stderr}"
        );
    }
    closer.join().unwrap();
}
