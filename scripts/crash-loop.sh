#!/usr/bin/env bash
# Crash loop: ROUNDS times, start `agent run`, `kill -9` it at a random
# moment of its iterations, and check what it left: the committed count
# never goes back, every accepted change is on the branch once, no process
# of the run is left, the store opens. A last clean run checks the worktree
# is clean at the head. Prints rounds, losses, duplicates, orphans.
#
#   scripts/crash-loop.sh [--rounds N] [--json]      (default 100)
#
# AGENT_BIN=path runs that binary instead of a fresh release build.
source "$(dirname "$0")/common.sh"

rounds=100
json=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --json) json=1; shift ;;
    *) echo "usage: $0 [--rounds N] [--json]" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d)
trap 'pkill -9 -f "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
make_crate "$work/crate"
state="$work/state"
write_config "$work/agent.toml" "$work/crate" "$state" 'enabled = "auto"' 'enabled = "off"'
# The stand-in takes a moment, so a kill often lands while a job runs.
export FAKE_CLAUDE_DELAY=0.05

losses=0
duplicates=0
orphans=0
refused=0
previous=0
finished=0
started=$(date +%s)
for ((round = 1; round <= rounds; round++)); do
    "$AGENT" run --config "$work/agent.toml" --max-iterations $((previous + 1000)) \
        --exit-on-pause >"$work/round.log" 2>&1 &
    daemon=$!
    # A random moment from 0.1 to 1.6 s: before, during or between iterations.
    sleep "$(awk -v r="$RANDOM" 'BEGIN {printf "%.3f", 0.1 + 1.5*r/32768}')"
    if kill -9 "$daemon" 2>/dev/null; then
        wait "$daemon" 2>/dev/null || true
    else
        # It had finished its iterations before the kill.
        wait "$daemon" && finished=$((finished + 1)) || {
            status=$?
            if [[ $status == "$EXIT_PAUSED" ]]; then
                echo "crash-loop FAILED in round $round: $(run_failure "$status" "$work/round.log")" >&2
                exit 1
            fi
            refused=$((refused + 1))
            echo "round $round: the agent did not run: $(grep -m1 -i 'error\|refus' "$work/round.log" || tail -1 "$work/round.log")" >&2
        }
    fi
    # No process of the run is left (the stand-in, validation, fitness):
    # each is killed with its process group when the agent dies.
    left=""
    for _ in $(seq 50); do
        left=$(marked_pids "$state")
        [[ -z "$left" ]] && break
        sleep 0.02
    done
    if [[ -n "$left" ]]; then
        orphans=$((orphans + $(wc -w <<<"$left")))
        echo "round $round: left running: $(ps -o pid=,args= -p "${left//$'\n'/,}" 2>/dev/null | head -3)" >&2
        kill -9 $left 2>/dev/null || true
    fi
    # The store opens and never holds fewer committed iterations than before.
    if ! now=$(last_committed "$state"); then
        losses=$((losses + 1))
        echo "round $round: the store does not open" >&2
        continue
    fi
    if ((now < previous)); then
        losses=$((losses + previous - now))
        echo "round $round: committed went back from $previous to $now" >&2
    fi
    previous=$now
    dups=$(branch_iterations "$work/crate" | sort | uniq -d | wc -l)
    if ((dups > 0)); then
        duplicates=$((duplicates + dups))
        echo "round $round: $dups iteration(s) twice on the branch" >&2
    fi
done

[[ "$FAKE_CLAUDE_MODE" == edit ]] || { echo "crash-loop: $orphans orphans in $rounds rounds (FAKE_CLAUDE_MODE=$FAKE_CLAUDE_MODE)"; exit 1; }

# A last run to its end: it recovers whatever the last kill left, then the
# worktree is clean at the branch's head.
timeout 120 "$AGENT" run --config "$work/agent.toml" --max-iterations $((previous + 1)) \
    --exit-on-pause >"$work/last.log" 2>&1 ||
    { status=$?; losses=$((losses + 1)); echo "the last run failed: $(run_failure "$status" "$work/last.log")" >&2; }
dirty=$(git -C "$state/worktree" status --porcelain | wc -l)
branch_head=$(git -C "$work/crate" rev-parse "$(git -C "$state/worktree" symbolic-ref HEAD)")
worktree_head=$(git -C "$state/worktree" rev-parse HEAD)
clean=1
[[ $dirty == 0 && "$branch_head" == "$worktree_head" ]] || clean=0
final=$(last_committed "$state")
if ((final != previous + 1)); then
    losses=$((losses + 1))
    echo "the last run did not commit its iteration ($final committed, $((previous + 1)) asked for): $(grep -m1 'paused\|error' "$work/last.log" || tail -1 "$work/last.log")" >&2
fi
# Every committed iteration whose change was kept is on the branch, once.
kept=$("$AGENT" history --state "$state" --json --last 1000000 |
    python3 -c 'import json,sys; print(sum(1 for l in sys.stdin if l.strip() and json.loads(l)["outcome"] == "accepted"))')
on_branch=$(branch_iterations "$work/crate" | sort -u | wc -l)
[[ "$kept" == "$on_branch" ]] || { losses=$((losses + 1)); echo "$kept kept iterations in the store, $on_branch on the branch" >&2; }

elapsed=$(($(date +%s) - started))
echo "crash-loop: $rounds rounds of kill -9 in ${elapsed}s; $final iterations committed ($kept kept, $on_branch on the branch), $finished rounds ended before the kill"
echo "  losses $losses, duplicates $duplicates, orphans $orphans, refused starts $refused, worktree clean at the head: $([[ $clean == 1 ]] && echo yes || echo NO)"
if [[ $json == 1 ]]; then
    printf '{"rounds":%s,"committed":%s,"kept":%s,"losses":%s,"duplicates":%s,"orphans":%s,"refused":%s,"clean":%s,"seconds":%s}\n' \
        "$rounds" "$final" "$kept" "$losses" "$duplicates" "$orphans" "$refused" "$clean" "$elapsed"
fi
[[ $losses == 0 && $duplicates == 0 && $orphans == 0 && $refused == 0 && $clean == 1 ]]
