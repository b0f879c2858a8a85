#!/usr/bin/env bash
# Launch `python -m adaptation.train` on every worker of a Cloud TPU pod slice.
#
#   adaptation/scripts/launch_tpu_pod.sh TPU_NAME ZONE [PROJECT] -- --gin_file=... --gin.MODEL_DIR="'gs://bucket/run'" ...
#
# Every host runs the same command; JAX discovers the pod (jax.distributed.initialize needs no
# flags on TPU), each host reads its own shard of the data (seqio ShardInfo), only process 0
# writes summaries and logs, and checkpoints go to MODEL_DIR (use a gs:// bucket every host sees).
# A preempted or restarted slice resumes from MODEL_DIR's latest checkpoint when relaunched.
#
# Environment:
#   REPO_DIR    checkout on the workers (default: ~/adaptation); set SETUP=1 to clone/install first
#   REPO_URL    git URL cloned when SETUP=1
#   PYTHON      interpreter on the workers (default: python3)
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0"
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_FLAG=()
if [[ $# -gt 0 && $1 != "--" ]]; then PROJECT_FLAG=(--project="$1"); shift; fi
[[ ${1:-} == "--" ]] && shift

REPO_DIR=${REPO_DIR:-'~/adaptation'}
PYTHON=${PYTHON:-python3}
ARGS=$(printf '%q ' "$@")

SETUP_CMD=""
if [[ ${SETUP:-0} == 1 ]]; then
  : "${REPO_URL:?set REPO_URL to clone the repository on the workers}"
  SETUP_CMD="(test -d ${REPO_DIR} || git clone ${REPO_URL} ${REPO_DIR}) && cd ${REPO_DIR} && ${PYTHON} -m pip install -q -e . 'jax[tpu]' && "
fi

CMD="${SETUP_CMD}cd ${REPO_DIR} && TF_CPP_MIN_LOG_LEVEL=2 ${PYTHON} -m adaptation.train ${ARGS}"
echo "on all workers of ${TPU_NAME}: ${CMD}"
exec gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" "${PROJECT_FLAG[@]}" --worker=all --command="${CMD}"
