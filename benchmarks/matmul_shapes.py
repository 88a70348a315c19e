"""The matrix products of an ELECTRA-Small step, timed alone: XLA (jax.jit of one jnp.dot) against torch, same process.

    python benchmarks/matmul_shapes.py                   # tokens 4096 (fine-tuning batch 32 x 128), hidden 256
    python benchmarks/matmul_shapes.py --tokens=2048 --repeats=10

Each shape is a product the encoder runs: forward ([tokens, in] x [in, out]), the input gradient ([tokens, out] x
[out, in]^T) and the kernel gradient ([tokens, in]^T x [tokens, out]), for the q/k/v/output projections (256 x 256),
the FFN (256 x 1024 and back) and a fused q/k/v (256 x 768); plus 2048^3, the host's reference rate. torch runs with
as many threads as the process may use (the cores), as the PyTorch peer does. It shows how far each library's GEMM is
from the host's peak at the step's own shapes. Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer("tokens", 4096, "Rows of the activations (batch x sequence length).")
flags.DEFINE_integer("hidden", 256, "Hidden size (ELECTRA-Small: 256; the FFN is 4x).")
flags.DEFINE_integer("repeats", 20, "Timed repetitions per shape (median reported), after one warm-up.")
flags.DEFINE_boolean("torch", True, "Also time torch (needs torch installed).")


def shapes(tokens: int, hidden: int) -> list[tuple[str, int, int, int, str]]:
  """(name, m, k, n, form): form 'nn' = A[m,k] B[k,n]; 'nt' = A[m,k] B[n,k]^T; 'tn' = A[k,m]^T B[k,n]."""
  h, f = hidden, 4 * hidden
  return [
      ("proj fwd", tokens, h, h, "nn"), ("proj dx", tokens, h, h, "nt"), ("proj dW", h, tokens, h, "tn"),
      ("ffn-in fwd", tokens, h, f, "nn"), ("ffn-in dx", tokens, f, h, "nt"), ("ffn-in dW", h, tokens, f, "tn"),
      ("ffn-out fwd", tokens, f, h, "nn"), ("ffn-out dW", f, tokens, h, "tn"),
      ("qkv fused fwd", tokens, h, 3 * h, "nn"), ("reference 2048^3", 2048, 2048, 2048, "nn"),
  ]


def _median_s(fn, repeats: int) -> float:
  return statistics.median(common.time_steps(fn, warmup=1, steps=repeats))


def main(argv) -> None:
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  torch = None
  if FLAGS.torch:
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.set_num_threads(common.cpu_threads())
  forms = {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ b.T, "tn": lambda a, b: a.T @ b}
  rng = np.random.default_rng(0)
  rows, out = [], {}
  for name, m, k, n, form in shapes(FLAGS.tokens, FLAGS.hidden):
    a_shape = (k, m) if form == "tn" else (m, k)
    b_shape = (n, k) if form == "nt" else (k, n)
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    gflop = 2 * m * k * n / 1e9
    f = jax.jit(forms[form])
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    xla = gflop / _median_s(lambda: f(ja, jb).block_until_ready(), FLAGS.repeats)
    row = {"product": name, "m x k x n": f"{m} x {k} x {n}", "XLA GFLOP/s": xla}
    if torch is not None:
      ta, tb = torch.from_numpy(a), torch.from_numpy(b)
      tf = forms[form]
      row["torch GFLOP/s"] = gflop / _median_s(lambda: tf(ta, tb), FLAGS.repeats)
      row["XLA / torch"] = xla / row["torch GFLOP/s"]
    rows.append(row)
    out[name] = {k2: v for k2, v in row.items() if k2 != "product"}
  print(f"\nmatrix products alone, float32, {common.cpu_threads()} CPU threads, median of {FLAGS.repeats} "
        f"(load average {os.getloadavg()[0]:.2f})")
  cols = ["product", "m x k x n", "XLA GFLOP/s"] + (["torch GFLOP/s", "XLA / torch"] if torch is not None else [])
  print(common.format_table(rows, cols))
  print(json.dumps({"benchmark": "matmul_shapes", "tokens": FLAGS.tokens, "hidden": FLAGS.hidden,
                    "cpu_threads": common.cpu_threads(), "products": out, "load": list(os.getloadavg())},
                   sort_keys=True))


if __name__ == "__main__":
  app.run(main)
