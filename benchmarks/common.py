"""Helpers shared by the benchmark commands and their workers: batches, timing, workers, tables.

    batch = make_batch(batch_size=16, seq_len=128)            # WikiText-2 tokens packed as [CLS] A [SEP] B [SEP]
    save_batch("/tmp/b.npz", batch)                            # every implementation reads the same batch
    times = time_steps(step, warmup=3, steps=10)               # seconds per step (step() must block until done)
    summary = summarize(times)                                 # median, min, max, ...
    result = run_worker([sys.executable, "benchmarks/workers/torch_peer.py", ...])   # the worker's JSON line
    print(format_table(rows, ["name", "tokens/s"]))

Every worker runs in its own process (one implementation at a time, nothing else competing in the process), prints
whatever it likes and ends with ONE JSON line, which `run_worker` returns as a dict. Peak memory of an
implementation is that process's RSS high-water mark (`peak_rss_mib`), which counts the framework, the model, the
optimizer state and the step's activations alike.

This module imports neither jax nor torch, so the workers (one of them runs in the Flax peer's own environment, with
another jax) may import it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "benchmarks"
WORKERS_DIR = BENCH_DIR / "workers"
if str(REPO_ROOT) not in sys.path:   # the benchmarks import electra_jax from this checkout, installed or not
  sys.path.insert(0, str(REPO_ROOT))

# BERT uncased special ids (data/vocab/bert-base-uncased-vocab.txt); the peers use the same ones.
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103

# ELECTRA sizes (paper Table 6): discriminator hidden, layers, embedding size, generator hidden fraction, mask prob.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, layers=2, embedding=32, gen_fraction=0.25, mask_prob=0.15, heads=1),
    "small": dict(hidden=256, layers=12, embedding=128, gen_fraction=0.25, mask_prob=0.15, heads=4),
    "base": dict(hidden=768, layers=12, embedding=768, gen_fraction=1 / 3, mask_prob=0.15, heads=12),
    "large": dict(hidden=1024, layers=24, embedding=1024, gen_fraction=0.25, mask_prob=0.25, heads=16),
}


class WorkerError(RuntimeError):
  """A benchmark worker that exited non-zero or printed no JSON line."""


# ------------------------------------------------------------------------------------------------ sizes
def model_dims(size: str, layers: int | None = None) -> dict[str, Any]:
  """Discriminator and generator sizes as plain numbers (hidden, heads, intermediate, layers, embedding)."""
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; known: {sorted(SIZES)}")
  s = dict(SIZES[size])
  if layers is not None:
    s["layers"] = layers
  g_hidden = max(1, round(s["hidden"] * s["gen_fraction"]))
  g_heads = max(1, g_hidden // 64)
  return {
      "vocab_size": 30522, "embedding_size": s["embedding"], "mask_prob": s["mask_prob"],
      "disc": dict(hidden_size=s["hidden"], num_attention_heads=s["heads"], intermediate_size=4 * s["hidden"],
                   num_hidden_layers=s["layers"]),
      "gen": dict(hidden_size=g_hidden, num_attention_heads=g_heads, intermediate_size=4 * g_hidden,
                  num_hidden_layers=s["layers"]),
  }


def max_predictions(seq_len: int, mask_prob: float) -> int:
  """The original's max_predictions_per_seq = int((mask_prob + 0.005) * max_seq_length) (19 at 128 / 0.15)."""
  return int((mask_prob + 0.005) * seq_len)


