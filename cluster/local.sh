#!/usr/bin/env bash
# A real two-node Ray cluster on this one machine, for trying multi-node behaviour without VMs:
# a head node and a worker node, each its own raylet with its own resources, then `serve deploy`.
#
#   cluster/local.sh up                 start the head and the worker (loopback, token auth)
#   cluster/local.sh deploy CONFIG      serve deploy CONFIG onto it (e.g. serve_config.yaml)
#   cluster/local.sh status             nodes and their resources, then `serve status`
#   cluster/local.sh stop-worker        stop only the worker node (its replicas move to the head)
#   cluster/local.sh down               stop both
#
# Resources: the head has `graphserve_head: 1`, the worker `graphserve_worker: 1`; a deployment
# pins itself with `resources: {graphserve_head: 0.01}` in its `deployment` block, and Serve
# spreads the others over both nodes. Ports sit away from Ray's defaults, so this runs beside a
# `make ray-up` Ray. The dashboard binds to 127.0.0.1; Ray's own ports listen on every interface
# whatever --node-ip-address says, so token auth guards them (`ray get-auth-token`).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
GCS_PORT="${LOCAL_CLUSTER_GCS_PORT:-6390}"
DASHBOARD_PORT="${LOCAL_CLUSTER_DASHBOARD_PORT:-8275}"
HEAD_CPUS="${LOCAL_CLUSTER_HEAD_CPUS:-2}"
WORKER_CPUS="${LOCAL_CLUSTER_WORKER_CPUS:-2}"
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
DASHBOARD="http://127.0.0.1:$DASHBOARD_PORT"
# The worker raylet is told apart from the head's by its node-manager port.
WORKER_NM_PORT=$((GCS_PORT + 20))

# Two raylets on one host need distinct ports for everything a node listens on.
node_ports() {  # $1: offset from the GCS port
  local b=$((GCS_PORT + $1))
  echo --node-manager-port $((b + 0)) --object-manager-port $((b + 1)) \
    --dashboard-agent-grpc-port $((b + 2)) --dashboard-agent-listen-port $((b + 3)) \
    --metrics-export-port $((b + 4)) --runtime-env-agent-port $((b + 5)) \
    --min-worker-port $((20000 + $1 * 500)) --max-worker-port $((20000 + $1 * 500 + 499))
}

up() {
  "$BIN/ray" get-auth-token --generate >/dev/null
  "$BIN/ray" start --head --node-ip-address 127.0.0.1 --port "$GCS_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port $((GCS_PORT + 30)) $(node_ports 10) \
    --num-cpus "$HEAD_CPUS" --resources '{"graphserve_head": 1}' --disable-usage-stats
  "$BIN/ray" start --address "127.0.0.1:$GCS_PORT" --node-ip-address 127.0.0.1 \
    $(node_ports 20) --num-cpus "$WORKER_CPUS" --resources '{"graphserve_worker": 1}' \
    --disable-usage-stats
  echo ">> two nodes up; dashboard $DASHBOARD"
}

# A process and all its descendants, collected before anything is killed (orphans are re-parented
# and could no longer be found).
tree() {
  local pid
  for pid in "$@"; do
    echo "$pid"
    tree $(pgrep -P "$pid" || true)
  done
}

kill_tree() {  # $1: signals, e.g. "TERM KILL" (5 s apart); the rest: root pids
  local signals=$1 sig; shift
  local pids; pids=$(tree "$@")
  for sig in $signals; do
    kill "-$sig" $pids 2>/dev/null || true
    [ "$sig" = KILL ] || sleep 5
  done
}

worker_raylet() { pgrep -f "raylet.*--node_manager_port=$WORKER_NM_PORT( |\$)" || true; }

stop_worker() {
  # The whole node at once (its raylet, agents and replicas), as when a machine is lost.
  local raylet; raylet=$(worker_raylet)
  [ -z "$raylet" ] && { echo ">> no worker node running"; return 0; }
  kill_tree KILL $raylet
  echo ">> worker node stopped"
}

down() {
  # Only this cluster's processes (found by its GCS port), never another Ray on the host.
  local roots; roots=$(pgrep -f "(--gcs_server_port=|--gcs-address=[0-9.]+:|--address=[0-9.]+:)$GCS_PORT( |\$)" || true)
  [ -z "$roots" ] && { echo ">> no cluster running"; return 0; }
  kill_tree "TERM KILL" $roots
  # What `ray stop` does too: a later `ray.init()` must not try to join the cluster that is gone.
  grep -qs ":$GCS_PORT\$" /tmp/ray/ray_current_cluster && rm -f /tmp/ray/ray_current_cluster
  echo ">> cluster down"
}

case "${1:-}" in
  up) up ;;
  deploy) "$BIN/serve" deploy -a "$DASHBOARD" "${2:?a serve config file}" ;;
  status) "$BIN/ray" status --address "127.0.0.1:$GCS_PORT"; "$BIN/serve" status -a "$DASHBOARD" ;;
  stop-worker) stop_worker ;;
  down) down ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
