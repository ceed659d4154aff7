"""Serving the DCGAN generator: a TF-Serving-compatible local server and a gRPC client.

`python -m serving.local_server` serves SavedModels exported by `dcgan_tf.export` with TF Serving's gRPC (and
optionally REST) protocol; `python -m serving.client` (or `serving.client.generate`) asks any such server for
images. `run_tf_serving.sh`, `docker-compose.yml`, `models.config` and `batching_parameters.txt` run the official
`tensorflow_model_server` instead. See docs/serving.md.
"""