# ------------------------------------------------------------------------------------------------ batches
def _wikitext_ids(limit_tokens: int) -> np.ndarray | None:
  """Token ids of WikiText-2 valid (our tokenizer), or None when the shared data is absent."""
  try:
    from electra_jax import paths  # pylint: disable=import-outside-toplevel
    from electra_jax.data.tokenization import load_tokenizer  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  vocab, corpus = paths.default_vocab(), paths.default_corpus() / "wiki.valid.raw"
  if not (vocab.exists() and corpus.exists()):
    return None
  tok = load_tokenizer(vocab)
  ids: list[int] = []
  with open(corpus, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("="):
        continue
      ids.extend(tok.encode(line, add_special_tokens=False).ids)
      if len(ids) >= limit_tokens:
        break
  return np.asarray(ids, np.int32)


def make_batch(batch_size: int, seq_len: int, seed: int = 0, vocab_size: int = 30522) -> dict[str, np.ndarray]:
  """A full-length batch `[CLS] A [SEP] B [SEP]` (no padding): input_ids, input_mask, segment_ids (int32 [B, L]).

  Text is WikiText-2 (valid split) through our WordPiece tokenizer when the shared data is there, else random ids.
  """
  if seq_len < 5:
    raise ValueError(f"seq_len={seq_len}: needs at least 5 tokens ([CLS] a [SEP] b [SEP])")
  body = seq_len - 3
  len_a = body // 2
  need = batch_size * body
  ids = _wikitext_ids(need) if vocab_size >= 30522 else None
  rng = np.random.default_rng(seed)
  if ids is None or len(ids) < need:
    ids = rng.integers(999, vocab_size, size=need, dtype=np.int32)
  ids = ids[:need].reshape(batch_size, body)
  cls = np.full((batch_size, 1), CLS_ID, np.int32)
  sep = np.full((batch_size, 1), SEP_ID, np.int32)
  input_ids = np.concatenate([cls, ids[:, :len_a], sep, ids[:, len_a:], sep], axis=1)
  segment_ids = np.zeros_like(input_ids)
  segment_ids[:, len_a + 2:] = 1
  return {"input_ids": input_ids, "input_mask": np.ones_like(input_ids), "segment_ids": segment_ids}


def make_classification_batch(batch_size: int, seq_len: int, num_labels: int = 2, seed: int = 0
                              ) -> dict[str, np.ndarray]:
  """A sentence-pair batch with labels (the pretraining batch's text; labels random)."""
  batch = make_batch(batch_size, seq_len, seed)
  batch["labels"] = np.random.default_rng(seed + 1).integers(0, num_labels, size=batch_size, dtype=np.int32)
  return batch


def save_batch(path: str | os.PathLike, batch: dict[str, np.ndarray]) -> None:
  np.savez(path, **batch)


def load_batch(path: str | os.PathLike) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


# ------------------------------------------------------------------------------------------------ timing
def time_steps(step: Callable[[], Any], warmup: int, steps: int) -> list[float]:
  """Runs `step` warmup + steps times; returns the wall time of each of the last `steps` calls (seconds)."""
  if steps < 1:
    raise ValueError(f"steps={steps}: at least one timed step is needed")
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def summarize(times: Sequence[float]) -> dict[str, float]:
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def peak_rss_mib() -> float:
  """This process's resident-set high-water mark (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average() -> tuple[float, float, float]:
  return os.getloadavg()


def cpu_threads() -> int:
  """Cores this process may use (the machine's cores unless an affinity mask says fewer)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------ workers
# --platform of the benchmark commands -> JAX_PLATFORMS of the workers (torch follows with --device).
PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}


def worker_env(extra: dict[str, str] | None = None, platform: str = "cpu") -> dict[str, str]:
  """The environment of a worker: one JAX device of `platform` (no simulated CPU devices), the repo importable."""
  if platform not in PLATFORMS:
    raise ValueError(f"platform={platform!r}: expected one of {sorted(PLATFORMS)}")
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env["JAX_PLATFORMS"] = PLATFORMS[platform]
  env["TOKENIZERS_PARALLELISM"] = "false"
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
  if platform == "cpu":
    env.pop("CUDA_VISIBLE_DEVICES", None)
  if extra:
    env.update(extra)
  return env


def with_host_memory_reuse(env: dict[str, str], reuse: bool) -> dict[str, str]:
  """`env`, plus (when `reuse`) the glibc settings our binaries apply to themselves
  (electra_jax.runtime.host_memory.keep_host_buffers_mapped), as GLIBC_TUNABLES for a process about to start."""
  if not reuse:
    return env
  from electra_jax.runtime import host_memory  # pylint: disable=import-outside-toplevel
  tunables = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), host_memory.GLIBC_TUNABLES) if t)
  return {**env, "GLIBC_TUNABLES": tunables}


def host_memory_line(fig: dict[str, Any]) -> str:
  """One line of a benchmark's output: which glibc host-memory setting ours and the peers ran with."""
  ours = ("steps reuse their host buffers (--reuse_host_memory, the binaries' default)"
          if (fig.get("ours") or {}).get("reuse_host_memory")
          else "glibc's defaults, async dispatch (--noreuse_host_memory)")
  peers = "the same settings (GLIBC_TUNABLES)" if fig.get("peers_reuse_host_memory") else "glibc's defaults"
  return f"host memory: ours {ours}; peers {peers}"


