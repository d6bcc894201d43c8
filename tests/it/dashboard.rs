//! The dashboard in a real browser: headless Chromium (Debian's `chromium`
//! and `chromedriver`, which `.ci/run` installs) driven over WebDriver by
//! `fantoccini`, against the real daemon. The page shows the six actors,
//! follows iterations and restarts without a reload, and an approval clicked
//! in it is applied and audited. Then, over plain HTTP, what the page's
//! guards refuse: no token, another origin, read-only mode; and that a run
//! paused for a cause shows the same reason in `send governor status` and in
//! `/api/state`, both read as the one reply type.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::harness::{Daemon, agent_bin, fast_config, poll_until, send, tiny_crate};

const WAIT: Duration = Duration::from_secs(120);

/// A daemon with the HTTP listener on a free port; its address.
fn daemon_with_dashboard(dir: &Path, extra: &[(&str, &str)]) -> (Daemon, String) {
    daemon_with_dashboard_env(dir, extra, &[("FAKE_CLAUDE_MODE", "edit")])
}

/// The same, with the stand-in's environment given.
fn daemon_with_dashboard_env(
    dir: &Path,
    extra: &[(&str, &str)],
    env: &[(&str, &str)],
) -> (Daemon, String) {
    let mut replacements = vec![
        ("# listen = \"127.0.0.1:9464\"", "listen = \"127.0.0.1:0\""),
        ("fault_injection = false", "fault_injection = true"),
        ("mode = \"autonomous\"", "mode = \"supervised\""),
    ];
    replacements.extend_from_slice(extra);
    let config = fast_config(dir, &replacements);
    let workspace = tiny_crate(dir);
    let state = dir.join("state");
    let mut daemon = Daemon::unbounded(&state, &config, &workspace, env);
    daemon.wait_status("the daemon answers", WAIT, |_| true);
    let address = daemon.http_address();
    (daemon, address)
}

/// One HTTP/1.1 request; (status, body).
fn http(address: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 2\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n{}");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The page's configuration, as it is written into the page.
fn page_config(address: &str) -> Value {
    let (status, page) = http(address, "GET", "/", &[]);
    assert_eq!(status, 200);
    let start = page.find("const CONFIG = ").unwrap() + "const CONFIG = ".len();
    let end = start + page[start..].find(";\n").unwrap();
    serde_json::from_str(&page[start..end]).unwrap()
}

/// Chromium and chromedriver, or `None` (said) where they are not installed
/// and this is not CI.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if chromium.exists() && driver.exists() {
        return Some((chromium, driver));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install chromium and chromium-driver (see .ci/run)"
    );
    eprintln!("skipped: chromium or chromedriver is not installed");
    None
}

struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver(driver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    poll_until("chromedriver to listen", WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Polls an async condition until it holds.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_run_live_and_applies_an_approval_in_a_real_browser() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, address) = daemon_with_dashboard(dir.path(), &[]);
    let driver = start_driver(&driver);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            // Phone width: the page must work there.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=390,1400"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium");
    client.goto(&format!("http://{address}/")).await.unwrap();
    // A mark that a reload would wipe.
    client
        .execute("window.loadedOnce = true; return true;", vec![])
        .await
        .unwrap();

    let actors = until("the six actors", || async {
        let rows = client
            .find_all(Locator::Css("#actors tr[data-actor]"))
            .await
            .ok()?;
        (rows.len() == 6).then_some(rows)
    })
    .await;
    let mut names = Vec::new();
    for row in &actors {
        names.push(row.attr("data-actor").await.unwrap().unwrap());
    }
    assert_eq!(
        names,
        [
            "governor",
            "learner",
            "researcher",
            "executor",
            "modifier",
            "planner"
        ]
    );

    // Supervised: the first change waits; approve it in the page.
    let approve = until("a pending approval with its buttons", || async {
        client
            .find(Locator::Css("#approvals li[data-approval] button.approve"))
            .await
            .ok()
    })
    .await;
    let item = client
        .find(Locator::Css("#approvals li[data-approval]"))
        .await
        .unwrap();
    let id = item.attr("data-approval").await.unwrap().unwrap();
    assert!(
        item.text().await.unwrap().contains("file(s)"),
        "the change's files are shown"
    );
    // The change itself, as a diff (folded in a <details>: read its text).
    client
        .find(Locator::Css("#approvals li[data-approval] pre.diff"))
        .await
        .expect("the pending change's diff");
    let shown = client
        .execute(
            "return document.querySelector('#approvals pre.diff').textContent;",
            vec![],
        )
        .await
        .unwrap();
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.contains("src/lib.rs") && shown.contains("+"),
        "{shown}"
    );
    approve.click().await.unwrap();
    until("the approved iteration in the page", || async {
        let committed: u64 = client
            .find(Locator::Id("committed"))
            .await
            .ok()?
            .text()
            .await
            .ok()?
            .parse()
            .ok()?;
        (committed >= 1).then_some(())
    })
    .await;
    let first = client
        .find(Locator::Css("#history tr[data-iteration='1']"))
        .await
        .expect("iteration 1 in the table");
    assert!(
        first.text().await.unwrap().contains("accepted"),
        "{}",
        first.text().await.unwrap()
    );

    // A fault: the restart shows up without a reload.
    let fault = Command::new(agent_bin())
        .args(["ctl", "--state"])
        .arg(&daemon.state)
        .args(["fault", "learner", "panic"])
        .output()
        .unwrap();
    assert!(fault.status.success(), "{fault:?}");
    until("the learner's restart in the page", || async {
        let cell = client
            .find(Locator::Css("#actors tr[data-actor='learner'] td.restarts"))
            .await
            .ok()?;
        let restarts: u32 = cell.text().await.ok()?.parse().ok()?;
        (restarts >= 1).then_some(())
    })
    .await;
    let still = client
        .execute("return window.loadedOnce === true;", vec![])
        .await
        .unwrap();
    assert_eq!(still, json!(true), "the page was never reloaded");

    let png = client.screenshot().await.unwrap();
    let artifact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, png).unwrap();
    eprintln!("dashboard screenshot: {}", artifact.display());
    client.close().await.unwrap();

    // The decision went through the control plane's path, audited as the
    // dashboard's (read once the daemon let go of its store).
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    daemon.wait_exit(WAIT);
    let audit = Command::new(agent_bin())
        .args(["audit", "tail", "--state"])
        .arg(&daemon.state)
        .args(["--last", "200", "--json"])
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&audit.stdout).to_string();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"dashboard\"") && l.contains(&format!("approve {id}"))),
        "{audit}"
    );
    drop(driver);
}

