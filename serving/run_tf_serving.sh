#!/usr/bin/env bash
# Serve a dcgan_tf export base with the official tensorflow/serving Docker image: gRPC on 8500, REST on 8501.
#
#   serving/run_tf_serving.sh exports/dcgan            # the folder holding <version>/ SavedModel folders
#   ENABLE_BATCHING=1 serving/run_tf_serving.sh exports/dcgan
#
# Environment: TF_SERVING_IMAGE (default tensorflow/serving:latest; pin a tag in production, and use a
# tensorflow/serving:*-gpu tag with --gpus all for GPUs), GRPC_PORT (8500), REST_PORT (8501),
# ENABLE_BATCHING (0; with batching use `serving_default` or `sample_seeds`: `sample` has scalar inputs, see
# batching_parameters.txt). See docs/serving.md.
# Not tested on the development machines: they have no Docker engine and no tensorflow_model_server binary.
set -euo pipefail

EXPORT_BASE="${1:-exports/dcgan}"
if [[ ! -d "${EXPORT_BASE}" ]]; then
  echo "error: ${EXPORT_BASE} does not exist; export first: python -m dcgan_tf.export --model_dir=... --export_dir=${EXPORT_BASE}" >&2
  exit 1
fi
EXPORT_BASE="$(cd "${EXPORT_BASE}" && pwd)"
CONFIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${TF_SERVING_IMAGE:-tensorflow/serving:latest}"

batching=()
if [[ "${ENABLE_BATCHING:-0}" == "1" ]]; then
  batching=(--enable_batching=true --batching_parameters_file=/config/batching_parameters.txt)
fi

# The export base is mounted read-only where models.config's base_path points; TF Serving polls it every second
# and serves the newest <version>/ folder (dcgan_tf.export renames each version into place atomically).
exec docker run --rm --init \
  -p "${GRPC_PORT:-8500}:8500" -p "${REST_PORT:-8501}:8501" \
  -v "${EXPORT_BASE}:/models/dcgan:ro" \
  -v "${CONFIG_DIR}:/config:ro" \
  "${IMAGE}" \
  --model_config_file=/config/models.config \
  --file_system_poll_wait_seconds=1 \
  "${batching[@]}"
