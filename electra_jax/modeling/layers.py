"""Building blocks of the ELECTRA encoder as Flax NNX modules.

Every parameter is an `nnx.Param` with logical axis names in its `out_sharding` metadata (see electra_jax/sharding.py
for the one table that maps them to mesh axes). Dropout is functional: modules take `dropout_rng` (a PRNG key, or None
for deterministic inference), so a train step stays a pure function of (params, batch, rng).

The encoder keeps each per-layer parameter stacked with a leading [num_hidden_layers] axis ("layers"). The same
parameters run either as a Python loop over layers or as one `jax.lax.scan`, optionally rematerialised.

The ops themselves (products, LayerNorm, GELU, dropout, attention) come from `electra_jax.ops`, in the forms the
config's runtime field `kernels` selects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from electra_jax import ops, sharding
from electra_jax.modeling.config import ConfigError, ElectraConfig


# ------------------------------------------------------------------------------------------------ helpers
def _param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} do not match parameter shape {value.shape}")
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


@dataclasses.dataclass(frozen=True)
class _Gelu:
  """ops.gelu with the kernels chosen (a value, so modules holding it compare and hash by it)."""
  kernels: str

  def __call__(self, x: jax.Array) -> jax.Array:
    return ops.gelu(x, kernels=self.kernels)


def activation(name: str, kernels: str = "auto"):
  """HF's ACT2FN for the activations ELECTRA configs use ('gelu' is the exact erf GELU, `ops.gelu`)."""
  if name == "gelu":
    return _Gelu(kernels)
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  if name in ("silu", "swish"):
    return jax.nn.silu
  if name == "tanh":
    return jnp.tanh
  raise ConfigError(f"unsupported activation {name!r}")


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
  if rng is None:
    return [None] * n
  return list(jax.random.split(rng, n))


# ------------------------------------------------------------------------------------------------ primitives
class Dense(nnx.Module):
  """y = x @ kernel + bias. kernel is [in, out] (the transpose of a torch Linear weight).

  With `stack=L` every parameter gets a leading [L] "layers" axis (used by the encoder).
  """

  def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], config: ElectraConfig,
               *, rngs: nnx.Rngs, stack: int | None = None, use_bias: bool = True):
    lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
    init = jax.nn.initializers.normal(config.initializer_range)
    self.kernel = _param(init(rngs.params(), lead + (in_features, out_features), config.storage_dtype),
                         lead_axes + tuple(axes))
    self.bias = _param(jnp.zeros(lead + (out_features,), config.storage_dtype), lead_axes + (axes[1],)) \
        if use_bias else None
    self.dtype = config.compute_dtype
    self.kernels = config.kernels

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.product(x)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def product(self, x: jax.Array) -> jax.Array:
    """x @ kernel without the bias."""
    # as one 2-D [tokens, in] x [in, out] product (benchmarks/README.md)
    kernel = self.kernel[...].astype(self.dtype)
    y = ops.dense(x.astype(self.dtype).reshape(-1, x.shape[-1]), kernel, kernels=self.kernels)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def dense_group(x: jax.Array, layers: Sequence[Dense]) -> tuple[jax.Array, ...]:
  """layer(x) for each of `layers` (Dense layers with biases, the same input size and compute dtype) as
  ops.dense_group: the same values; on GPU, fewer launches."""
  return ops.dense_group(x.astype(layers[0].dtype), [d.kernel[...].astype(d.dtype) for d in layers],
                         [d.bias[...].astype(d.dtype) for d in layers], kernels=layers[0].kernels)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32 and cast back to the compute dtype."""

  def __init__(self, features: int, config: ElectraConfig, *, stack: int | None = None):
    lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
    self.scale = _param(jnp.ones(lead + (features,), config.storage_dtype), lead_axes + ("norm",))
    self.bias = _param(jnp.zeros(lead + (features,), config.storage_dtype), lead_axes + ("norm",))
    self.eps = config.layer_norm_eps
    self.dtype = config.compute_dtype
    self.kernels = config.kernels

  def __call__(self, x: jax.Array) -> jax.Array:
    with jax.named_scope("layer_norm"):
      f32 = jnp.float32
      y = ops.layer_norm(x.astype(f32), self.scale[...].astype(f32), self.bias[...].astype(f32), self.eps,
                         kernels=self.kernels)
      return y.astype(self.dtype)


# ------------------------------------------------------------------------------------------------ embeddings
class ElectraEmbeddings(nnx.Module):
  """word + position + token-type embeddings (size embedding_size) -> LayerNorm -> dropout."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.normal(config.initializer_range)
    e, dt = config.embedding_size, config.storage_dtype
    word = init(rngs.params(), (config.vocab_size, e), dt)
    if config.pad_token_id is not None:  # torch's Embedding(padding_idx=...) starts that row at zero
      word = word.at[config.pad_token_id].set(0)
    self.word_embeddings = _param(word, ("vocab", "emb"))
    self.position_embeddings = _param(init(rngs.params(), (config.max_position_embeddings, e), dt),
                                      ("positions", "emb"))
    self.token_type_embeddings = _param(init(rngs.params(), (config.type_vocab_size, e), dt), ("type_vocab", "emb"))
    self.layer_norm = LayerNorm(e, config)
    self.rate = config.hidden_dropout_prob
    self.dtype = config.compute_dtype
    self.kernels = config.kernels

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    x = jnp.take(self.word_embeddings[...], input_ids, axis=0)
    x = x + jnp.take(self.token_type_embeddings[...], token_type_ids, axis=0)
    x = x + jnp.take(self.position_embeddings[...], position_ids, axis=0)
    x = self.layer_norm(x.astype(self.dtype))
    return ops.dropout(x, self.rate, dropout_rng, kernels=self.kernels)


