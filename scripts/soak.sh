#!/usr/bin/env bash
# Endurance: the real binary for N iterations (or a duration) with a panic
# injected at random moments into random actors. Reports iterations, faults,
# restarts, RSS samples and store size; fails on a lost or repeated
# iteration, RSS growth beyond the bound, or a store that outgrows what its
# retention allows.
#
#   scripts/soak.sh [--iterations N] [--duration 10m] [--retention N]
#                   [--fault-every SECONDS] [--rss-growth-mb MB] [--json]
#
# Defaults: 10000 iterations, retention 1000 (so the store's bound is
# reached and held), a fault every 2 s on average, RSS growth bound 8 MB
# (from the 10% mark to the end). CI runs a short form (.ci/run).
# AGENT_BIN=path runs that binary instead of a fresh release build.
source "$(dirname "$0")/common.sh"

iterations=10000
duration=""
retention=1000
fault_every=2
rss_bound=8
json=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --iterations) iterations=$2; shift 2 ;;
    --duration) duration=$2; iterations=1000000000; shift 2 ;;
    --retention) retention=$2; shift 2 ;;
    --fault-every) fault_every=$2; shift 2 ;;
    --rss-growth-mb) rss_bound=$2; shift 2 ;;
    --json) json=1; shift ;;
    *) echo "usage: $0 [--iterations N | --duration D] [--retention N] [--fault-every S] [--rss-growth-mb MB] [--json]" >&2; exit 2 ;;
    esac
done
deadline=""
if [[ -n "$duration" ]]; then
    seconds=$(python3 -c 'import re,sys; v=sys.argv[1]; m=re.fullmatch(r"(\d+)([smh]?)", v) or sys.exit(f"--duration {v!r}: expected e.g. 90s, 10m, 2h"); print(int(m[1])*{"":1,"s":1,"m":60,"h":3600}[m[2]])' "$duration")
    deadline=$(($(date +%s) + seconds))
fi

work=$(mktemp -d)
trap 'kill -9 "${daemon:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
make_crate "$work/crate"
state="$work/state"
# The stand-in reports tokens and dollars for every job: the budgets are
# lifted (they are judged by the governance tests, not here).
write_config "$work/agent.toml" "$work/crate" "$state" \
    'enabled = "auto"' 'enabled = "off"' \
    'fault_injection = false' 'fault_injection = true' \
    'iterations = 10000' "iterations = $retention" \
    'tokens_per_day = 2000000' 'tokens_per_day = 1000000000000' \
    'usd_per_day = 50.0' 'usd_per_day = 1000000000.0' \
    'audit_entries = 50000' "audit_entries = $((retention * 3))"
# The shipped intensity (5 restarts in 30 s) would rightly give up under a
# fault every few seconds: here it is what is being survived.
write_actors "$work/actors.toml" 'max_restarts = 5' 'max_restarts = 1000' 'within = "30s"' 'within = "60s"'

"$AGENT" run --config "$work/agent.toml" --actors "$work/actors.toml" \
    --max-iterations "$iterations" --exit-on-pause >"$work/run.log" 2>&1 &
daemon=$!
ctl() { "$AGENT" ctl --state "$state" "$@"; }
for _ in $(seq 200); do ctl status >/dev/null 2>&1 && break; sleep 0.05; done

actors=(governor learner researcher executor modifier planner)
faults=0
rss_samples=()
store_at_retention=""
rss_at_mark=""
mark=$((iterations / 10))
[[ -n "$duration" ]] && mark=$retention
started=$(date +%s)
committed=0
faulted_at=0
progressed=0
progressed_at=$(date +%s)
while kill -0 "$daemon" 2>/dev/null; do
    # A random moment: 0 to 2×fault_every seconds.
    sleep "$(awk -v e="$fault_every" -v r="$RANDOM" 'BEGIN {printf "%.2f", e*2*r/32768}')"
    status=$(ctl --json status 2>/dev/null) || continue
    read -r committed run_state < <(python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["iteration"], s["run_state"])' <<<"$status")
    # A pause, or a wait that lasts (a budget), would stall the soak: say
    # why and stop. A short wait (a permit asked while the governor was
    # restarting) is what a fault costs.
    why=$(python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("pause_reason") or s.get("waiting") or "")' <<<"$status")
    if ((committed > progressed)); then
        progressed=$committed
        progressed_at=$(date +%s)
    fi
    if [[ "$run_state" == paused ]] || { [[ -n "$why" ]] && (($(date +%s) - progressed_at > 30)); }; then
        echo "soak FAILED: the run stopped making progress ($run_state): $why" >&2
        exit 1
    fi
    rss=$(rss_mb "$daemon")
    [[ -n "$rss" ]] && rss_samples+=("$committed:$rss")
    if [[ -z "$rss_at_mark" && $committed -ge $mark ]]; then rss_at_mark=$rss; fi
    if [[ -z "$store_at_retention" && $committed -ge $retention ]]; then store_at_retention=$(store_mb "$state"); fi
    if [[ -n "$deadline" && $(date +%s) -ge $deadline ]]; then
        ctl stop >/dev/null 2>&1 || true
        break
    fi
    # One fault per committed stretch: faults that land before the run has
    # committed again would be one failure repeated, which pauses the run
    # on purpose (`pause_after_failures`), not what is soaked here.
    if ((committed > faulted_at)); then
        actor=${actors[$((RANDOM % 6))]}
        ctl fault "$actor" panic >/dev/null 2>&1 && faults=$((faults + 1))
        faulted_at=$committed
    fi