# Datasheet dense peaks (FLOP/s, no sparsity) of GPUs by device-kind substring, first match wins: bfloat16, TF32 and
# plain float32 (NVIDIA's H100/H200 SXM and A100 datasheets). A lead, not a measurement: MFU is also reported against
# the run's own measured matmul rate.
DATASHEET_PEAK = (
    ("H100 PCIe", {"bfloat16": 756e12, "tf32": 378e12, "float32": 51e12}),
    ("H200", {"bfloat16": 989e12, "tf32": 494.7e12, "float32": 67e12}),
    ("H100", {"bfloat16": 989e12, "tf32": 494.7e12, "float32": 67e12}),
    ("A100", {"bfloat16": 312e12, "tf32": 156e12, "float32": 19.5e12}),
)


def datasheet_peak(device_kind: str | None, dtype: str, f32_matmul: str = "highest") -> float | None:
  """The datasheet's dense peak FLOP/s of `device_kind` for products in `dtype` (float32 with --f32_matmul=tf32 counts
  as TF32), or None for a device the table does not know."""
  key = "bfloat16" if dtype == "bfloat16" else "tf32" if f32_matmul == "tf32" else "float32"
  for name, peaks in DATASHEET_PEAK:
    if device_kind and name in device_kind:
      return peaks[key]
  return None


def platform_problem(platform: str, f32_matmul: str, dtype: str, peers: Sequence[str]) -> str | None:
  """Why a benchmark's --platform / --f32_matmul / --dtype / --peers would not compare like with like (None: fine)."""
  if platform not in PLATFORMS:
    return f"--platform={platform}: expected one of {sorted(PLATFORMS)}"
  if f32_matmul == "tf32" and platform != "gpu":
    return "--f32_matmul=tf32 needs --platform=gpu (CPUs have no TensorFloat-32)"
  if "flax" in peers and (platform != "cpu" or dtype != "float32"):
    return (f"the HF Flax peer runs float32 on the CPU only; use --peers=torch with --platform={platform} "
            f"--dtype={dtype}")
  return None


def platform_args(platform: str, f32_matmul: str, dtype: str) -> tuple[list[str], list[str]]:
  """Worker arguments (ours, the PyTorch peer's) for where they run and how they compute: the same on both sides."""
  if platform == "cpu":
    return [], [f"--dtype={dtype}"]
  return [f"--f32_matmul={f32_matmul}"], ["--device=cuda", f"--dtype={dtype}", f"--f32_matmul={f32_matmul}"]


def parse_json_line(stdout: str) -> dict[str, Any] | None:
  for line in reversed(stdout.strip().splitlines()):
    line = line.strip()
    if line.startswith("{") and line.endswith("}"):
      return json.loads(line)
  return None


def run_worker(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 1800.0,
               name: str = "worker") -> dict[str, Any]:
  """Runs a worker command; returns its final JSON line. Raises WorkerError with its stderr tail on failure."""
  try:
    proc = subprocess.run(list(cmd), env=env or worker_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO_ROOT), check=False)
  except subprocess.TimeoutExpired:
    raise WorkerError(f"{name}: no result within {timeout:.0f} s ({' '.join(cmd)})") from None
  result = parse_json_line(proc.stdout)
  if proc.returncode != 0 or result is None:
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
    raise WorkerError(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
  return result


def emit(result: dict[str, Any]) -> None:
  """A worker's last act: its result as one JSON line on stdout."""
  sys.stdout.flush()
  print(json.dumps(result, sort_keys=True), flush=True)


# ------------------------------------------------------------------------------------------------ output
def _fmt(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    if v == 0:
      return "0"
    if abs(v) >= 100:
      return f"{v:,.0f}"
    if abs(v) >= 1:
      return f"{v:.2f}"
    return f"{v:.3g}"
  return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  """A plain-text table of `rows` (dicts) in the order of `columns`."""
  cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
  line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
  out = [line(list(columns)), line(["-" * w for w in widths])]
  out.extend(line(row) for row in cells)
  return "\n".join(out)


def peak_mib(figs: dict[str, Any]) -> float:
  """The memory that bounds a run: the device's peak on an accelerator, else the process's peak RSS (MiB)."""
  return figs["device_peak_mib"] if figs.get("device_peak_mib") is not None else figs["peak_rss_mib"]


def where(fig: dict[str, Any]) -> str:
  """Where and how a benchmark ran, for its header: CPU threads, or the GPU and the step's arithmetic."""
  if fig["platform"] == "cpu":
    return f"{fig['cpu_threads']} CPU threads"
  precision = "" if fig["dtype"] == "bfloat16" else f", float32 products {fig['f32_matmul']}"
  return f"{fig['device_kind']} ({fig['dtype']}{precision})"


def ratio(a: float | None, b: float | None) -> float | None:
  if a is None or b is None or b == 0:
    return None
  return a / b
