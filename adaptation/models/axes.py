"""Logical axis names carried by parameters and activations.

`adaptation.partitioning` maps these names to mesh axes; models never name mesh axes themselves.
"""

# Parameter and activation axes.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
MLP = "mlp"
LAYERS = "layers"  # the stacked axis of scanned blocks
CLASSES = "classes"

# Activation-only axes.
BATCH = "batch"
LENGTH = "length"
KV_LENGTH = "kv_length"

# Common activation layouts.
ACT_EMBED = (BATCH, LENGTH, EMBED)
ACT_HEADS = (BATCH, HEADS, LENGTH, HEAD_DIM)  # attention is heads-major
ACT_KV = (BATCH, KV_HEADS, KV_LENGTH, HEAD_DIM)
ACT_MLP = (BATCH, LENGTH, MLP)
ACT_VOCAB = (BATCH, LENGTH, VOCAB)
