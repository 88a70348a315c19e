"""Building blocks of the ELECTRA encoder as Flax NNX modules.

Every parameter is an `nnx.Param` with logical axis names in its `out_sharding` metadata (see electra_jax/sharding.py
for the one table that maps them to mesh axes). Dropout is functional: modules take `dropout_rng` (a PRNG key, or None
for deterministic inference), so a train step stays a pure function of (params, batch, rng).

The encoder keeps each per-layer parameter stacked with a leading [num_hidden_layers] axis ("layers"). The same
parameters run either as a Python loop over layers or as one `jax.lax.scan`, optionally rematerialised.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from electra_jax import sharding
from electra_jax.modeling.config import ElectraConfig


# ------------------------------------------------------------------------------------------------ helpers
def _param(value: jax.Array, axes: Sequence[str | None]) -> nnx.Param:
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} do not match parameter shape {value.shape}")
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def gelu_exact(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU in torch's form, x / 2 * (1 + erf(x / sqrt 2)), which HF's "gelu" runs.

  erf is a short polynomial; jax.nn.gelu(approximate=False) goes through erfc, whose XLA expansion evaluates two
  branches and an exponential: 2.5x slower alone on CPU, and the pretraining step ran 3.6% slower with it. The select
  changes no value (for x < -10 the formula is already 0: erf rounds to -1 from x / sqrt 2 < -4), but XLA's CPU backend
  does not pull a select into a YNNPACK matmul fusion; without it XLA fused the whole FFN (dot, GELU, dot) into one,
  with GELU's constants materialised at full size, and inference at batch 32 ran 1.3x slower (benchmarks/README.md).
  """
  with jax.named_scope("gelu"):   # scopes name the ops in profiles (benchmarks/profile_step.py)
    y = x * 0.5 * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))
    return jnp.where(x < -10.0, jnp.zeros_like(y), y)


def activation(name: str):
  """HF's ACT2FN for the activations ELECTRA configs use ('gelu' is the exact erf GELU)."""
  if name == "gelu":
    return gelu_exact
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "relu":
    return jax.nn.relu
  if name in ("silu", "swish"):
    return jax.nn.silu
  if name == "tanh":
    return jnp.tanh
  raise ValueError(f"unsupported activation {name!r}")


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def random_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """jax.random.bits(rng, shape, jnp.uint32), bit for bit, with threefry's 20 rounds written out.

  On CPU JAX lowers threefry as a rolled loop (5 iterations, each a pass over memory of two [shape] state arrays),
  which took ~8% of the op time of an ELECTRA-Small pretraining step; written out, XLA computes the hash of each
  counter in one fusion, as JAX's own TPU/GPU lowering does. Keys of another implementation, the non-partitionable
  threefry mode and 2^32 elements or more go to jax.random.bits itself.
  """
  words = threefry_words(rng, shape)
  return jax.random.bits(rng, shape, jnp.uint32) if words is None else words[0] ^ words[1]


