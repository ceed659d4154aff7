"""Serving the DCGAN generator: the gRPC client, the TF Serving deployment, and a development server.

`python -m serving.client` (or `serving.client.generate`) asks any TF Serving server for images.
`run_tf_serving.sh`, `docker-compose.yml`, `models.config` and `batching_parameters.txt` run the official
`tensorflow_model_server` on exports of `dcgan_tf.export`. `serving/dev_server/` is a development server speaking
TF Serving's gRPC and REST protocols for any SavedModel; `python -m serving.local_server` runs it with this
project's defaults. See docs/serving.md.
"""
