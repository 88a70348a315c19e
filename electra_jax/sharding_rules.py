"""The default logical-axis rules table (electra_jax.sharding applies it), kept free of JAX and numpy imports.

Config files read it while absl parses flags (configs/common.py), before a binary's main() has set up the process
(distributed.initialize_from_flags), so that parsing flags, `--help` included, loads neither JAX nor numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    # weights
    ("vocab", "tensor"),          # word-embedding rows (tied generator/discriminator table, LM head)
    ("emb", "fsdp"),              # embedding_size (factorized embeddings)
    ("positions", None),
    ("type_vocab", None),
    ("embed", "fsdp"),            # hidden_size
    ("heads", "tensor"),          # attention heads x head_dim (q/k/v outputs, attention-output inputs)
    ("mlp", "tensor"),            # FFN inner size
    ("norm", None),               # LayerNorm scale/bias
    ("layers", None),             # stacked-layer axis
    ("classes", None),            # task-head outputs
)
