#!/usr/bin/env bash
# The real binary against its floor: `agent run` with the stand-in claude at
# zero delay and `true` / `echo 1` as validation and fitness, for N
# iterations, next to the same process spawns and a `git commit` done by a
# shell loop for N iterations (the floor). The ratio is the figure. Then the
# `agent ctl status` process's round trip while the agent iterates. Then
# candidates: K=4 against K=1 (`[run] candidates`) with the stand-in at a
# fixed delay (DELAY seconds, default 1), for K_ITERATIONS (default 4)
# iterations each: the
# wall time of an iteration of four jobs should stay near one job's delay
# (the dollar budget is raised for these runs: the permit holds four jobs'
# worst cases, which the shipped $50 a day would allow once a day).
#
#   scripts/bench-e2e.sh [--iterations N] [--json]     (default 200)
#
# AGENT_BIN=path runs that binary instead of a fresh release build;
# SANDBOX=on runs jobs and checks in bubblewrap (`[sandbox] enabled = "on"`,
# so a machine where it cannot run fails instead of measuring nothing), so
# its own cost shows (the floor does not use it). Every run is started with
# --exit-on-pause: a run that pauses fails the bench with its reason.
source "$(dirname "$0")/common.sh"

iterations=200
json=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --iterations) iterations=$2; shift 2 ;;
    --json) json=1; shift ;;
    *) echo "usage: $0 [--iterations N] [--json]" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
make_crate "$work/crate"
sandbox=off
[[ "${SANDBOX:-off}" == on ]] && sandbox=on
write_config "$work/agent.toml" "$work/crate" "$work/state" \
    'enabled = "auto"' "enabled = \"$sandbox\""

# --- the agent: N iterations, from its start to its exit ------------------
started=$(now_ns)
"$AGENT" run --config "$work/agent.toml" --max-iterations "$iterations" --exit-on-pause \
    >"$work/run.log" 2>&1 || {
    echo "bench-e2e FAILED: $(run_failure $? "$work/run.log")" >&2
    exit 1
}
agent_ns=$(($(now_ns) - started))
committed=$(last_committed "$work/state")
[[ "$committed" == "$iterations" ]] || { echo "expected $iterations iterations, the store holds $committed" >&2; exit 1; }

# --- the floor: the same process spawns and a git commit, by a shell -------
make_crate "$work/floor"
started=$(now_ns)
(
    cd "$work/floor"
    for ((i = 1; i <= iterations; i++)); do
        "$STANDIN" -p "floor $i" --output-format json --permission-mode acceptEdits >/dev/null
        sh -c true
        sh -c 'echo 1' >/dev/null
        git -c user.name=bench -c user.email=bench@localhost commit -qam "floor $i"
    done
)
floor_ns=$(($(now_ns) - started))

# --- `agent ctl status` as a process, while the agent iterates -------------
"$AGENT" run --config "$work/agent.toml" --max-iterations 1000000000 --exit-on-pause \
    >"$work/ctl-run.log" 2>&1 &
daemon=$!
for _ in $(seq 200); do
    "$AGENT" ctl --state "$work/state" status >/dev/null 2>&1 && break
    sleep 0.05
done
for _ in $(seq 100); do
    t=$(now_ns)
    "$AGENT" ctl --state "$work/state" status >/dev/null || {
        wait "$daemon" && status=0 || status=$?
        echo "bench-e2e FAILED: the run ended under agent ctl status: $(run_failure "$status" "$work/ctl-run.log")" >&2
        exit 1
    }
    echo $((($(now_ns) - t) / 1000))
done >"$work/ctl-us"
"$AGENT" ctl --state "$work/state" stop --now >/dev/null
wait "$daemon" || true

# --- candidates: K=4 against K=1, the stand-in at a fixed delay ------------
delay=${DELAY:-1}
k_iterations=${K_ITERATIONS:-4}
# candidates_ms K: ms per iteration of a run of K candidates, start to exit.
candidates_ms() {
    local k=$1 dir="$work/k$1"
    make_crate "$dir/crate"
    write_config "$dir/agent.toml" "$dir/crate" "$dir/state" \
        'enabled = "auto"' "enabled = \"$sandbox\"" 'candidates = 1' "candidates = $k" \
        'usd_per_day = 50.0' 'usd_per_day = 100000.0'
    local t
    t=$(now_ns)
    FAKE_CLAUDE_DELAY=$delay FAKE_CLAUDE_PLAN_MODE=success \
        "$AGENT" run --config "$dir/agent.toml" --max-iterations "$k_iterations" --exit-on-pause \
        >"$dir/run.log" 2>&1 || {
        echo "bench-e2e FAILED (candidates = $k): $(run_failure $? "$dir/run.log")" >&2
        exit 1
    }
    awk -v ns="$(($(now_ns) - t))" -v n="$k_iterations" 'BEGIN {printf "%.0f", ns/n/1e6}'
}
k1_ms=$(candidates_ms 1)
k4_ms=$(candidates_ms 4)

agent_ms=$(awk -v ns="$agent_ns" -v n="$iterations" 'BEGIN {printf "%.2f", ns/n/1e6}')
floor_ms=$(awk -v ns="$floor_ns" -v n="$iterations" 'BEGIN {printf "%.2f", ns/n/1e6}')
ratio=$(awk -v a="$agent_ns" -v f="$floor_ns" 'BEGIN {printf "%.2f", a/f}')
ctl_p50=$(percentile 50 <"$work/ctl-us" | awk '{printf "%.2f", $1/1000}')
ctl_p99=$(percentile 99 <"$work/ctl-us" | awk '{printf "%.2f", $1/1000}')

echo "bench-e2e: $iterations iterations, stand-in claude at zero delay, sandbox $sandbox"
printf '  %-44s %s ms (%.1f iterations/s)\n' "agent run, per iteration (start to exit)" "$agent_ms" "$(awk -v m="$agent_ms" 'BEGIN {print 1000/m}')"
printf '  %-44s %s ms (%.1f iterations/s)\n' "floor: the same spawns + git commit, by sh" "$floor_ms" "$(awk -v m="$floor_ms" 'BEGIN {print 1000/m}')"
printf '  %-44s %s\n' "ratio agent / floor" "$ratio"
printf '  %-44s %s ms / %s ms\n' "agent ctl status process p50 / p99" "$ctl_p50" "$ctl_p99"
printf '  %-44s %s ms (K=1: %s ms; one job: %s s)\n' "K=4 candidates, per iteration (start to exit)" "$k4_ms" "$k1_ms" "$delay"
if [[ $json == 1 ]]; then
    printf '{"iterations":%s,"agent_ms_per_iteration":%s,"floor_ms_per_iteration":%s,"ratio":%s,"ctl_process_p50_ms":%s,"ctl_process_p99_ms":%s,"sandbox":"%s","job_delay_s":%s,"k1_ms_per_iteration":%s,"k4_ms_per_iteration":%s}\n' \
        "$iterations" "$agent_ms" "$floor_ms" "$ratio" "$ctl_p50" "$ctl_p99" "$sandbox" "$delay" "$k1_ms" "$k4_ms"
fi
