#!/usr/bin/env bash
# Runs jaxtag on every worker of a Cloud TPU pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [FLAGS...]
#
# WORKDIR must be reachable from every worker: a gs:// bucket or a shared
# filesystem. The same command again resumes the run. Set JAXTAG_REPO to the
# git URL to clone on the workers (default: this checkout's origin).
set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [FLAGS...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=${JAXTAG_REPO:-$(git config --get remote.origin.url)}
flags=$(printf ' %q' "$@")

# Every worker clones (or updates) jaxtag, installs the TPU extra, and starts
# one process; jax.distributed.initialize() finds its peers from the TPU
# metadata, so no addresses are needed.
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  if [ ! -d jaxtag ]; then git clone $repo jaxtag; fi
  cd jaxtag && git pull --ff-only
  pip install -q -e '.[tpu]'
  JAXTAG_DISTRIBUTED=auto python -m jaxtag.main --config $config --workdir $workdir$flags
"
