#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM slice: the same command on all workers, with
# jax.distributed detecting the coordinator, process count and process id itself.
#
#   launch/tpu_vm.sh <tpu-name> <zone> configs/llama_1b.py --config.data.corpus='gs://...'
#
# The workdir must be shared by all hosts (a gs:// URL, which needs the `gcs` extra installed on
# every host: pip install -e ".[gcs]"; or NFS) for checkpoints and the prepared data.
set -euo pipefail
tpu=$1 zone=$2 config=$3; shift 3
repo=${JAXLM_REPO:-~/jaxlm}
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd $repo && .venv/bin/python -m jaxlm.train --config=$config \
    --config.distributed.initialize=true $*"
