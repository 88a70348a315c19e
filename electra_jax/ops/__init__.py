"""The kernel seam: every op the model's speed depends on, in a reference form and in forms tuned per platform.

    from electra_jax import ops
    y = ops.dense(x2d, kernel, kernels=config.kernels)            # config.kernels: ElectraConfig's runtime field
    out = ops.attention(q, k, v, key_mask, causal=False, dropout_rate=0.1, dropout_rng=key, kernels="auto")

`kernels` names the forms:
  "reference"  plain jax.numpy with autodiff (reference.py), on any platform;
  "xla_cpu"    the forms tuned for XLA's CPU backend (xla_cpu.py);
  "cudnn"      the forms for NVIDIA GPUs (gpu.py): attention through cuDNN's fused kernel, LayerNorm and the query/key/
               value products with backwards that launch fewer kernels, products through cuBLAS
               (`compiler_options`); the reference forms for the rest;
  "splash"     the reference forms, attention through JAX's splash attention kernel for TPU (tpu.py; off a TPU it runs
               in Pallas' interpret mode, for tests);
  "auto"       chosen at trace time by the platform being compiled for (`platform()`), among the forms that have run
               on that platform: xla_cpu on CPU, cudnn on GPU, splash on TPU, reference elsewhere. Any other form is
               used only when named.
Attention takes the key mask and the causal flag, not a materialised (query, key) mask, so each fused kernel gets them
in its own terms (cuDNN's causal mask, splash's CausalMask and segment ids).
The fused attentions have no probability dropout: under "auto" a call whose attention dropout is on (training with
attention_probs_dropout_prob > 0) takes the reference attention, as does a call the fused kernel cannot serve (cuDNN:
float32 operands or a head size it lacks). Named explicitly, they refuse such calls (and ElectraConfig refuses
kernels="cudnn" / "splash" with attention_probs_dropout_prob > 0). Every tuned form equals its reference in values and
gradients (tests/test_ops.py); that is the contract for adding one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from electra_jax import errors
from electra_jax.ops import gpu, reference, xla_cpu

KERNELS = ("auto", "reference", "xla_cpu", "cudnn", "splash")
FUSED_ATTENTION = ("cudnn", "splash")   # kernels whose attention has no probability dropout
# What "auto" picks per platform: only forms that have run there (cuDNN's on an H200; splash is JAX's TPU kernel).
_AUTO = {"cpu": "xla_cpu", "gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}


class KernelError(errors.Error, ValueError):
  """A `kernels` setting that names no form."""


def platform() -> str:
  """The platform the computation being traced targets: that of the mesh in context (`jax.set_mesh`, as the trainers
  and launch/tpu_aot.py's compile-only TPU devices set it on a CPU host), else JAX's default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def resolve(kernels: str = "auto") -> str:
  """The forms `kernels` names: itself, or for "auto" the platform's (see the module docstring)."""
  if kernels not in KERNELS:
    raise KernelError(f"kernels={kernels!r}: must be one of {KERNELS}")
  return _AUTO.get(platform(), "reference") if kernels == "auto" else kernels


def _tuned(kernels: str):
  """The module holding the forms of the ops other than attention: xla_cpu's, or reference's."""
  return xla_cpu if resolve(kernels) == "xla_cpu" else reference


# ------------------------------------------------------------------------------------------------ the ops
def dropout(x: jax.Array, rate: float, rng: jax.Array | None, *, kernels: str = "auto") -> jax.Array:
  """Inverted dropout (kept values scaled by 1 / (1 - rate)); x itself when rng is None or rate is 0."""
  return _tuned(kernels).dropout(x, rate, rng)


def dense(x: jax.Array, kernel: jax.Array, *, kernels: str = "auto") -> jax.Array:
  """x [N, in] @ kernel [in, out] (a Dense layer's product, as one 2-D product)."""
  return _tuned(kernels).dense(x, kernel)


def tied_logits(x: jax.Array, table: jax.Array, bias: jax.Array, *, kernels: str = "auto") -> jax.Array:
  """x [N, E] @ table [V, E]^T + bias [V]: the LM head whose kernel is the word-embedding table."""
  return _tuned(kernels).tied_logits(x, table, bias)


def dense_group(x: jax.Array, weights: Sequence[jax.Array], biases: Sequence[jax.Array], *,
                kernels: str = "auto") -> tuple[jax.Array, ...]:
  """(x [..., in] @ weights_i [in, out_i] + biases_i [out_i] for each i): several Dense layers of one input (the
  attention's query, key and value), each a 2-D product as `dense`."""
  if resolve(kernels) == "cudnn":
    ys = gpu.dense_group(x.reshape(-1, x.shape[-1]), tuple(weights), tuple(biases))
    return tuple(y.reshape(*x.shape[:-1], y.shape[-1]) for y in ys)
  # each its own reshape, as separate Dense layers run (the same program as before the group existed)
  return tuple(dense(x.reshape(-1, x.shape[-1]), w, kernels=kernels).reshape(*x.shape[:-1], w.shape[-1]) + b
               for w, b in zip(weights, biases))


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, *, kernels: str = "auto") -> jax.Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
  if resolve(kernels) == "cudnn":
    return gpu.layer_norm(x, scale, bias, eps)
  return _tuned(kernels).layer_norm(x, scale, bias, eps)


