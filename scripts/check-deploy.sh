#!/usr/bin/env bash
# Checks what deploy/ ships, here, without a container engine or a cluster:
#   - the Kubernetes manifests against the Kubernetes 1.31 schemas
#     (kubernetes-validate from PyPI, which .ci/run installs into
#     target/kube-validate), strictly: an unknown field fails;
#   - the systemd unit with `systemd-analyze verify` (its ExecStart pointed at
#     this build's binary); any line it prints fails, since it reports a
#     value it cannot parse as "ignoring" and still exits 0;
#   - every agent.toml and actors.toml deploy/ ships, with `agent config
#     check`, and the ConfigMap's actors.toml against the repository's;
#   - with --build, the Dockerfile's build stage, run as written: its COPY
#     lines copied into a fresh context, keeping their modification times
#     as Docker's COPY does, and its `cargo build` run there (the target
#     directory shared with this checkout's: a build of the same sources is
#     not compiled again, while a source the COPY lines miss fails it), and
#     every source its runtime stage copies present.
# Usage: scripts/check-deploy.sh [--build]   (AGENT_BIN=path: the binary to use)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AGENT=${AGENT_BIN:-$ROOT/target/debug/agent}
VALIDATE=${KUBERNETES_VALIDATE:-$ROOT/target/kube-validate/bin/kubernetes-validate}
BUILD=0
[[ "${1:-}" == "--build" ]] && BUILD=1

fail() { echo "check-deploy: $*" >&2; exit 1; }
[[ -x "$AGENT" ]] || fail "no agent binary at $AGENT (cargo build first, or set AGENT_BIN)"
[[ -x "$VALIDATE" ]] || fail "no kubernetes-validate at $VALIDATE (see .ci/run)"
command -v systemd-analyze >/dev/null || fail "systemd-analyze is not installed"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "::: kubernetes manifests"
"$VALIDATE" --strict --quiet "$ROOT"/deploy/kubernetes/*.yaml \
    || fail "a Kubernetes manifest does not validate"

echo "::: systemd unit"
sed "s|/usr/local/bin/agent|$AGENT|g" "$ROOT/deploy/systemd/agent.service" >"$WORK/agent.service"
said=$(systemd-analyze verify "$WORK/agent.service" 2>&1) || fail "systemd-analyze verify failed: $said"
[[ -z "$said" ]] || fail "systemd-analyze verify: $said"

echo "::: configuration files"
"$AGENT" config check --config "$ROOT/deploy/config/agent.toml" >/dev/null
"$AGENT" config check --config "$ROOT/deploy/compose.agent.toml" >/dev/null
# The ConfigMap's files, as the pod reads them.
python3 - "$ROOT/deploy/kubernetes/configmap.yaml" "$WORK" <<'PY'
import sys
text = open(sys.argv[1]).read().split("\ndata:\n", 1)[1]
files, name, lines = {}, None, []
for line in text.splitlines():
    if line.startswith("  ") and not line.startswith("    ") and line.rstrip().endswith(": |"):
        if name:
            files[name] = lines
        name, lines = line.strip()[:-3], []
    elif name is not None:
        lines.append(line[4:] if line.startswith("    ") else line.strip())
files[name] = lines
for name, body in files.items():
    open(f"{sys.argv[2]}/{name}", "w").write("\n".join(body).rstrip("\n") + "\n")
PY
"$AGENT" config check --config "$WORK/agent.toml" --actors "$WORK/actors.toml" >/dev/null
diff -u "$ROOT/actors.toml" "$WORK/actors.toml" >/dev/null \
    || fail "deploy/kubernetes/configmap.yaml's actors.toml differs from actors.toml"

if [[ $BUILD == 1 ]]; then
    echo "::: the Dockerfile's build stage"
    context="$WORK/context"
    mkdir -p "$context"
    # The build stage's COPY lines, as written: COPY src... dest
    awk '/^FROM .* AS build/{b=1; next} /^FROM /{b=0} b && /^COPY /{print}' "$ROOT/deploy/Dockerfile" |
        while read -r _ rest; do
            read -ra words <<<"$rest"
            dest=${words[-1]}
            for src in "${words[@]:0:${#words[@]}-1}"; do
                [[ -e "$ROOT/$src" ]] || fail "the Dockerfile copies $src, which is not in the repository"
                if [[ "$dest" == "./" ]]; then cp -rp "$ROOT/$src" "$context/"; else cp -rp "$ROOT/$src" "$context/$dest"; fi
            done
        done
    command=$(awk '/^FROM .* AS build/{b=1} /^FROM /&&!/AS build/{b=0} b' "$ROOT/deploy/Dockerfile" |
        grep -o 'cargo build[^&\\]*' | head -1)
    [[ -n "$command" ]] || fail "no cargo build in the Dockerfile's build stage"
    (cd "$context" && CARGO_TARGET_DIR="$ROOT/target" $command) || fail "the Dockerfile's build failed: $command"
    # What the runtime stage copies from the context.
    awk '/^FROM /&&!/AS build/{r=1} r && /^COPY / && !/--from=/{print}' "$ROOT/deploy/Dockerfile" |
        while read -r _ rest; do
            read -ra words <<<"$rest"
            for src in "${words[@]:0:${#words[@]}-1}"; do
                [[ "$src" == --* ]] && continue
                [[ -e "$ROOT/$src" ]] || fail "the Dockerfile's runtime stage copies $src, which is not in the repository"
            done
        done
fi
echo "check-deploy: deploy/ is valid"
