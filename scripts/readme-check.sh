#!/usr/bin/env bash
# The README's "Try it" commands, run as printed — read from the README
# itself — in a fresh clone of this repository's HEAD, in a directory of its
# own, with bubblewrap installed:
#
#   1. the first command, with the shipped configuration (`[sandbox] enabled
#      = "auto"`): exit 0, four iterations, fitness lower at the end, the
#      sandbox on, and `git status` of the clone clean afterwards;
#   2. the same command again from a fresh state/, with `[sandbox] enabled =
#      "on"`, so that a sandbox quietly off cannot pass for one that works;
#   3. the README's test command, in the clone (skipped with --first-only).
#
#   scripts/readme-check.sh [--first-only]
#
# What is checked is HEAD: commit first. The clone's `target` is a link to
# this checkout's, so the build is shared (and the tests find what .ci/run
# installs there); the clone itself is removed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
first_only=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --first-only) first_only=1; shift ;;
    *) echo "usage: $0 [--first-only]" >&2; exit 2 ;;
    esac
done

fail() {
    echo "readme-check FAILED: $*" >&2
    exit 1
}

command -v bwrap >/dev/null 2>&1 ||
    fail "bubblewrap is not installed: this check is of a machine that has it (apt-get install bubblewrap)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# mktemp's 0700 would keep other users out of the clone's binaries, and a
# test runs `agent ctl` as another user.
chmod 755 "$work"
clone="$work/agent"
git clone --quiet "$ROOT" "$clone"
mkdir -p "$ROOT/target"
ln -s "$ROOT/target" "$clone/target"
cd "$clone"

# The commands of the README's "Try it" block, without their comments.
mapfile -t commands < <(python3 - README.md <<'PY'
import re, sys
text = open(sys.argv[1]).read()
section = text.split("## Try it", 1)[1]
block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
for line in block.splitlines():
    command = line.split("#", 1)[0].strip()
    if command:
        print(command)
PY
)
[[ ${#commands[@]} == 2 ]] || fail "expected two commands under \"## Try it\" in README.md, found ${#commands[@]}"
run_command=${commands[0]}
test_command=${commands[1]}

# The demo must end by itself: a run that waits (a pause) is a failure, so
# it gets a deadline well beyond a release build on two cores.
demo() {
    local label=$1 log="$work/$1.log"
    echo "::: $label: $run_command"
    if ! timeout 1200 bash -c "$run_command" >"$log" 2>&1; then
        tail -n 15 "$log" >&2
        fail "$label: \`$run_command\` did not exit 0 (log above)"
    fi
    grep -q '^agent: sandbox on' "$log" ||
        fail "$label: the sandbox was not on: $(grep -m1 '^agent: sandbox' "$log" || echo 'no sandbox line')"
    for n in 1 2 3 4; do
        grep -q "^iteration   $n  " "$log" || fail "$label: no line for iteration $n"
    done
    cargo run --release --quiet -- history --state state --json >"$work/$label.history"
    python3 - "$work/$label.history" "$label" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
label = sys.argv[2]
if len(records) != 4:
    sys.exit(f"readme-check FAILED: {label}: {len(records)} iterations committed, expected 4")
first = records[0]["fitness_before"]
kept = [r["fitness_after"] for r in records if r["outcome"] == "accepted"]
if not kept or kept[-1] >= first:
    sys.exit(f"readme-check FAILED: {label}: fitness did not go down: {first} -> {kept}")
print(f"{label}: 4 iterations, fitness {first:g} -> {kept[-1]:g}")
PY
    grep '^iteration\|^agent: run finished' "$log"
}

demo shipped-config
[[ -z "$(git status --porcelain)" ]] || fail "the clone is not clean after the run: $(git status --porcelain | head -5)"

# The same command with the sandbox required, from a fresh state directory.
rm -rf state/*
sed -i 's/^enabled = "auto"$/enabled = "on"/' config/agent.toml
grep -q '^enabled = "on"$' config/agent.toml || fail "config/agent.toml has no [sandbox] enabled = \"auto\" to turn on"
demo sandbox-on
git checkout --quiet config/agent.toml
rm -rf state/*
[[ -z "$(git status --porcelain)" ]] || fail "the clone is not clean: $(git status --porcelain | head -5)"

if [[ $first_only == 0 ]]; then
    echo "::: $test_command"
    bash -c "$test_command"
fi
echo "readme-check: ok"