def add_layer_norm(y: jax.Array, bias: jax.Array, residual: jax.Array, scale: jax.Array, ln_bias: jax.Array,
                   eps: float, *, dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                   kernels: str = "auto") -> jax.Array:
  """layer_norm(dropout(y + bias) + residual) computed in float32 and cast back to y's dtype: the end of a post-LN
  sublayer (the bias of its output Dense, dropout, the residual, LayerNorm). y, bias and residual in the compute
  dtype; scale and ln_bias float32."""
  if resolve(kernels) == "cudnn":
    return gpu.add_layer_norm(y, bias, residual, scale, ln_bias, eps, dropout_rate, dropout_rng)
  x = dropout(y + bias, dropout_rate, dropout_rng, kernels=kernels) + residual
  with jax.named_scope("layer_norm"):
    return layer_norm(x.astype(jnp.float32), scale, ln_bias, eps, kernels=kernels).astype(y.dtype)


def compiler_options(kernels: str, platform_: str) -> dict[str, bool]:
  """XLA options that go with the forms `kernels` names when compiling for `platform_` (a device's .platform). The
  GPU forms take cuBLAS for every product (one launch each, its bias added in the product's epilogue; XLA's Triton
  GEMMs without autotuning split long contractions in two launches), and keep products of one input apart (XLA's
  dot-merger would join the query/key/value products into one whose outputs then need a copy each for cuDNN).
  {} elsewhere: the CPU and TPU programs are untouched."""
  forms = _AUTO.get(platform_, "reference") if kernels == "auto" else kernels
  if forms == "cudnn" and platform_ in ("gpu", "cuda"):
    return dict(GPU_COMPILER_OPTIONS)
  return {}


GPU_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False, "xla_disable_hlo_passes": "dot-merger"}


def gelu(x: jax.Array, *, kernels: str = "auto") -> jax.Array:
  """The exact (erf) GELU in torch's form, x / 2 * (1 + erf(x / sqrt 2)): HF's "gelu"."""
  with jax.named_scope("gelu"):   # scopes name the ops in profiles (benchmarks/profile_step.py)
    return _tuned(kernels).gelu(x)


def cross_entropy_rows(x: jax.Array, targets: jax.Array, *, lse: jax.Array | None = None,
                       kernels: str = "auto") -> jax.Array:
  """logsumexp(x) - x[target] for each row of x [R, V] (float32), targets [R] int32.

  `lse`: the rows' logsumexp when the caller has it already (a statistic it shares with other work, such as the
  sampler's; no gradient flows through it, the gradient is always softmax(x) - one_hot). The reference form
  recomputes it.
  """
  if resolve(kernels) != "xla_cpu":
    return reference.cross_entropy_rows(x, targets)
  if lse is None:
    lse = jax.nn.logsumexp(jax.lax.stop_gradient(x), axis=-1)
  return xla_cpu.cross_entropy_rows(x, targets, lse)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *, causal: bool = False,
              dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None, kernels: str = "auto") -> jax.Array:
  """softmax(q k^T / sqrt(D), masked) v with the probabilities dropped out at `dropout_rate` when dropout_rng is set.

  q [B, Lq, N, D] (Lq <= L: queries of the first Lq positions), k and v [B, L, N, D], key_mask boolean [B, L] or
  None (True: a key the queries may attend to; padding), causal: query i attends the keys j <= i only
  -> [B, Lq, N, D] in q's dtype.
  """
  forms = resolve(kernels)
  if forms == "xla_cpu":
    return xla_cpu.attention(q, k, v, key_mask, causal, dropout_rate, dropout_rng)
  if forms in FUSED_ATTENTION:
    explicit = kernels != "auto"
    if dropout_rng is not None and dropout_rate > 0.0:
      if explicit:
        raise KernelError(f"attention_probs_dropout_prob must be 0 for kernels={kernels!r} (its fused attention has "
                         f"no dropout); set --config.model.attention_probs_dropout_prob=0 or kernels=auto")
    elif forms == "cudnn" and (explicit or gpu.supports(q)):
      return gpu.attention(q, k, v, key_mask, causal)
    elif forms == "splash":
      from electra_jax.ops import tpu  # pylint: disable=import-outside-toplevel  (Pallas' import is slow)
      return tpu.attention(q, k, v, key_mask, causal, interpret=platform() != "tpu")
  return reference.attention(q, k, v, key_mask, causal, dropout_rate, dropout_rng)
