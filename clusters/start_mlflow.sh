#!/usr/bin/env bash
# Start (or restart) the MLflow tracking server on the Ray head node.
#
# Called from head_start_ray_commands in clusters/{local,aws,gcp}.yaml; safe to run again
# (it stops the server that its previous run started). The effective command is
#
#   mlflow server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --serve-artifacts \
#       --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --host 0.0.0.0 --port 5000
#
# tests/test_postgres.py runs this script against a real PostgreSQL server and logs an
# experiment with artifacts through it.
#
# Settings come from the environment, or from ~/aar_secrets/mlflow.env when that file exists
# (the folder is file-mounted from ~/.config/aar_ray/cluster on the machine that runs `ray up`;
# see clusters/mlflow.env.example):
#   MLFLOW_BACKEND_STORE_URI      SQLAlchemy URI, e.g. postgresql://mlflow:PASSWORD@HOST:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  artifact store behind the server, e.g. s3://BUCKET/mlflow
#   MLFLOW_PORT                   default 5000
#   MLFLOW_WORKERS                server worker processes (default: MLflow's, 4)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's GenAI job runner (default here false: aar_ray uses
#                                 none of it, and it starts 8 more processes)
#   AAR_MLFLOW_START_TIMEOUT_S    seconds to wait for the server to answer /health (default 120;
#                                 a busy head takes longer to import MLflow and start its workers)
#   MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW  database connections a worker may open beyond its 5
#                                 pooled ones (default here 45; MLflow's own is 10). A burst of
#                                 100 researchers recording at once on MLflow's default pool
#                                 timed out after 30 s ("QueuePool limit ... reached";
#                                 benchmarks/store_backends.py). Keep workers x (5 + overflow)
#                                 below the database's max_connections.
#   MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE  seconds before a pooled connection is replaced
#                                 (default here 1800: managed databases drop idle ones)
# A postgresql:// (or postgres://) URI runs on psycopg 3, which the project installs; the
# database must exist (MLflow creates its tables on first start).
# Without them the server uses sqlite and a folder under ~/aar_mlflow on the head. Pass
# --require-server-db to refuse that fallback (cloud clusters: `ray down` deletes the head's disk).
#
# Artifacts are proxied (--artifacts-destination): Ray workers and laptops only need HTTP
# access to the server, never bucket credentials.
set -euo pipefail

require_db=0
if [[ "${1:-}" == "--require-server-db" ]]; then
  require_db=1
fi

state_dir="$HOME/aar_mlflow"
env_file="${AAR_MLFLOW_ENV_FILE:-$HOME/aar_secrets/mlflow.env}"
mkdir -p "$state_dir"

if [[ -f "$env_file" ]]; then
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
fi

if [[ -z "${MLFLOW_BACKEND_STORE_URI:-}" || -z "${MLFLOW_ARTIFACTS_DESTINATION:-}" ]]; then
  if (( require_db )); then
    echo "start_mlflow: MLFLOW_BACKEND_STORE_URI and MLFLOW_ARTIFACTS_DESTINATION must be set" \
         "(in $env_file); refusing to keep runs on the head node's disk" >&2
    exit 1
  fi
fi
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$state_dir/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$state_dir/artifacts}"
port="${MLFLOW_PORT:-5000}"
export MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="${MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW:-45}"
export MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE="${MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE:-1800}"
workers=()
if [[ -n "${MLFLOW_WORKERS:-}" ]]; then
  workers=(--workers "$MLFLOW_WORKERS")
fi
if [[ "$backend" == postgres://* ]]; then
  backend="postgresql://${backend#postgres://}"  # SQLAlchemy knows only the long scheme
fi
mlflow_bin="$(command -v mlflow || true)"
if [[ -z "$mlflow_bin" ]]; then
  echo "start_mlflow: no mlflow on PATH ($PATH)" >&2
  exit 1
fi
# the Python that runs mlflow (its script's #! line) must have the PostgreSQL driver
mlflow_python="$(sed -n '1s/^#! *//p' "$mlflow_bin")"
if [[ "$backend" == postgresql* && -n "$mlflow_python" ]] && ! $mlflow_python -c 'import psycopg' 2>/dev/null; then
  echo "start_mlflow: $backend needs the psycopg driver beside mlflow ($mlflow_python):" \
       "pip install 'psycopg[binary]' (the project's dependencies include it)" >&2
  exit 1
fi
if [[ "$artifacts" != *://* ]]; then
  mkdir -p "$artifacts"
fi

# Stop the server of a previous run: its whole process group, since mlflow spawns workers.
if [[ -f "$state_dir/server.pgid" ]]; then
  old_pgid="$(cat "$state_dir/server.pgid")"
  # Only if that group is still an MLflow server (after a reboot the id may be reused).
  if ps -o args= -p "$old_pgid" 2>/dev/null | grep -q 'mlflow server'; then
    kill -TERM -- "-$old_pgid" 2>/dev/null || true
    for _ in $(seq 1 20); do
      kill -0 -- "-$old_pgid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$old_pgid" 2>/dev/null || true
  fi
  rm -f "$state_dir/server.pgid"
fi

export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# setsid gives the server its own session and process group; the inner shell is the group
# leader, so the pid it records is the group id used above.
setsid bash -c 'echo $$ > "$0"; exec mlflow server "$@"' "$state_dir/server.pgid" \
  --backend-store-uri "$backend" \
  --serve-artifacts --artifacts-destination "$artifacts" \
  --host 0.0.0.0 --port "$port" "${workers[@]}" \
  >"$state_dir/server.log" 2>&1 </dev/null &

# /health is exempt from MLflow's Host-header check, so probing it by loopback is reliable.
# A deadline in seconds, not a count of probes: on a busy machine each probe takes longer.
start_timeout=${AAR_MLFLOW_START_TIMEOUT_S:-120}
deadline=$((SECONDS + start_timeout))
while (( SECONDS < deadline )); do
  if python -c 'import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=5)' "$port" \
      2>/dev/null; then
    echo "start_mlflow: MLflow server listening on port $port (log: $state_dir/server.log)"
    exit 0
  fi
  sleep 1
done
echo "start_mlflow: MLflow server did not become healthy within $start_timeout s" \
  "(AAR_MLFLOW_START_TIMEOUT_S); last log lines:" >&2
tail -n 40 "$state_dir/server.log" >&2 || true
exit 1