# ------------------------------------------------------------------------------------------------ encoder
class ElectraLayer(nnx.Module):
  """One post-LN transformer layer: self-attention -> add & LN -> FFN -> add & LN.

  Built with `stack=L` by the encoder; `__call__` then runs on one slice of the stacked parameters.
  """

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs, stack: int | None = None):
    h, i = config.hidden_size, config.intermediate_size
    kw = dict(config=config, rngs=rngs, stack=stack)
    self.query = Dense(h, h, ("embed", "heads"), **kw)
    self.key = Dense(h, h, ("embed", "heads"), **kw)
    self.value = Dense(h, h, ("embed", "heads"), **kw)
    self.attention_output = Dense(h, h, ("heads", "embed"), **kw)
    self.attention_norm = LayerNorm(h, config, stack=stack)
    self.intermediate = Dense(h, i, ("embed", "mlp"), **kw)
    self.output = Dense(i, h, ("mlp", "embed"), **kw)
    self.output_norm = LayerNorm(h, config, stack=stack)
    self.num_heads = config.num_attention_heads
    self.head_dim = config.head_dim
    self.act = activation(config.hidden_act, config.kernels)
    self.hidden_rate = config.hidden_dropout_prob
    self.attention_rate = config.attention_probs_dropout_prob
    self.causal = config.is_decoder
    self.dtype = config.compute_dtype
    self.kernels = config.kernels

  def _attention(self, xq: jax.Array, x: jax.Array, key_mask: jax.Array, rng: jax.Array | None) -> jax.Array:
    """Queries from xq [B, Lq, H] (the first Lq positions), keys and values from x [B, L, H] -> [B, Lq, H]."""
    b, length, _ = x.shape
    if xq is x:   # one input: the three products as one group (ops.dense_group)
      q, k, v = (t.reshape(b, length, self.num_heads, self.head_dim)
                 for t in dense_group(x, (self.query, self.key, self.value)))
    else:
      q = self.query(xq).reshape(b, xq.shape[1], self.num_heads, self.head_dim)
      k = self.key(x).reshape(b, length, self.num_heads, self.head_dim)
      v = self.value(x).reshape(b, length, self.num_heads, self.head_dim)
    with jax.named_scope("attention"):
      out = ops.attention(q, k, v, key_mask, causal=self.causal, dropout_rate=self.attention_rate, dropout_rng=rng,
                          kernels=self.kernels)
      return out.reshape(b, xq.shape[1], -1)

  def __call__(self, x: jax.Array, key_mask: jax.Array, rng: jax.Array | None = None,
               positions: int | None = None) -> jax.Array:
    """x [B, L, H], key_mask boolean [B, L] (True: a token attended to) -> [B, L, H]; with `positions=n`, the layer's
    output at the first n positions only, [B, n, H] (their queries still attend to every key): what a head that reads
    only [CLS] needs of the last layer. Attention is causal when the config is a decoder (`is_decoder`)."""
    r_att, r_out1, r_out2 = split_rng(rng, 3)
    xq = x if positions is None else x[:, :positions]
    x = self._add_norm(self.attention_output, self._attention(xq, x, key_mask, r_att), xq, self.attention_norm,
                       r_out1)
    x = self._add_norm(self.output, self.act(self.intermediate(x)), x, self.output_norm, r_out2)
    return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))

  def _add_norm(self, dense: Dense, h: jax.Array, residual: jax.Array, norm: LayerNorm,
                rng: jax.Array | None) -> jax.Array:
    """norm(dropout(dense(h)) + residual), as ops.add_layer_norm."""
    f32 = jnp.float32
    return ops.add_layer_norm(dense.product(h), dense.bias[...].astype(dense.dtype), residual,
                              norm.scale[...].astype(f32), norm.bias[...].astype(f32), norm.eps,
                              dropout_rate=self.hidden_rate, dropout_rng=rng, kernels=self.kernels)


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class ElectraEncoder(nnx.Module):
  """num_hidden_layers ElectraLayers with stacked parameters; loop or scan, optional remat."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    self.layers = ElectraLayer(config, rngs=rngs, stack=config.num_hidden_layers)
    self.num_layers = config.num_hidden_layers
    self.scan = config.scan_layers
    self.remat_policy = config.remat_policy

  def __call__(self, x: jax.Array, key_mask: jax.Array, dropout_rng: jax.Array | None = None,
               last_layer_positions: int | None = None) -> jax.Array:
    """[B, L, H] and the key mask [B, L] (True: a token attended to) -> [B, L, H], or [B, n, H] with
    `last_layer_positions=n`: the last layer computed at the first n positions only (ElectraLayer's `positions`);
    every earlier layer at all of them, as the last layer's keys and values need."""
    graphdef, stacked = nnx.split(self.layers)
    rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.num_layers)

    def layer(h, params_and_rng, positions):
      params, rng = params_and_rng
      return nnx.merge(graphdef, params)(h, key_mask, rng, positions)

    if self.remat_policy != "none":
      layer = jax.checkpoint(layer, policy=_REMAT[self.remat_policy], static_argnums=(2,))
    if self.scan:
      if last_layer_positions is None:
        x, _ = jax.lax.scan(lambda h, xs: (layer(h, xs, None), None), x, (stacked, rngs))
        return x
      head, last = jax.tree.map(lambda a: a[:-1], (stacked, rngs)), jax.tree.map(lambda a: a[-1], (stacked, rngs))
      x, _ = jax.lax.scan(lambda h, xs: (layer(h, xs, None), None), x, head)
      return layer(x, last, last_layer_positions)
    # Unstack with one split per parameter: its gradient is one concatenate. (Indexing a[i] per layer would make
    # every layer's gradient a full-size padded array, summed L times.)
    leaves, treedef = jax.tree.flatten(stacked)
    per_layer = [jnp.split(leaf, self.num_layers) for leaf in leaves]
    for i in range(self.num_layers):
      params_i = jax.tree.unflatten(treedef, [p[i][0] for p in per_layer])
      x = layer(x, (params_i, None if rngs is None else rngs[i]),
                last_layer_positions if i == self.num_layers - 1 else None)
    return x