#[test]
fn decisions_need_the_pages_token_and_origin_and_read_only_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, address) = daemon_with_dashboard(dir.path(), &[]);
    let config = page_config(&address);
    let token = config["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 32);
    let decide = "/api/approvals/000999-1/approve";
    let (status, body) = http(&address, "POST", decide, &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Agent-Token"), "{body}");
    let (status, body) = http(&address, "POST", decide, &[("X-Agent-Token", "0123")]);
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(
        &address,
        "POST",
        decide,
        &[("X-Agent-Token", &token), ("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("evil.example"), "{body}");
    // The right token from the right origin gets through to the decision
    // itself: no such approval.
    let origin = format!("http://{address}");
    let (status, body) = http(
        &address,
        "POST",
        decide,
        &[("X-Agent-Token", &token), ("Origin", &origin)],
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("000999-1"), "{body}");
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    daemon.wait_exit(WAIT);

    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, address) =
        daemon_with_dashboard(dir.path(), &[("read_only = false", "read_only = true")]);
    let config = page_config(&address);
    assert_eq!(config["read_only"], true);
    assert_eq!(config["token"], "", "a read-only page holds no token");
    let (status, body) = http(
        &address,
        "POST",
        "/api/approvals/000001-1/approve",
        &[("Origin", &format!("http://{address}"))],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    daemon.wait_exit(WAIT);
}

#[test]
fn a_pause_reason_reads_the_same_in_send_governor_status_and_the_dashboard() {
    use agent::ctl::replies::GovernorStatusReply;

    let dir = tempfile::tempdir().unwrap();
    // A fitness probe that always fails: after 5 failed attempts the run
    // pauses and the governor holds why.
    let probe = dir.path().join("fitness.sh");
    std::fs::write(
        &probe,
        "echo 'error: the fitness probe is broken' >&2\nexit 3\n",
    )
    .unwrap();
    let fitness = format!("fitness = \"sh {}\"", probe.display());
    let (mut daemon, address) = daemon_with_dashboard(
        dir.path(),
        &[
            ("fitness = \"echo 1\"", &fitness),
            ("retry_initial = \"1s\"", "retry_initial = \"200ms\""),
        ],
    );
    // The planner pauses first and tells the governor once every actor has
    // reverted: wait for the governor's side.
    let governor: GovernorStatusReply =
        poll_until("the governor to hold a pause reason", WAIT, || {
            let reply = send(&daemon, "governor", "status", &[]);
            let governor: GovernorStatusReply = serde_json::from_value(reply).unwrap();
            governor.pause_reason.is_some().then_some(governor)
        });
    assert!(governor.paused);
    let reason = governor.pause_reason.clone().unwrap();
    assert!(
        reason.contains("paused after 5 failed attempts in a row")
            && reason.contains("error: the fitness probe is broken"),
        "{reason}"
    );
    let (status, body) = http(&address, "GET", "/api/state", &[]);
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["governor"]["actor"], "governor");
    assert_eq!(state["governor"]["message"], "status");
    let shown: GovernorStatusReply =
        serde_json::from_value(state["governor"]["reply"].clone()).unwrap();
    assert_eq!(
        shown.pause_reason.as_deref(),
        Some(reason.as_str()),
        "{body}"
    );
    assert!(shown.paused);
    // The planner's view (`ctl status`, the page's run state) says the same.
    assert_eq!(state["status"]["run_state"], "paused", "{body}");
    assert_eq!(state["status"]["pause_reason"], reason.as_str(), "{body}");
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    daemon.wait_exit(WAIT);
}

#[test]
fn a_running_jobs_progress_reads_the_same_in_send_executor_jobs_and_the_dashboard() {
    use agent::ctl::replies::JobsReply;

    let dir = tempfile::tempdir().unwrap();
    // A job that runs `cargo test` for a long while, saying so every 100 ms.
    let (mut daemon, address) = daemon_with_dashboard_env(
        dir.path(),
        &[],
        &[
            ("FAKE_CLAUDE_MODE", "heartbeat"),
            ("FAKE_CLAUDE_HEARTBEATS", "100000"),
            ("FAKE_CLAUDE_HEARTBEAT_MS", "100"),
            ("FAKE_CLAUDE_PLAN_MODE", "success"),
        ],
    );
    let job = poll_until("a running job with its progress", WAIT, || {
        let jobs: JobsReply =
            serde_json::from_value(send(&daemon, "executor", "jobs", &[])).ok()?;
        jobs.jobs.into_iter().find(|j| {
            j.status == "running"
                && j.progress
                    .as_ref()
                    .is_some_and(|p| p.last_tool.as_deref() == Some("Bash"))
        })
    });
    let progress = job.progress.clone().unwrap();
    assert_eq!((progress.turns, progress.input_tokens), (1, 120), "{job:?}");
    assert!(job.seconds_since_last_event.is_some(), "{job:?}");
    let (status, body) = http(&address, "GET", "/api/state", &[]);
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["jobs"]["message"], "jobs", "{body}");
    let shown: JobsReply = serde_json::from_value(state["jobs"]["reply"].clone()).unwrap();
    let running = shown
        .jobs
        .iter()
        .find(|j| j.job == job.job)
        .unwrap_or_else(|| panic!("job {} not on the page: {body}", job.job));
    assert_eq!(running.status, "running");
    let shown_progress = running.progress.as_ref().unwrap();
    assert_eq!(shown_progress.turns, 1);
    assert_eq!(shown_progress.last_tool.as_deref(), Some("Bash"));
    assert!(daemon.ctl(&["stop", "--now"]).status.success());
    daemon.wait_exit(WAIT);
}
