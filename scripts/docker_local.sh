#!/usr/bin/env bash
# Build the image and run docker/compose.yaml on a machine WITHOUT an image registry, as
# results/docker-* were made (root; Debian bookworm host). A user with a registry needs none of
# this: `docker compose -f docker/compose.yaml up --build` (README, "Containers").
#   1. a Debian root file system by debootstrap, imported as local/bookworm:min;
#   2. docker/base.Dockerfile on it: Debian's python3.11 in a venv, local/python:3.11-slim;
#   3. docker/Dockerfile with BASE_IMAGE=local/python:3.11-slim, torch's CPU wheel from WHEELS
#      (linked into docker/wheels/), PyPI for the rest, pip trusting the host's CA bundle through
#      the BuildKit secret pip_cert (neither the wheel nor the bundle stays in the image);
#   4. Debian's docker-compose 1.29 (compose v1; v2 is not packaged for bookworm) on a copy of
#      docker/compose.yaml without its top-level `name:`, which v1 rejects; project aero-pi;
#   5. the containers' logs, exit codes, host names, networks and the addresses each party saw,
#      the image and engine recorded in
#      results/docker-ARCH-PRESET/docker-run.json and logs/; containers and network removed.
# Needs a running dockerd (Debian's docker.io: `dockerd --storage-driver=vfs`), debootstrap and
# docker-compose. Settings: the compose file's (ARCH, PRESET, DEALER, SEQ_LEN, QUERIES, ...;
# RESULTS_DIR: an absolute folder instead of results/), WHEELS (/opt/wheels), CA
# (/etc/ssl/certs/ca-certificates.crt), DOCKER (/usr/bin/docker: a client that builds with
# BuildKit through DOCKER_BUILDKIT=1).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-/usr/bin/docker}
WHEELS=${WHEELS:-/opt/wheels}
CA=${CA:-/etc/ssl/certs/ca-certificates.crt}
RUN="${RESULTS_DIR:-results}/docker-${ARCH:-baseline}-${PRESET:-tiny}"  # RESULTS_DIR: absolute
export DOCKER_BUILDKIT=1

if ! "$DOCKER" image inspect local/bookworm:min >/dev/null 2>&1; then
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$rootfs/root" http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs/root" -c . | "$DOCKER" import - local/bookworm:min
    rm -rf "$rootfs"
fi
"$DOCKER" build -q -f docker/base.Dockerfile --build-arg DEBIAN_IMAGE=local/bookworm:min \
    -t local/python:3.11-slim docker
for wheel in "$WHEELS"/torch-2.13.0+cpu-cp311-*.whl; do
    [ -e "docker/wheels/$(basename "$wheel")" ] || ln "$wheel" docker/wheels/ 2>/dev/null \
        || cp "$wheel" docker/wheels/
done
"$DOCKER" build -f docker/Dockerfile --build-arg BASE_IMAGE=local/python:3.11-slim \
    --build-arg TORCH_INDEX=https://pypi.org/simple --secret id=pip_cert,src="$CA" \
    -t aero-pi:local .

compose_file=docker/.compose-v1.yaml  # beside the original: relative paths stay the same
sed '/^name:/d' docker/compose.yaml > "$compose_file"
compose() { docker-compose -p aero-pi -f "$compose_file" "$@"; }
trap 'compose down --remove-orphans >/dev/null 2>&1 || true; rm -f "$compose_file"' EXIT
rm -rf "$RUN"
compose up --no-build --no-color
mkdir -p "$RUN/logs"
for service in dealer server client report; do
    compose logs --no-color "$service" > "$RUN/logs/$service.log"
done
python3 - "$RUN" "$DOCKER" <<'PY'
import json, re, subprocess, sys
run, docker = sys.argv[1], sys.argv[2]
def out(*args): return subprocess.run(args, capture_output=True, text=True).stdout.strip()
def log(service): return open(f"{run}/logs/{service}.log").read()
ids = out("docker-compose", "-p", "aero-pi", "-f", "docker/.compose-v1.yaml", "ps", "-q", "-a").split()
containers = {}
for info in json.loads(out(docker, "inspect", *ids)):
    networks = info["NetworkSettings"]["Networks"]
    containers[info["Config"]["Labels"]["com.docker.compose.service"]] = {
        "hostname": info["Config"]["Hostname"],
        "networks": sorted(networks),
        "exit_code": info["State"]["ExitCode"],
        "command": info["Config"]["Cmd"],
    }
image = json.loads(out(docker, "image", "inspect", "aero-pi:local"))[0]
client = json.load(open(f"{run}/client/client-1.json"))
record = {
    "engine": out(docker, "version", "--format", "{{.Server.Version}}") + " (Debian docker.io, vfs)",
    "compose": out("docker-compose", "version", "--short") + " (Debian docker-compose, v1)",
    "image": {"tag": "aero-pi:local", "id": image["Id"], "size_bytes": image["Size"],
              "base": "local/python:3.11-slim (debootstrap bookworm + apt python3.11)",
              "torch": "2.13.0+cpu wheel from a local wheelhouse (docker/wheels)"},
    "trust": {"dealer": client["dealer"], "model": client["trust"]},
    # container addresses are released on exit: the ones each party saw, from its log
    "peers_seen": {
        "dealer saw the server at": re.findall(r"session \d+ for (\S+)", log("dealer")),
        "server saw the client at": re.findall(r"query \d+ from (\S+):", log("server")),
    },
    "containers": containers,
}
json.dump(record, open(f"{run}/docker-run.json", "w"), indent=1)
bad = {k: v["exit_code"] for k, v in containers.items() if v["exit_code"] != 0}
sys.exit(f"containers failed: {bad}" if bad else 0)
PY
echo "docker: results in $RUN ($(du -sh "$RUN" | cut -f1))"
