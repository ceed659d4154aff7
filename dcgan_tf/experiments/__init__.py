"""The paper's experiments (Radford et al. 2015, Figures 2-8 and section 6.1) as library functions.

Every function that needs samples takes a `generate(z) -> images` callable (numpy float32 z [B, nz] ->
float32 images [B, S, S, C] in [-1, 1]), so the same code runs on an in-memory generator, a loaded SavedModel
or a TF Serving client (see `sources.py`). `python -m dcgan_tf.explore` is the command line over them.
"""
