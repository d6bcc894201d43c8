//! `agent fleet status`: every instance of a fleet from its HTTP API (goal,
//! run state, iteration, fitness, budgets), and, given the NATS server,
//! every worker from the workers' bucket (slots, busy, done, failed).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::exit;

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every instance's goal, run state, iteration, fitness and budgets,
    /// and every worker's slots.
    Status(FleetStatusArgs),
}

#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// A TOML file: `instances = ["http://agent-0.agent:9464", ...]`, each
    /// instance's HTTP address (`[http] listen`).
    #[arg(long, value_name = "FILE")]
    pub instances: PathBuf,
    /// The NATS server the workers pull from: lists them too.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The job stream's name (`[workers] stream`).
    #[arg(long, value_name = "NAME", default_value = "AGENT_JOBS")]
    pub stream: String,
    /// One JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: FleetCommand) -> u8 {
    let FleetCommand::Status(args) = command;
    let instances = match read_instances(&args.instances) {
        Ok(instances) => instances,
        Err(error) => {
            eprintln!("agent: {error}");
            return exit::USAGE;
        }
    };
    let asked = futures::future::join_all(instances.iter().map(|url| instance(url))).await;
    let workers = match &args.nats {
        Some(url) => Some(workers(url, &args.stream).await),
        None => None,
    };
    let unreachable = asked.iter().any(|a| a.get("error").is_some())
        || workers.as_ref().is_some_and(Result::is_err);
    if args.json {
        let workers = workers.map(|w| w.unwrap_or_else(|error| json!({ "error": error })));
        println!("{}", json!({ "instances": asked, "workers": workers }));
    } else {
        print_instances(&asked);
        match workers {
            Some(Ok(workers)) => print_workers(&workers),
            Some(Err(error)) => println!("\nworkers: {error}"),
            None => {}
        }
    }
    if unreachable { exit::FAILED } else { exit::OK }
}

/// The instance URLs a fleet file lists.
fn read_instances(file: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", file.display(), e.message()))?;
    let Some(list) = table.get("instances").and_then(toml::Value::as_array) else {
        return Err(format!(
            "{}: expected `instances = [\"http://host:port\", ...]`",
            file.display()
        ));
    };
    list.iter()
        .map(|v| {
            v.as_str()
                .map(|url| url.trim_end_matches('/').to_string())
                .ok_or_else(|| {
                    format!(
                        "{}: every instance must be a URL string, found {v}",
                        file.display()
                    )
                })
        })
        .collect()
}

/// One instance's facts from `/api/state`, or why they could not be had.
async fn instance(url: &str) -> Value {
    let state = match get_json(&format!("{url}/api/state")).await {
        Ok(state) => state,
        Err(error) => return json!({ "url": url, "error": error }),
    };
    let status = &state["status"];
    let budgets = state["budgets"]["reply"]["budgets"].clone();
    json!({
        "url": url,
        "goal": status["goal"],
        "run_state": status["run_state"],
        "iteration": status["iteration"],
        "fitness": status["fitness"],
        "backend": status["backend"],
        "budgets": budgets,
    })
}

async fn get_json(url: &str) -> Result<Value, String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::get(url)
        .body(Empty::new())
        .map_err(|e| format!("not a usable URL: {e}"))?;
    let response = tokio::time::timeout(ASK_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "no answer within 5s".to_string())?
        .map_err(|e| format!("unreachable: {}", crate::workers::queue::why(&e)))?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("answered something that is not JSON: {e}"))
}

/// The workers' own reports from the workers' bucket.
async fn workers(url: &str, stream: &str) -> Result<Value, String> {
    use futures::StreamExt;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(ASK_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| {
            format!(
                "cannot reach NATS at {url}: {}",
                crate::workers::queue::why(&e)
            )
        })?;
    let jetstream = async_nats::jetstream::new(client);
    let bucket = format!("{stream}_workers");
    let store = match jetstream.get_key_value(&bucket).await {
        Ok(store) => store,
        // No worker ever reported.
        Err(_) => return Ok(json!([])),
    };
    let mut keys = store
        .keys()
        .await
        .map_err(|e| format!("cannot list {bucket}: {}", crate::workers::queue::why(&e)))?;
    let mut listed = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        if let Ok(Some(bytes)) = store.get(&key).await
            && let Ok(status) = serde_json::from_slice::<Value>(&bytes)
        {
            listed.push(status);
        }
    }
    Ok(Value::Array(listed))
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A whole amount without decimals (tokens, iterations), else cents.
fn amount(value: &Value) -> String {
    match value.as_f64() {
        Some(whole) if whole.fract() == 0.0 => format!("{whole:.0}"),
        Some(part) => format!("{part:.2}"),
        None => "-".into(),
    }
}

fn budgets_cell(budgets: &Value) -> String {
    let Some(list) = budgets.as_array() else {
        return "-".into();
    };
    list.iter()
        .filter(|b| !b["limit"].is_null())
        .map(|b| {
            format!(
                "{} {}/{}",
                cell(&b["name"]),
                amount(&b["spent"]),
                amount(&b["limit"])
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_instances(instances: &[Value]) {
    println!(
        "{:<32} {:<10} {:>9} {:>8}  {:<40} GOAL",
        "INSTANCE", "STATE", "ITERATION", "FITNESS", "BUDGETS (spent/limit)"
    );
    for instance in instances {
        if let Some(error) = instance.get("error") {
            println!("{:<32} {}", cell(&instance["url"]), cell(error));
            continue;
        }
        println!(
            "{:<32} {:<10} {:>9} {:>8}  {:<40} {}",
            cell(&instance["url"]),
            cell(&instance["run_state"]),
            cell(&instance["iteration"]),
            cell(&instance["fitness"]),
            budgets_cell(&instance["budgets"]),
            cell(&instance["goal"]),
        );
    }
}

fn print_workers(workers: &Value) {
    let list = workers.as_array().cloned().unwrap_or_default();
    println!(
        "\n{:<32} {:>5} {:>5} {:>6} {:>7}",
        "WORKER", "SLOTS", "BUSY", "DONE", "FAILED"
    );
    if list.is_empty() {
        println!(
            "(no worker reported in the last {}s)",
            crate::workers::queue::WORKER_REPORT_TTL.as_secs()
        );
    }
    for worker in &list {
        println!(
            "{:<32} {:>5} {:>5} {:>6} {:>7}",
            cell(&worker["name"]),
            cell(&worker["slots"]),
            cell(&worker["busy"]),
            cell(&worker["done"]),
            cell(&worker["failed"]),
        );
    }
}
