#!/usr/bin/env bash
# Checks what deploy/ ships, here, without a container engine or a cluster:
#   - the Kubernetes manifests against the Kubernetes 1.31 schemas
#     (kubernetes-validate from PyPI, which .ci/run installs into
#     target/kube-validate), strictly: an unknown field fails;
#   - the systemd unit with `systemd-analyze verify` (its ExecStart pointed at
#     this build's binary); any line it prints fails, since it reports a
#     value it cannot parse as "ignoring" and still exits 0;
#   - that the Kubernetes manifests agree with each other: the worker pool
#     runs the agent's image and dials the NATS URL the agent's ConfigMap
#     names, which is the nats Service's name and client port; fleet.toml's
#     instances are the agent StatefulSet's pods on its Service's port;
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

echo "::: the fleet's manifests agree"
# With kubernetes-validate's Python, which has PyYAML (a dependency of it).
PYTHON=$(dirname "$VALIDATE")/python3
[[ -x "$PYTHON" ]] || PYTHON=python3
"$PYTHON" - "$ROOT/deploy/kubernetes" <<'PY'
import sys, tomllib, yaml
from urllib.parse import urlsplit
d = sys.argv[1]
def fail(message):
    sys.exit(f"check-deploy: {message}")
def load(name):
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(open(f"{d}/{name}")) if o}
def container(o):
    return o["spec"]["template"]["spec"]["containers"][0]
def port(service, name):
    return next(p["port"] for p in service["spec"]["ports"] if p["name"] == name)
agent, worker, nats = load("statefulset.yaml"), load("worker.yaml"), load("nats.yaml")
config = tomllib.loads(load("configmap.yaml")[("ConfigMap", "agent-config")]["data"]["agent.toml"])
sts, svc = agent[("StatefulSet", "agent")], agent[("Service", "agent")]
pool = container(worker[("Deployment", "agent-worker")])
if pool["image"] != container(sts)["image"]:
    fail(f"worker.yaml runs {pool['image']}, statefulset.yaml {container(sts)['image']}")
args = pool["args"]
url = args[args.index("--nats") + 1]
if url != config["workers"]["nats"]:
    fail(f"worker.yaml's --nats is {url}, configmap.yaml's [workers] nats {config['workers']['nats']}")
server = urlsplit(url)
nats_svc = [o for (kind, _), o in nats.items() if kind == "Service"][0]
if (server.hostname, server.port) != (nats_svc["metadata"]["name"], port(nats_svc, "client")):
    fail(f"{url} is not nats.yaml's Service {nats_svc['metadata']['name']}:{port(nats_svc, 'client')}")
listen = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
if listen != next(p["containerPort"] for p in pool["ports"] if p["name"] == "http"):
    fail(f"worker.yaml's --listen port {listen} is not its container's http port")
instances = tomllib.load(open(f"{d}/fleet.toml", "rb"))["instances"]
if not instances:
    fail("fleet.toml lists no instances")
for instance in instances:
    u = urlsplit(instance)
    labels = (u.hostname or "").split(".")
    if u.port != port(svc, "http") or len(labels) < 2 or labels[1] != svc["metadata"]["name"] \
            or not labels[0].startswith(sts["metadata"]["name"] + "-"):
        fail(f"fleet.toml's {instance} is not a pod of the StatefulSet {sts['metadata']['name']} "
             f"on its Service's port {port(svc, 'http')}")
PY

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
