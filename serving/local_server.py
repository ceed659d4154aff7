"""`python -m serving.local_server`: the development server (serving/dev_server) with this project's defaults.

    python -m serving.local_server --model_base_path=exports/dcgan --model_name=dcgan --port=8500 [--rest_port=8501]

The server itself serves any SavedModel and knows nothing of this project; this launcher, like `models.config`
and `batching_parameters.txt` beside it, holds what is particular to the DCGAN export: the model name `dcgan`, and
`num_images`, the `sample` signature's scalar image count, held to `--max_batch_size` like a batch dimension.
Every flag of `python -m serving.dev_server` works here (`--help` lists them). See docs/serving.md.
"""

if __name__ == "__main__":  # a CLI run: hide TensorFlow's start-up chatter before anything imports TensorFlow
    from dcgan_tf import startup

    startup.quiet_start()

from absl import app, flags  # noqa: E402 (after the quiet start)

from serving.dev_server import cli  # noqa: E402

DCGAN_DEFAULTS = {"model_name": "dcgan", "batch_size_inputs": ["num_images"]}

if __name__ == "__main__":
    cli.define_flags(**DCGAN_DEFAULTS)
    flags.adopt_module_key_flags(cli)  # --help lists the server's flags
    app.run(cli.main)
