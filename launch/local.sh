#!/usr/bin/env bash
# Starts N processes of COMMAND on this machine as one multi-process JAX job
# on CPU devices (gloo collectives), the way to try multi-host behaviour
# anywhere:
#
#   launch/local.sh 2 -- python -m jaxtag.main --config configs/default.py:tiny --workdir runs/mp
#
# Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
# (read by jaxtag.distributed) and JAXTAG_LOCAL_DEVICES CPU devices (default 2).
# Output lines are prefixed with [pI]. If one process fails the others are
# stopped and the script exits non-zero; SIGTERM/SIGINT are passed to all.
set -euo pipefail

usage() { echo "usage: $0 N -- COMMAND [ARGS...]" >&2; exit 2; }
[[ $# -ge 3 ]] || usage
n=$1; shift
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "N must be a positive integer, got '$n'" >&2; usage; }
[[ $1 == "--" ]] || usage
shift

port=${JAXTAG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
devices=${JAXTAG_LOCAL_DEVICES:-2}
pids=()

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
forward() { trap - TERM INT; stop_all; }
trap forward TERM INT

for ((i = 0; i < n; i++)); do
  (
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
    export JAX_COORDINATOR_ADDRESS="127.0.0.1:$port"
    export JAX_NUM_PROCESSES=$n JAX_PROCESS_ID=$i PYTHONUNBUFFERED=1
    exec "$@"
  ) > >(sed -u "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done

status=0
failed=()
declare -A live=()
for i in "${!pids[@]}"; do live[${pids[$i]}]=$i; done
# Wait for whichever process ends first: a failed process must stop the
# others at once, since they would wait for it forever in a collective.
while [[ ${#live[@]} -gt 0 ]]; do
  code=0
  wait -n -p done_pid "${!live[@]}" || code=$?
  i=${live[$done_pid]}
  unset "live[$done_pid]"
  if [[ $code -ne 0 ]]; then
    failed+=("$i")
    if [[ $status -eq 0 ]]; then status=$code; stop_all; fi
  fi
done
sleep 0.2  # let the prefixing pipes flush
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "launch/local.sh: process(es) ${failed[*]} failed (first exit code $status)" >&2
fi
exit "$status"
