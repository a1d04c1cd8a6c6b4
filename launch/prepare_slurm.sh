#!/usr/bin/env bash
# Prepare a corpus with a SLURM job array: one job makes the plan (the tokenizer and the chunks),
# an array of N tasks prepares the chunks (task i those whose index is i modulo N, any node, any
# order), and a last job, once every task has ended, checks that every chunk is complete and
# writes the manifest. The bytes are those of one host's `python -m jaxlm.prepare`.
#
#   launch/prepare_slurm.sh 64 --source='/shared/web/*.jsonl.gz' --output=/shared/prepared/web \
#       --vocab_size=32000
#
# The flags are jaxlm.prepare's, given to all three steps; --output must be a directory every node
# reaches. sbatch options: SBATCH_* variables (SBATCH_PARTITION, SBATCH_ACCOUNT, ...) or
# JAXLM_SBATCH (e.g. "--cpus-per-task=32 --time=4:00:00"); JAXLM_PARALLEL=k runs at most k tasks
# at once; JAXLM_LOGS is the log directory (prepare-logs). A task uses the CPUs it may run on.
# A task that failed is run again by itself (the finalize job's log names the chunks missing):
#   sbatch --array=<i> --wrap="<python> -m jaxlm.prepare <flags> --task=\$SLURM_ARRAY_TASK_ID/<N>"
# then --finalize once more. Tasks re-run skip the chunks they completed.
set -euo pipefail
if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/prepare_slurm.sh <number of tasks, 1 or more> <jaxlm.prepare flags>" >&2
  exit 2
fi
tasks=$1; shift
python=${JAXLM_PYTHON:-.venv/bin/python}
logs=${JAXLM_LOGS:-prepare-logs}
mkdir -p "$logs"  # (SLURM does not create the directory of --output)
prepare="$python -m jaxlm.prepare $(printf '%q ' "$@")"
# shellcheck disable=SC2086  # JAXLM_SBATCH is a list of options
plan=$(sbatch --parsable --job-name=jaxlm-plan --output="$logs/plan-%j.out" ${JAXLM_SBATCH:-} \
       --wrap="$prepare --plan")
plan=${plan%%;*}
# shellcheck disable=SC2086
array=$(sbatch --parsable --job-name=jaxlm-prepare --dependency="afterok:$plan" \
        --kill-on-invalid-dep=yes --array="0-$((tasks - 1))${JAXLM_PARALLEL:+%$JAXLM_PARALLEL}" \
        --output="$logs/task-%A_%a.out" ${JAXLM_SBATCH:-} \
        --wrap="$prepare --task=\$SLURM_ARRAY_TASK_ID/$tasks")
array=${array%%;*}
# shellcheck disable=SC2086
final=$(sbatch --parsable --job-name=jaxlm-finalize --dependency="afterany:$array" \
        --kill-on-invalid-dep=yes --output="$logs/finalize-%j.out" ${JAXLM_SBATCH:-} \
        --wrap="$prepare --finalize")
final=${final%%;*}
echo "submitted: plan $plan, tasks $array (0-$((tasks - 1))), finalize $final; logs in $logs/"
