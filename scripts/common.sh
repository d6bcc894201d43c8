# Sourced by the scripts in this folder: the agent binary, a one-file crate
# under git for it to work on, and a configuration that runs it with the
# stand-in `claude` (tests/bin/claude) at zero delay, validation `true` and
# fitness `echo 1` — every iteration edits src/lib.rs and is kept.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STANDIN="$ROOT/tests/bin/claude"
# AGENT_BIN=path uses that binary; else the release build, built first.
if [[ -n "${AGENT_BIN:-}" ]]; then
    AGENT="$AGENT_BIN"
else
    AGENT="$ROOT/target/release/agent"
    (cd "$ROOT" && cargo build --release --quiet --bin agent)
fi
[[ -x "$AGENT" ]] || { echo "no agent binary at $AGENT" >&2; exit 2; }

# The stand-in replaces src/lib.rs with one line that differs every call: by
# the clock, since in the sandbox's PID namespace every job has the same pid.
export FAKE_CLAUDE_MODE=${FAKE_CLAUDE_MODE:-edit} FAKE_CLAUDE_EDIT_REPLACE=1
export FAKE_CLAUDE_EDIT_TEXT='pub const JOB: u64 = {nonce};'
# What a test environment could leak into the runs.
unset OTEL_EXPORTER_OTLP_ENDPOINT FAILPOINTS RUST_LOG || true

now_ns() { date +%s%N; }

# make_crate DIR: a crate with one source file, committed on `main`.
make_crate() {
    local dir=$1
    mkdir -p "$dir/src"
    printf '[package]\nname = "soak"\nversion = "0.1.0"\nedition = "2021"\n' >"$dir/Cargo.toml"
    echo 'pub const JOB: u64 = 0;' >"$dir/src/lib.rs"
    git -C "$dir" init -q -b main
    git -C "$dir" add .
    git -C "$dir" -c user.name=bench -c user.email=bench@localhost commit -q -m start
}

# write_config FILE CRATE STATE [FROM TO]...: the shipped agent.toml for this
# crate and state directory, with the replacements given.
write_config() {
    local file=$1 crate=$2 state=$3
    shift 3
    python3 - "$ROOT/config/agent.toml" "$file" "$crate" "$state" "$STANDIN" "$@" <<'PY'
import sys
source, target, crate, state, standin, *pairs = sys.argv[1:]
text = open(source).read()
replacements = [
    ('workspace = "examples/tidy-stats"', f'workspace = "{crate}"'),
    ('state = "state"', f'state = "{state}"'),
    ('backend = "auto"', 'backend = "claude-cli"'),
    ('claude_bin = "claude"', f'claude_bin = "{standin}"'),
    ('command = "cargo test --quiet"', 'command = "true"'),
    ('fitness = "cargo-warnings"', 'fitness = "echo 1"'),
    # The hourly rate limit is a budget, not a cost.
    ('iterations_per_hour = 120', 'iterations_per_hour = 1000000000'),
    # Every change is kept at a constant fitness, by design: the loop check
    # would rightly call that no progress.
    ('loop_no_progress = 30', 'loop_no_progress = 0'),
] + list(zip(pairs[::2], pairs[1::2]))
for old, new in replacements:
    if old not in text:
        sys.exit(f"write_config: the shipped agent.toml has no {old!r}")
    text = text.replace(old, new)
open(target, "w").write(text)
PY
}

# write_actors FILE [FROM TO]...: the shipped actors.toml with replacements.
write_actors() {
    local file=$1
    shift
    python3 - "$ROOT/actors.toml" "$file" "$@" <<'PY'
import sys
source, target, *pairs = sys.argv[1:]
text = open(source).read()
for old, new in zip(pairs[::2], pairs[1::2]):
    if old not in text:
        sys.exit(f"write_actors: the shipped actors.toml has no {old!r}")
    text = text.replace(old, new)
open(target, "w").write(text)
PY
}

# Every run a script drives is started with --exit-on-pause: a run that
# pauses exits with this status instead of waiting for an operator forever.
EXIT_PAUSED=4

# run_failure STATUS LOG: why `agent run` ended with STATUS, from its log:
# the pause line when it paused, else its last line.
run_failure() {
    local status=$1 log=$2
    if [[ $status == "$EXIT_PAUSED" ]]; then
        echo "the run paused: $(grep -m1 '^agent: paused: ' "$log" | sed 's/^agent: paused: //')"
    else
        echo "agent run exited with status $status: $(tail -1 "$log")"
    fi
}

# percentile P < numbers (one per line): the P-th percentile, nearest rank.
percentile() {
    sort -n | awk -v p="$1" '{v[NR]=$1} END {if (NR==0) {print "nan"; exit} i=int(p/100*(NR-1)+0.5)+1; print v[i]}'
}

# rss_mb PID: the process's resident memory in MB (empty once it is gone).
rss_mb() {
    awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || true
}

# store_mb STATE: the size of the store on disk in MB.
store_mb() {
    du -sk "$1/store" 2>/dev/null | awk '{printf "%.2f", $1/1024}'
}

# last_committed STATE: the newest iteration the (stopped) agent's store
# holds as committed; 0 for none.
last_committed() {
    "$AGENT" history --state "$1" --json --last 1 2>/dev/null |
        python3 -c 'import json,sys; lines=[json.loads(l) for l in sys.stdin if l.strip()]; print(lines[-1]["iteration"] if lines else 0)'
}

# branch_iterations CRATE: the iteration ids on the agent's commits, one a line.
branch_iterations() {
    git -C "$1" log --format=%B --branches='agent/*' 2>/dev/null |
        sed -n 's/^Iteration: \([0-9]*\)$/\1/p'
}

# marked_pids STATE: processes carrying the mark of the run of STATE (every
# child the agent starts has AGENT_INSTANCE=<state directory>), the agent
# itself not included.
marked_pids() {
    local mark="AGENT_INSTANCE=$(cd "$1" && pwd -P)"
    local environ
    for environ in /proc/[0-9]*/environ; do
        if { tr '\0' '\n' <"$environ"; } 2>/dev/null | grep -qxF "$mark"; then
            environ=${environ#/proc/}
            echo "${environ%/environ}"
        fi
    done
}
