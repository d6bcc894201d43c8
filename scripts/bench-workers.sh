#!/usr/bin/env bash
# Jobs through NATS JetStream against jobs run in the agent, with the
# stand-in claude at zero delay (validation `true`, fitness `echo 1`):
#   - one job's round trip: N one-candidate iterations with the jobs run in
#     the agent (claude-cli) and then on one `agent worker` through a local
#     nats-server; the difference per iteration is the queue's overhead;
#   - throughput: JOBS jobs (10 candidates an iteration) over 1, 2 and 4
#     workers of 2 slots each, wall time from the agent's start to its exit.
#
#   scripts/bench-workers.sh [--iterations N] [--jobs M] [--json]   (20, 100)
#
# The nats-server is $NATS_SERVER, else target/nats/bin/nats-server (which
# .ci/run installs), else the one on PATH. AGENT_BIN=path runs that binary
# instead of a fresh release build. The sandbox is off for every run: its
# own cost is bench-e2e.sh's.
source "$(dirname "$0")/common.sh"

iterations=20
jobs=100
json=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --iterations) iterations=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --json) json=1; shift ;;
    *) echo "usage: $0 [--iterations N] [--jobs M] [--json]" >&2; exit 2 ;;
    esac
done
NATS=${NATS_SERVER:-$ROOT/target/nats/bin/nats-server}
[[ -x "$NATS" ]] || NATS=$(command -v nats-server) || { echo "no nats-server (see .ci/run)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="nats://127.0.0.1:$port"
"$NATS" -js -sd "$work/nats" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "Server is ready" "$work/nats.log" && break; sleep 0.05; done

# workers NAME COUNT: COUNT workers of 2 slots, each on its own stream name's
# queue is shared: they all pull from the one stream of the run.
start_workers() {
    local stream=$1 count=$2 config=$3 i
    for ((i = 1; i <= count; i++)); do
        "$AGENT" worker --nats "$url" --config "$config" --concurrency 2 \
            --name "$stream-w$i" --state "$work/$stream-w$i" --listen 127.0.0.1:0 \
            >"$work/$stream-w$i.log" 2>&1 &
        pids+=($!)
        for _ in $(seq 100); do grep -q "health at" "$work/$stream-w$i.log" && break; sleep 0.05; done
    done
}

# run_ms NAME ITERATIONS [FROM TO]...: wall ms of `agent run` from start to exit.
run_ms() {
    local name=$1 n=$2 dir="$work/$1"
    shift 2
    make_crate "$dir/crate"
    write_config "$dir/agent.toml" "$dir/crate" "$dir/state" \
        'enabled = "auto"' 'enabled = "off"' 'usd_per_day = 50.0' 'usd_per_day = 100000.0' "$@"
    local t
    t=$(now_ns)
    FAKE_CLAUDE_PLAN_MODE=success \
        "$AGENT" run --config "$dir/agent.toml" --max-iterations "$n" --exit-on-pause \
        >"$dir/run.log" 2>&1 || {
        echo "bench-workers FAILED ($name): $(run_failure $? "$dir/run.log")" >&2
        exit 1
    }
    awk -v ns="$(($(now_ns) - t))" 'BEGIN {printf "%.0f", ns/1e6}'
}

# queued NAME: the replacements that send a run's jobs to the stream NAME.
queued() {
    echo "# nats = \"nats://127.0.0.1:4222\""
    echo "nats = \"$url\""
    echo 'stream = "AGENT_JOBS"'
    echo "stream = \"$1\""
}

# --- one job's round trip -------------------------------------------------
local_ms=$(run_ms local "$iterations")
mapfile -t q < <(queued ROUNDTRIP)
write_config "$work/roundtrip-worker.toml" "$work" "$work/unused" 'enabled = "auto"' 'enabled = "off"' "${q[@]}"
start_workers ROUNDTRIP 1 "$work/roundtrip-worker.toml"
queue_ms=$(run_ms queue "$iterations" "${q[@]}")
local_per=$(awk -v t="$local_ms" -v n="$iterations" 'BEGIN {printf "%.1f", t/n}')
queue_per=$(awk -v t="$queue_ms" -v n="$iterations" 'BEGIN {printf "%.1f", t/n}')
overhead=$(awk -v a="$queue_per" -v b="$local_per" 'BEGIN {printf "%.1f", a-b}')

# --- throughput: JOBS jobs over 1, 2, 4 workers -----------------------------
per_iteration=10
rounds=$(((jobs + per_iteration - 1) / per_iteration))
declare -A rate
for count in 1 2 4; do
    mapfile -t q < <(queued "T$count")
    write_config "$work/t$count-worker.toml" "$work" "$work/unused" 'enabled = "auto"' 'enabled = "off"' "${q[@]}"
    start_workers "T$count" "$count" "$work/t$count-worker.toml"
    ms=$(run_ms "t$count" "$rounds" "${q[@]}" 'candidates = 1' "candidates = $per_iteration")
    rate[$count]=$(awk -v ms="$ms" -v n="$((rounds * per_iteration))" 'BEGIN {printf "%.1f", n/(ms/1000)}')
done

echo "bench-workers: stand-in claude at zero delay, sandbox off, nats-server $("$NATS" --version | awk '{print $2}')"
printf '  %-48s %s ms\n' "one-candidate iteration, job in the agent" "$local_per"
printf '  %-48s %s ms\n' "one-candidate iteration, job on a worker" "$queue_per"
printf '  %-48s %s ms\n' "the queue's round trip, per job" "$overhead"
for count in 1 2 4; do
    printf '  %-48s %s jobs/s\n' "$((rounds * per_iteration)) jobs, $count worker(s) of 2 slots" "${rate[$count]}"
done
if [[ $json == 1 ]]; then
    printf '{"iterations":%s,"local_ms_per_iteration":%s,"queue_ms_per_iteration":%s,"roundtrip_overhead_ms":%s,"jobs":%s,"jobs_per_s_1":%s,"jobs_per_s_2":%s,"jobs_per_s_4":%s}\n' \
        "$iterations" "$local_per" "$queue_per" "$overhead" "$((rounds * per_iteration))" "${rate[1]}" "${rate[2]}" "${rate[4]}"
fi
