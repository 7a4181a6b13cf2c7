#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, for trying the cluster path before renting one:
# a head that runs no experiments (0 CPUs) and WORKERS one-CPU worker nodes, each a separate
# `ray start` process with its own ports and its own scratch folder (Ray temp dir and TMPDIR).
#
#   source .venv/bin/activate                 # a job's `python` is the one on PATH here
#   export AAR_HOME=/tmp/aar-shared           # the nodes' shared aar home (on a real cluster: NFS)
#   clusters/one_host.sh up /tmp/aar-cluster 2   # prints the dashboard address when all nodes are up
#   clusters/one_host.sh down /tmp/aar-cluster   # stops these nodes and nothing else
#
# DIR holds each node's Ray temp dir (`head`, `worker-1`, ...), log and pid. Every node gets
# free ports of its own, so the cluster never clashes with another Ray on the machine, except
# the dashboard's: 8265, the port of the README's submit command (AAR_DASHBOARD_PORT picks
# another); the head's dashboard address is written to DIR/address. Token authentication is on: the token is
# ~/.ray/auth_token, made once by `ray get-auth-token --generate`; clients send it when
# RAY_AUTH_MODE=token is set.
set -euo pipefail

usage() { echo "usage: $0 up DIR [WORKERS=2] | down DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 dir=$2 workers=${3:-2}

free_ports() {  # N free TCP ports on loopback, held until all are picked so none repeats
    python - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start_node() {  # start_node NAME ray-start-options...: one `ray start --block` in the background
    local name=$1; shift
    mkdir -p "$dir/$name/tmp"
    RAY_AUTH_MODE=token TMPDIR="$dir/$name/tmp" nohup ray start --block --temp-dir "$dir/$name" \
        --node-ip-address 127.0.0.1 --disable-usage-stats "$@" > "$dir/$name.log" 2>&1 &
    echo $! > "$dir/$name.pid"
}

set_ports() {  # this node's own ports; its worker processes get 1,000 ports of their own, below
    # Linux's ephemeral range (32768+), where the free ports picked here come from
    read -r GCS_PORT DASHBOARD_PORT AGENT_PORT AGENT_GRPC_PORT METRICS_PORT RUNTIME_ENV_PORT CLIENT_PORT \
        NODE_MANAGER_PORT OBJECT_MANAGER_PORT <<< "$(free_ports 9)"
    local first=$((20000 + 1000 * $1))
    NODE_PORTS="--dashboard-agent-listen-port=$AGENT_PORT --dashboard-agent-grpc-port=$AGENT_GRPC_PORT
        --metrics-export-port=$METRICS_PORT --runtime-env-agent-port=$RUNTIME_ENV_PORT
        --node-manager-port=$NODE_MANAGER_PORT --object-manager-port=$OBJECT_MANAGER_PORT
        --min-worker-port=$first --max-worker-port=$((first + 999))"
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...: fails at once if a node's `ray start` ended
    local deadline=$((SECONDS + $1)) what=$2 pidfile; shift 2
    until "$@" >/dev/null 2>&1; do
        for pidfile in "$dir"/*.pid; do
            if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
                echo "$(basename "$pidfile" .pid) exited while waiting for $what:" >&2
                tail -5 "${pidfile%.pid}.log" >&2; exit 1
            fi
        done
        if [ $SECONDS -ge $deadline ]; then echo "$what did not happen within the time allowed; logs in $dir" >&2; exit 1; fi
        sleep 2
    done
}

nodes_alive() {  # nodes_alive N: exactly N nodes of this cluster are alive
    local count
    count=$(RAY_AUTH_MODE=token ray list nodes --address "$(cat "$dir/address")" --filter state=ALIVE --format json \
            | python -c 'import json, sys; print(len(json.load(sys.stdin)))')
    [ "$count" -eq "$1" ]
}

up() {
    [ -n "${AAR_HOME:-}" ] || { echo "export AAR_HOME (an absolute path every node reads) before starting nodes" >&2; exit 2; }
    mkdir -p "$dir" "$AAR_HOME"
    ray get-auth-token --generate >/dev/null 2>&1  # ~/.ray/auth_token, once; the nodes then require it
    set_ports 0
    local head_port=$GCS_PORT
    DASHBOARD_PORT=${AAR_DASHBOARD_PORT:-8265}
    start_node head --head --num-cpus 0 --port "$GCS_PORT" --dashboard-port "$DASHBOARD_PORT" \
        --ray-client-server-port "$CLIENT_PORT" $NODE_PORTS
    echo "http://127.0.0.1:$DASHBOARD_PORT" > "$dir/address"
    wait_until 180 "the head coming up" env RAY_AUTH_MODE=token ray job list --address "$(cat "$dir/address")"
    local i
    for i in $(seq 1 "$workers"); do
        set_ports "$i"
        start_node "worker-$i" --address "127.0.0.1:$head_port" --num-cpus 1 $NODE_PORTS
    done
    wait_until 180 "all $((workers + 1)) nodes joining" nodes_alive $((workers + 1))
    echo "dashboard $(cat "$dir/address")"
}

down() {  # workers first, then the head; each `ray start --block` stops what it started
    local pidfile
    for pidfile in $(ls "$dir"/worker-*.pid 2>/dev/null) "$dir/head.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$dir"/*.pid; do
        while [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 0.5; done
        rm -f "$pidfile"
    done
}

case $action in
    up) up ;;
    down) down ;;
    *) usage ;;
esac
