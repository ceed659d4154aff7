"""`python tests/helpers/kill_during_save.py POINT STEP TRAIN_FLAGS...`: run `python -m dcgan_tf.train
TRAIN_FLAGS...` and SIGKILL the process at POINT of its save of checkpoint STEP, as a crash or `kill -9` would.

POINT: `before_index` (ckpt-STEP's files complete, the index not yet rewritten), `after_index` (the index lists
it, older checkpoints not yet swept), `during_sweep` (the oldest checkpoint's .index deleted, its data not yet).
The hooks wrap tf.train.CheckpointManager's own steps, so the files on disk are exactly what it leaves there.
"""

import os
import runpy
import signal
import sys

from tensorflow.python.checkpoint import checkpoint_management

POINT, STEP = sys.argv[1], int(sys.argv[2])
sys.argv = ["dcgan_tf.train", *sys.argv[3:]]
assert POINT in ("before_index", "after_index", "during_sweep"), POINT


def die() -> None:
    """What kill -9 does: no handler, no finally, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)


record_state = checkpoint_management.CheckpointManager._record_state
delete_files = checkpoint_management._delete_file_if_exists
records = []


def saving_step(manager) -> bool:
    return bool(manager.latest_checkpoint) and manager.latest_checkpoint.endswith(f"ckpt-{STEP}")


def record_state_then_maybe_die(manager) -> None:
    first = saving_step(manager) and not records
    if saving_step(manager):
        records.append(1)
    if first and POINT == "before_index":
        die()
    record_state(manager)
    if first and POINT == "after_index":
        die()


def delete_then_maybe_die(filespec: str) -> None:
    delete_files(filespec)
    if POINT == "during_sweep" and records and filespec.endswith(".index"):
        die()


checkpoint_management.CheckpointManager._record_state = record_state_then_maybe_die
checkpoint_management._delete_file_if_exists = delete_then_maybe_die
runpy.run_module("dcgan_tf.train", run_name="__main__", alter_sys=True)