done
rss_end=${rss_samples[-1]#*:}
wait "$daemon" && exit_status=0 || exit_status=$?
elapsed=$(($(date +%s) - started))

# --- checks ---------------------------------------------------------------
failures=()
last=$(last_committed "$state")
[[ $exit_status == 0 ]] || failures+=("$(run_failure "$exit_status" "$work/run.log")")
if [[ -z "$duration" && "$last" != "$iterations" ]]; then
    failures+=("lost iterations: $iterations asked for, the store holds $last as the newest")
fi
# Every kept iteration once in the store's log (the retention's window) and
# once on the branch.
"$AGENT" history --state "$state" --json --last "$retention" >"$work/history.jsonl"
repeated_log=$(python3 -c '
import json, sys
numbers = [json.loads(l)["iteration"] for l in open(sys.argv[1]) if l.strip()]
gaps = [b for a, b in zip(numbers, numbers[1:]) if b != a + 1]
print(len(numbers) - len(set(numbers)) + len(gaps))' "$work/history.jsonl")
[[ $repeated_log == 0 ]] || failures+=("the log has $repeated_log repeated or missing iteration(s) in its window")
repeated_branch=$(branch_iterations "$work/crate" | sort | uniq -d | wc -l)
[[ $repeated_branch == 0 ]] || failures+=("$repeated_branch iteration(s) committed twice on the branch")
restarts=$(grep -c 'actor restarted' "$work/run.log" || true)
rss_growth=$(awk -v a="${rss_at_mark:-$rss_end}" -v b="$rss_end" 'BEGIN {printf "%.1f", b-a}')
if awk -v g="$rss_growth" -v bound="$rss_bound" 'BEGIN {exit !(g > bound)}'; then
    failures+=("RSS grew by $rss_growth MB from iteration $mark to the end (bound $rss_bound MB)")
fi
store_end=$(store_mb "$state")
# Past the retention the store holds a bounded window: what it held when the
# retention was first reached, with room for sled's segment slack.
if [[ -n "$store_at_retention" ]] &&
    awk -v s="$store_end" -v r="$store_at_retention" 'BEGIN {exit !(s > 2*r + 8)}'; then
    failures+=("the store grew to $store_end MB, beyond its retention's bound (2 × $store_at_retention MB + 8 MB)")
fi

echo "soak: $last iterations in ${elapsed}s, $faults faults injected, $restarts actor restarts"
# Ten samples spread over the run.
step=$(( (${#rss_samples[@]} + 9) / 10 ))
spread=()
for ((i = 0; i < ${#rss_samples[@]}; i += step)); do spread+=("${rss_samples[$i]}"); done
echo "  RSS (iteration:MB): ${spread[*]} ${rss_samples[-1]}"
echo "  RSS growth from iteration $mark to the end: $rss_growth MB (bound $rss_bound MB)"
echo "  store: ${store_at_retention:-n/a} MB when the retention ($retention) was reached, $store_end MB at the end"
if [[ $json == 1 ]]; then
    printf '{"iterations":%s,"seconds":%s,"faults":%s,"restarts":%s,"rss_mb_mark":%s,"rss_mb_end":%s,"rss_growth_mb":%s,"store_mb_at_retention":%s,"store_mb_end":%s,"failures":%s}\n' \
        "$last" "$elapsed" "$faults" "$restarts" "${rss_at_mark:-null}" "${rss_end:-null}" "$rss_growth" "${store_at_retention:-null}" "$store_end" "${#failures[@]}"
fi
if [[ ${#failures[@]} -gt 0 ]]; then
    printf 'soak FAILED: %s\n' "${failures[@]}" >&2
    exit 1
fi
echo "soak passed: no iteration lost or repeated, RSS and store within their bounds"
