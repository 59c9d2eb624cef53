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
# `make ray-up` Ray. Every Ray port binds to 127.0.0.1; the token is Ray's (`ray get-auth-token`).
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

stop_worker() {
  # SIGTERM to the worker's raylet: it drains and tells the GCS, its workers (replicas) exit.
  pkill -TERM -f "raylet.*--node_manager_port=$WORKER_NM_PORT( |\$)" \
    && echo ">> worker node stopped" || echo ">> no worker node running"
}

case "${1:-}" in
  up) up ;;
  deploy) "$BIN/serve" deploy -a "$DASHBOARD" "${2:?a serve config file}" ;;
  status) "$BIN/ray" status --address "127.0.0.1:$GCS_PORT"; "$BIN/serve" status -a "$DASHBOARD" ;;
  stop-worker) stop_worker ;;
  down)
    stop_worker || true
    # Stop only this cluster's processes, not another Ray on the host.
    pkill -TERM -f "gcs_server.*--gcs_server_port=$GCS_PORT( |\$)" || true
    pkill -TERM -f "raylet.*--gcs-address=127.0.0.1:$GCS_PORT( |\$)" || true
    sleep 3
    pkill -KILL -f "(raylet|gcs_server|dashboard|log_monitor|runtime_env).*$GCS_PORT( |\$|,)" || true
    echo ">> cluster down" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
