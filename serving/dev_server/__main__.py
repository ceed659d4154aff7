"""`python -m serving.dev_server`: see serving/dev_server/cli.py."""

from absl import app, flags

from serving.dev_server import cli

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists the server's flags
app.run(cli.main)
