"""xla_cpu.dropout, the CPU form of ops.dropout: drop rate, scaling, the parts of the last axis, odd widths,
determinism, gradient; its bits (threefry written out)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax.ops import xla_cpu


@pytest.mark.parametrize("shape", [(64, 4, 128, 128), (512, 256), (1024, 130), (1000, 333)])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_drop_rate_and_scale(shape, rate):
  x = jnp.ones(shape, jnp.float32)
  y = np.asarray(xla_cpu.dropout(x, rate, jax.random.key(0)))
  n = y.size
  dropped = (y == 0)
  # binomial: 5 standard deviations around the rate (16-bit threshold: rate 0.1 -> 6554 / 65536)
  p = round(rate * 65536) / 65536
  assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
  np.testing.assert_allclose(y[~dropped], 1.0 / (1.0 - rate), rtol=1e-6)
  parts = 4 if shape[-1] % 4 == 0 else 2 if shape[-1] % 2 == 0 else 1
  # each part of the last axis takes its own 16 bits of one hash: every part drops at the rate, each pair of parts
  # independently (both dropped at rate^2)
  split = np.split(dropped, parts, axis=-1)
  for part in split:
    assert abs(part.mean() - p) < 5 * np.sqrt(p * (1 - p) / part.size)
  for i in range(parts):
    for j in range(i + 1, parts):
      both = (split[i] & split[j]).mean()
      assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / split[i].size)


def test_deterministic_per_key_identity_without_key_and_gradient():
  x = jax.random.normal(jax.random.key(1), (8, 16, 64))
  a = xla_cpu.dropout(x, 0.1, jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(xla_cpu.dropout(x, 0.1, jax.random.key(3))))
  assert not np.array_equal(np.asarray(a), np.asarray(xla_cpu.dropout(x, 0.1, jax.random.key(4))))
  assert xla_cpu.dropout(x, 0.1, None) is x and xla_cpu.dropout(x, 0.0, jax.random.key(3)) is x
  g = jax.grad(lambda v: jnp.sum(xla_cpu.dropout(v, 0.1, jax.random.key(3))))(x)
  np.testing.assert_allclose(np.asarray(g), np.where(np.asarray(a) != 0, 1 / 0.9, 0.0), rtol=1e-6)
  assert xla_cpu.dropout(x.astype(jnp.bfloat16), 0.1, jax.random.key(3)).dtype == jnp.bfloat16


@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 16, 1, 64)])
def test_random_bits_are_jax_random_bits(shape):
  """The written-out threefry gives jax.random.bits' exact stream (jitted or not); other key kinds fall back to it."""
  for key in (jax.random.key(0), jax.random.fold_in(jax.random.key(3), 11), jax.random.split(jax.random.key(5))[1]):
    want = np.asarray(jax.random.bits(key, shape, jnp.uint32))
    np.testing.assert_array_equal(np.asarray(xla_cpu.random_bits(key, shape)), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(xla_cpu.random_bits, static_argnums=1)(key, shape)), want)
  for key in (jax.random.key(1, impl="rbg"), jax.random.PRNGKey(2)):   # another implementation; a raw uint32 key
    np.testing.assert_array_equal(np.asarray(xla_cpu.random_bits(key, shape)),
                                  np.asarray(jax.random.bits(key, shape, jnp.uint32)))
  if shape:
    text = jax.jit(xla_cpu.random_bits, static_argnums=1).lower(jax.random.key(0), shape).as_text()
    assert "while" not in text   # the rounds are written out, not JAX's rolled CPU loop


@pytest.mark.parametrize("shape", [(7,), (2, 16, 1, 64)])
def test_threefry_words_are_both_outputs_of_the_hash(shape):
  """Dropout's four masks per hash: threefry_words gives both words of threefry2x32 of each element's counter (high
  word 0, low word the flat index), whose xor is jax.random.bits; other keys get None (dropout then asks
  jax.random.bits)."""
  import jax.extend.random as jex_random   # pylint: disable=import-outside-toplevel
  key = jax.random.fold_in(jax.random.key(7), 3)
  x0, x1 = xla_cpu.threefry_words(key, shape)
  n = int(np.prod(shape))
  counters = jnp.concatenate([jnp.zeros(n, jnp.uint32), jnp.arange(n, dtype=jnp.uint32)])   # (high words, low words)
  want = np.asarray(jex_random.threefry_2x32(jax.random.key_data(key), counters))
  np.testing.assert_array_equal(np.asarray(x0).ravel(), want[:n])
  np.testing.assert_array_equal(np.asarray(x1).ravel(), want[n:])
  np.testing.assert_array_equal(np.asarray(x0 ^ x1), np.asarray(jax.random.bits(key, shape, jnp.uint32)))
  assert xla_cpu.threefry_words(jax.random.key(1, impl="rbg"), shape) is None
  # an rbg key still drops at the rate through the fallback's two words
  y = np.asarray(xla_cpu.dropout(jnp.ones((256, 512)), 0.1, jax.random.key(1, impl="rbg")))
  p = 6554 / 65536
  assert abs((y == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / y.size)