def threefry_words(rng: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array] | None:
  """Both 32-bit output words of threefry2x32 for each counter (jax.random.bits keeps only their xor), or None for
  keys that `random_bits` hands to jax.random.bits (see there)."""
  n = math.prod(shape)
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  if (not typed or rng.shape or str(jax.random.key_impl(rng)) != "threefry2x32"
      or not jax.config.jax_threefry_partitionable or n >= 2**32):
    return None
  k = jax.random.key_data(rng)
  ks = (k[0], k[1], k[0] ^ k[1] ^ jnp.uint32(0x1BD11BDA))
  # the counter of each element: its flat index (high word 0 below 2^32 elements), as jax.random.bits numbers them
  strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
  count = sum((jax.lax.broadcasted_iota(jnp.uint32, shape, i) * jnp.uint32(st) for i, st in enumerate(strides)),
              jnp.zeros(shape, jnp.uint32))
  x0, x1 = jnp.zeros(shape, jnp.uint32) + ks[0], count + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
      x1 = x0 ^ x1
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def _random_halfwords(rng: jax.Array, shape: tuple[int, ...], parts: int) -> list[jax.Array]:
  """`parts` (1, 2 or 4) independent arrays of 16 random bits (as uint32), each of `shape`: the halves of one 32-bit
  word per element (parts 1 takes the high half), or of both words of one threefry hash (parts 4)."""
  if parts == 4:
    words = threefry_words(rng, shape)
    if words is None:   # other keys: two words of jax.random.bits
      words = tuple(jax.random.bits(rng, (2, *shape), jnp.uint32))
    return [h for w in words for h in (w & 0xFFFF, w >> 16)]
  bits = random_bits(rng, shape)
  return [bits >> 16] if parts == 1 else [bits & 0xFFFF, bits >> 16]


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout (kept values scaled by 1 / (1 - rate)); identity when rng is None or rate is 0.

  Each element is dropped when 16 random bits fall below round(rate * 2^16) (rate 0.1: drop probability 0.1000061).
  One threefry hash (`threefry_words`: two 32-bit words) gives the masks of four elements, one in each quarter of the
  last axis: a quarter of the hashing of a float uniform per element, and the masks fuse into the multiply
  (benchmarks/README.md, changes 3 and 13). A last axis not divisible by 4 takes one 32-bit word (jax.random.bits'
  xor of the two) per two elements, or per element when odd.
  """
  if rng is None or rate == 0.0:
    return x
  threshold = jnp.uint32(round(rate * 65536))
  *lead, d = x.shape
  scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
  parts = 4 if d % 4 == 0 else 2 if d % 2 == 0 else 1
  with jax.named_scope("dropout_mask"):   # names the random-bit ops in profiles (benchmarks/profile_step.py)
    keep = jnp.concatenate([h >= threshold for h in _random_halfwords(rng, (*lead, 1, d // parts), parts)], axis=-2)
  return _keep_scaled(x.reshape(*lead, parts, d // parts), keep, scale).reshape(x.shape)


@jax.custom_vjp
def _keep_scaled(x: jax.Array, keep: jax.Array, scale: jax.Array) -> jax.Array:
  """where(keep, x * scale, 0) with its gradient written in the same form: autodiff's where(keep, g, 0) * scale made
  XLA's CPU backend pull the multiply into the following YNNPACK fusion with `scale` materialised at full size
  (fine-tuning step ~3% slower; benchmarks/README.md, change 13)."""
  return jnp.where(keep, x * scale, jnp.zeros_like(x))


def _keep_scaled_fwd(x, keep, scale):
  return _keep_scaled(x, keep, scale), (keep, scale)


def _keep_scaled_bwd(res, g):
  keep, scale = res
  return jnp.where(keep, g * scale, jnp.zeros_like(g)), None, None


_keep_scaled.defvjp(_keep_scaled_fwd, _keep_scaled_bwd)


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
  if rng is None:
    return [None] * n
  return list(jax.random.split(rng, n))


# ------------------------------------------------------------------------------------------------ primitives
def _compiling_for_cpu() -> bool:
  """Whether the computation being traced targets CPUs: the platform of the mesh in context (`jax.set_mesh`, as the
  trainers and launch/tpu_aot.py's compile-only TPU devices set it), else JAX's default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return (device.platform if device is not None else jax.default_backend()) == "cpu"


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [N, in] @ kernel [in, out] (Dense's product), with the kernel's gradient in the faster orientation on CPU.

  The kernel's gradient x^T g contracts the N tokens, the leading axis of both operands. XLA's CPU backend runs that
  dot itself (not through YNNPACK) and is fast only when the result has no more rows than columns: for [1024, 256]
  (the FFN output layer) over 4,096 tokens it took 9.8 ms, against 6.5 ms for (g^T x)^T, the [256, 1024] product
  transposed after it; [256, 64] 0.81 -> 0.49 ms, [256, 1024] itself 6.5 ms as is and 9.8 transposed
  (benchmarks/README.md). So on CPU a kernel with in > out gets its gradient as (g^T x)^T, the barrier keeping XLA
  from folding the transpose back into the product. The same sums; for other platforms autodiff's form.
  """
  return jnp.dot(x, kernel)


def _matmul_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _matmul_bwd(res, g):
  x, kernel = res
  dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))            # g @ kernel^T
  tokens = (((0,), (0,)), ((), ()))
  if kernel.shape[0] > kernel.shape[1] and _compiling_for_cpu():
    dk = jax.lax.optimization_barrier(jax.lax.dot_general(g, x, tokens)).T   # (g^T x)^T
  else:
    dk = jax.lax.dot_general(x, g, tokens)                                   # x^T g
  return dx, dk


matmul.defvjp(_matmul_fwd, _matmul_bwd)


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

  def __call__(self, x: jax.Array) -> jax.Array:
    # Multiply as one 2-D [tokens, in] x [in, out] product. The same jnp.dot on [B, L, in] makes the kernel's gradient a
    # dot_general contracting two axes, which XLA's CPU backend feeds through transposed copies of the activations and
    # their gradients (2x slower fwd+bwd in benchmarks/profile_step.py); on TPU/GPU the reshape is free.
    kernel = self.kernel[...].astype(self.dtype)
    y = matmul(x.astype(self.dtype).reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], kernel.shape[-1])
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


@jax.custom_vjp
def tied_logits(x: jax.Array, table: jax.Array, bias: jax.Array) -> jax.Array:
  """x [N, E] @ table[V, E].T + bias [V]: an output layer whose kernel is an embedding table (the tied LM head).

  The forward is the plain product; the backward is written out so that the table's and the bias's gradients come
  from ONE product, [x, 1]^T @ g -> [E + 1, V] (rows: the table's gradient transposed, then the bias's), with the
  small [N, E + 1] operand transposed explicitly. Left to autodiff, XLA's CPU backend ran the table's gradient as a
  transposing dot_general at ~1/3 of the matmul rate and the bias's gradient as a column reduction over the [N, V]
  logit gradient (together ~40 ms of op time per ELECTRA-Small step; benchmarks/README.md). Same values on any
  backend.
  """
  return jnp.dot(x, table.T) + bias


def _tied_logits_fwd(x, table, bias):
  return tied_logits(x, table, bias), (x, table)


def _tied_logits_bwd(res, g):
  x, table = res
  dx = jnp.dot(g, table)
  x1 = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
  # The barrier keeps XLA from folding the transpose back into the product (which would make it the slow one again).
  dt = jnp.dot(jax.lax.optimization_barrier(x1.T), g)                        # [E + 1, V]
  return dx, dt[:-1].T.astype(table.dtype), dt[-1].astype(g.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (two-pass variance), with its backward written out:

  dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)) with gs = g * scale, from the saved xhat and rstd: two row
  reductions and one elementwise pass, where autodiff's chain through mean, variance and rsqrt made several.
  """
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  xc = x - jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
  xhat = xc * rstd
  return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, g):
  del eps
  xhat, rstd, scale = res
  lead = tuple(range(g.ndim - 1))
  # A select that changes no value (rstd > 0; a NaN rstd takes the g * scale branch) keeps this pass out of a
  # YNNPACK fusion on XLA's CPU backend: at 4,096 rows XLA fused the two row reductions and the elementwise pass into
  # one, whose operands must be full-size, so it wrote `scale` broadcast to [tokens, hidden] once per LayerNorm per
  # step (fine-tuning step ~4% slower, 90 MiB more RSS; benchmarks/README.md). Same values on any backend.
  gs = jnp.where(rstd < 0, 0.0, g * scale)
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  return dx, jnp.sum(g * xhat, axis=lead).reshape(scale.shape), jnp.sum(g, axis=lead).reshape(scale.shape)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32 and cast back to the compute dtype."""

  def __init__(self, features: int, config: ElectraConfig, *, stack: int | None = None):
    lead, lead_axes = ((stack,), ("layers",)) if stack else ((), ())
    self.scale = _param(jnp.ones(lead + (features,), config.storage_dtype), lead_axes + ("norm",))
    self.bias = _param(jnp.zeros(lead + (features,), config.storage_dtype), lead_axes + ("norm",))
    self.eps = config.layer_norm_eps
    self.dtype = config.compute_dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    with jax.named_scope("layer_norm"):
      y = layer_norm(x.astype(jnp.float32), self.scale[...].astype(jnp.float32), self.bias[...].astype(jnp.float32),
                     self.eps)
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

  def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    x = jnp.take(self.word_embeddings[...], input_ids, axis=0)
    x = x + jnp.take(self.token_type_embeddings[...], token_type_ids, axis=0)
    x = x + jnp.take(self.position_embeddings[...], position_ids, axis=0)
    x = self.layer_norm(x.astype(self.dtype))
    return dropout(x, self.rate, dropout_rng)


# ------------------------------------------------------------------------------------------------ encoder
def attention_mask_bias(attention_mask: jax.Array, causal: bool) -> jax.Array:
  """[B, L] 0/1 padding mask -> boolean [B, 1, L, L] (query, key) mask; lower-triangular when causal."""
  keep = attention_mask.astype(bool)[:, None, None, :]
  if causal:
    length = attention_mask.shape[-1]
    keep = keep & jnp.tril(jnp.ones((length, length), bool))[None, None]
  return keep


def _attention_heads_major(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dtype) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v for q [B, Lq, N, D], k and v [B, L, N, D] -> [B, Lq, N, D], as batched products on
  operands copied into heads-major order first: q and v [B, N, L, D], k [B, N, D, L].

  Inference on XLA's CPU backend: jax.nn.dot_product_attention's einsums left the layouts to XLA, which copied k and v
  into [B, N, D, L] and transposed the output back; with these copies (kept by barriers) the ELECTRA-Small inference
  batch (32 x 128) took 0.231-0.242 s instead of 0.247-0.256 s (benchmarks/README.md). The dropout path of training
  gains nothing from it. The same values up to float rounding (the softmax is normalised after the product).
  """
  bar = jax.lax.optimization_barrier
  qh, kt, vh = bar(q.transpose(0, 2, 1, 3)), bar(k.transpose(0, 2, 3, 1)), bar(v.transpose(0, 2, 1, 3))
  scores = jnp.matmul(qh, kt, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  # softmax's normalisation after the product, on [.., Lq, D] instead of [.., Lq, L] (the same sums; flash
  # attention's order): XLA fused the normalised probabilities into the value product's YNNPACK fusion, which ran at
  # half the speed of the plain product (2.3-2.5 ms -> 1.1 ms per layer; inference batch ~5% faster).
  e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  out = jnp.matmul(e.astype(dtype), vh) / jnp.sum(e, axis=-1, keepdims=True)
  return out.astype(dtype).transpose(0, 2, 1, 3)


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
    self.act = activation(config.hidden_act)
    self.hidden_rate = config.hidden_dropout_prob
    self.attention_rate = config.attention_probs_dropout_prob
    self.dtype = config.compute_dtype

  def _attention(self, xq: jax.Array, x: jax.Array, mask: jax.Array, rng: jax.Array | None) -> jax.Array:
    """Queries from xq [B, Lq, H], keys and values from x [B, L, H] -> [B, Lq, H]."""
    b, length, _ = x.shape
    q = self.query(xq).reshape(b, xq.shape[1], self.num_heads, self.head_dim)
    k = self.key(x).reshape(b, length, self.num_heads, self.head_dim)
    v = self.value(x).reshape(b, length, self.num_heads, self.head_dim)
    with jax.named_scope("attention"):
      if rng is None or self.attention_rate == 0.0:
        out = (_attention_heads_major(q, k, v, mask, self.dtype) if _compiling_for_cpu() else
               jax.nn.dot_product_attention(q, k, v, mask=mask))
      else:  # attention-probability dropout needs the probabilities, so spell the attention out
        scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(self.head_dim)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = dropout(jax.nn.softmax(scores, axis=-1), self.attention_rate, rng).astype(self.dtype)
        out = jnp.einsum("bnqk,bknd->bqnd", probs, v)
      return out.reshape(b, xq.shape[1], -1)

  def __call__(self, x: jax.Array, mask: jax.Array, rng: jax.Array | None = None,
               positions: int | None = None) -> jax.Array:
    """x [B, L, H] -> [B, L, H]; with `positions=n`, the layer's output at the first n positions only, [B, n, H]
    (their queries still attend to every key): what a head that reads only [CLS] needs of the last layer."""
    r_att, r_out1, r_out2 = split_rng(rng, 3)
    xq = x
    if positions is not None:
      xq = x[:, :positions]
      mask = mask[:, :, :positions] if mask.shape[2] > 1 else mask   # a causal mask has a row per query
    a = self.attention_output(self._attention(xq, x, mask, r_att))
    x = self.attention_norm(dropout(a, self.hidden_rate, r_out1) + xq)
    f = self.output(self.act(self.intermediate(x)))
    x = self.output_norm(dropout(f, self.hidden_rate, r_out2) + x)
    return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))


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

  def __call__(self, x: jax.Array, mask: jax.Array, dropout_rng: jax.Array | None = None,
               last_layer_positions: int | None = None) -> jax.Array:
    """[B, L, H] -> [B, L, H], or [B, n, H] with `last_layer_positions=n`: the last layer computed at the first n
    positions only (ElectraLayer's `positions`); every earlier layer at all of them, as the last layer's keys and
    values need."""
    graphdef, stacked = nnx.split(self.layers)
    rngs = None if dropout_rng is None else jax.random.split(dropout_rng, self.num_layers)

    def layer(h, params_and_rng, positions):
      params, rng = params_and_rng
      return nnx.merge(graphdef, params)(h, mask, rng, positions)

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
