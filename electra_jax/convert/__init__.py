"""Hugging Face PyTorch <-> electra_jax conversion (config.json + model.safetensors), for every head.

    model = from_hf("hf_dir")                                   # head class from config.json "architectures"
    model = from_hf("google/electra-small-discriminator")       # a Hub id, through the HF cache (convert/hub.py)
    model = from_hf("hf_dir", head="ElectraForQuestionAnswering")
    to_hf(model, "out_dir")                                     # config.json + model.safetensors

Safetensors are read and written with `safetensors.numpy`: torch is needed only to read a legacy `pytorch_model.bin`.
Unknown, missing or mis-shaped keys raise `ConversionError` naming the key (and both shapes).
For fine-tuning from a checkpoint of another head, `from_hf(..., new_head_ok=True)` keeps the encoder, initialises
the head afresh and ignores the other head's weights, logging both lists (what HF's from_pretrained does with a warning).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from electra_jax import errors
from electra_jax.convert import hub
from electra_jax.convert.mapping import IGNORED_HF_SUFFIXES, TIED_LM_WEIGHT, body_prefix, rules_for
from electra_jax.modeling import ElectraConfig, head_class

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"


class ConversionError(errors.Error, ValueError):
  """A checkpoint that does not match the model its config describes."""


# ------------------------------------------------------------------------------------------------ file I/O
def is_hf_folder(path: str | os.PathLike) -> bool:
  """True for a folder with config.json and HF weights (a training workdir may hold a config.json of its own)."""
  path = os.fspath(path)
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      os.path.isfile(os.path.join(path, n)) for n in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN))


def read_hf_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads model.safetensors (single or sharded) or pytorch_model.bin from an HF folder into numpy arrays."""
  path = os.fspath(path)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  single, index, legacy = (os.path.join(path, n) for n in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN))

  def load(file: str) -> dict[str, np.ndarray]:
    try:
      return dict(load_file(file))
    except FileNotFoundError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (safetensors raises its own SafetensorError)
      raise ConversionError(f"{file} cannot be read ({' '.join(str(e).split())}); it is truncated or not a "
                            f"safetensors file: copy or export it again") from None

  if os.path.isfile(single):
    return load(single)
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    except (ValueError, KeyError) as e:
      raise ConversionError(f"{index} is not a valid safetensors index ({e})") from None
    out: dict[str, np.ndarray] = {}
    for shard in shards:
      out.update(load(os.path.join(path, shard)))
    return out
  if os.path.isfile(legacy):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConversionError(f"{legacy}: reading a PyTorch .bin checkpoint needs torch; install it or convert the "
                            f"folder to safetensors") from None
    state = torch.load(legacy, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}
  raise FileNotFoundError(f"{path}: no {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN} found")


def write_hf_weights(tensors: dict[str, np.ndarray], path: str | os.PathLike) -> None:
  """model.safetensors in `path`, written whole or not at all; a full disk is a one-line errors.DiskFullError."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  os.makedirs(path, exist_ok=True)
  tmp = os.path.join(path, SAFETENSORS + ".tmp")
  try:
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
  except Exception as e:  # safetensors' SafetensorError (a Rust error) carries the OS's "No space left on device"
    if os.path.exists(tmp):
      os.remove(tmp)
    if errors.is_disk_full(e):
      raise errors.disk_full(os.fspath(path), f"writing {SAFETENSORS}", e) from e
    raise
  os.replace(tmp, os.path.join(path, SAFETENSORS))


# ------------------------------------------------------------------------------------------------ flat paths
def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    node = tree
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return tree


def _pure_shapes(module_or_state) -> dict[str, tuple[int, ...]]:
  state = module_or_state if isinstance(module_or_state, nnx.State) else nnx.state(module_or_state, nnx.Param)
  return {k: tuple(v.shape) for k, v in flatten(nnx.to_pure_dict(state)).items()}


# ------------------------------------------------------------------------------------------------ tensors <-> params
def params_to_hf(head: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
  """Nested pure dict of a head's parameters -> HF state dict (numpy). Raises on a parameter no rule maps."""
  flat = {k: np.asarray(jax.device_get(v)) for k, v in flatten(params).items()}
  out: dict[str, np.ndarray] = {}
  used = set()
  for rule in rules_for(head):
    if rule.jax not in flat:
      continue
    used.add(rule.jax)
    x = flat[rule.jax]
    if rule.per_layer:
      for i in range(x.shape[0]):
        out[rule.hf.format(i=i)] = rule.to_hf(x[i])
    else:
      out[rule.hf] = rule.to_hf(x)
  unmapped = sorted(set(flat) - used)
  if unmapped:
    raise ConversionError(f"{head}: parameters with no HF mapping: {unmapped}")
  return out


def params_from_hf(head: str, expected: dict[str, tuple[int, ...]], tensors: dict[str, np.ndarray],
                   source: str = "checkpoint", new_head_ok: bool = False
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
  """HF state dict -> flat {jax path: array} for a head whose parameter shapes are `expected` (flat paths).

  Returns (params, paths still missing). Missing paths are an error unless `new_head_ok` and they all belong to the
  head (not the encoder); then the caller initialises them.
  """
  tensors = _align_prefix(head, dict(tensors), source)
  params: dict[str, np.ndarray] = {}
  consumed: set[str] = set()
  missing_keys: list[tuple[str, str]] = []
  for rule in rules_for(head):
    if rule.jax not in expected:
      continue
    shape = expected[rule.jax]
    keys = [rule.hf.format(i=i) for i in range(shape[0])] if rule.per_layer else [rule.hf]
    absent = [k for k in keys if k not in tensors]
    if absent:
      if rule.hf == f"{body_prefix(head)}embeddings.word_embeddings.weight" and TIED_LM_WEIGHT in tensors:
        tensors[rule.hf] = tensors[TIED_LM_WEIGHT]  # saved under the tied LM head's name only
      else:
        missing_keys.append((rule.jax, absent[0]))
        continue
    want = rule.hf_shape(shape)
    slices = []
    for k in keys:
      x = tensors[k]
      if tuple(x.shape) != want:
        raise ConversionError(f"{source}: key {k} has shape {tuple(x.shape)} but the model described by its "
                              f"config.json expects {want}")
      slices.append(rule.from_hf(x))
      consumed.add(k)
    params[rule.jax] = np.stack(slices) if rule.per_layer else slices[0]

  emb_key = f"{body_prefix(head)}embeddings.word_embeddings.weight"
  if TIED_LM_WEIGHT in tensors and "generator_lm_head/kernel" not in expected and head in (
      "ElectraForMaskedLM", "ElectraForCausalLM"):
    if emb_key in tensors and not np.array_equal(tensors[TIED_LM_WEIGHT], tensors[emb_key]):
      raise ConversionError(f"{source}: {TIED_LM_WEIGHT} differs from {emb_key}, but config.json has "
                            f"tie_word_embeddings=true")
    consumed.add(TIED_LM_WEIGHT)
  consumed.add(emb_key)

  leftovers = sorted(k for k in set(tensors) - consumed if not k.endswith(IGNORED_HF_SUFFIXES))
  body_missing = [(j, k) for j, k in missing_keys if j.startswith("electra/") or head == "ElectraModel"]
  if missing_keys and (not new_head_ok or body_missing):
    j, k = (body_missing or missing_keys)[0]
    raise ConversionError(f"{source}: missing key {k} (for parameter {j}); "
                          f"{len(missing_keys)} key(s) missing in all")
  if leftovers:
    head_prefixes = ("discriminator_predictions.", "generator_predictions.", "generator_lm_head.", "classifier.",
                     "qa_outputs.", "sequence_summary.")
    foreign = [k for k in leftovers if k.startswith(head_prefixes)]
    if new_head_ok and len(foreign) == len(leftovers):
      logging.warning("%s: ignoring weights of another head: %s", source, foreign)
    else:
      raise ConversionError(f"{source}: unexpected key(s) for {head}: {leftovers[:10]}"
                            f"{' ...' if len(leftovers) > 10 else ''}")
  if missing_keys:
    logging.warning("%s: initialising new %s head parameters: %s", source, head, [j for j, _ in missing_keys])
  return params, [j for j, _ in missing_keys]


def _align_prefix(head: str, tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Accepts a base-model checkpoint (no `electra.` prefix) for a head, and a head checkpoint for ElectraModel."""
  has_prefix = any(k.startswith("electra.") for k in tensors)
  if head != "ElectraModel" and not has_prefix and "embeddings.word_embeddings.weight" in tensors:
    return {(f"electra.{k}" if k.startswith(("embeddings.", "embeddings_project.", "encoder.")) else k): v
            for k, v in tensors.items()}
  if head == "ElectraModel" and has_prefix:
    out = {k[len("electra."):]: v for k, v in tensors.items() if k.startswith("electra.")}
    dropped = sorted(k for k in tensors if not k.startswith("electra.") and k != TIED_LM_WEIGHT)
    if dropped:
      logging.info("%s: ElectraModel drops head weights %s", source, dropped)
    return out
  return tensors


# ------------------------------------------------------------------------------------------------ public API
def resolve_head(config: ElectraConfig, head: str | None) -> str:
  if head is None:
    head = config.architectures[0] if config.architectures else "ElectraModel"
  head_class(head)  # raises with the list of known heads
  return head


def from_hf(path: str | os.PathLike, head: str | None = None, *, new_head_ok: bool = False, seed: int = 0,
            mesh: jax.sharding.Mesh | None = None, rules=None, config_overrides: dict[str, Any] | None = None,
            revision: str | None = None, **runtime) -> nnx.Module:
  """Loads an HF ELECTRA folder, or a Hub model id ("google/electra-small-discriminator", through the Hugging Face
  cache; `revision` or an "@REV" suffix picks a branch, tag or commit), as an electra_jax module, ready for
  inference (dropout is off unless asked for).

  runtime: dtype / param_dtype / scan_layers / remat_policy / kernels. config_overrides: architecture fields to
  change (e.g. num_labels for a new head). With a mesh, parameters are placed with the logical sharding rules.
  """
  path = hub.resolve(path, revision)
  config = ElectraConfig.from_json_file(os.path.join(path, "config.json"), **runtime)
  if config_overrides:
    config = config.replace(**config_overrides)
  head = resolve_head(config, head)
  config = config.replace(architectures=(head,))
  cls = head_class(head)
  tensors = read_hf_weights(path)
  return build_from_hf_tensors(cls, head, config, tensors, source=path, new_head_ok=new_head_ok, seed=seed,
                               mesh=mesh, rules=rules)


def build_from_hf_tensors(cls, head: str, config: ElectraConfig, tensors: dict[str, np.ndarray], *,
                          source: str = "checkpoint", new_head_ok: bool = False, seed: int = 0, mesh=None,
                          rules=None) -> nnx.Module:
  ctor = lambda: cls(config, rngs=nnx.Rngs(seed))  # noqa: E731
  abstract = nnx.eval_shape(ctor)
  graphdef, abstract_state = nnx.split(abstract)
  params, missing = params_from_hf(head, _pure_shapes(abstract_state), tensors, source, new_head_ok)
  if missing:  # only head parameters can be missing here: take them from a fresh initialisation
    fresh = flatten(nnx.to_pure_dict(nnx.state(ctor(), nnx.Param)))
    for j in missing:
      params[j] = np.asarray(fresh[j])
  dtype = config.storage_dtype
  pure = unflatten({k: jnp.asarray(v, dtype=dtype) for k, v in params.items()})
  nnx.replace_by_pure_dict(abstract_state, pure)
  if mesh is not None:
    from electra_jax import sharding  # pylint: disable=import-outside-toplevel
    abstract_state = jax.device_put(abstract_state, sharding.logical_to_sharding(abstract_state, mesh, rules))
  return nnx.merge(graphdef, abstract_state)


def head_name(model: nnx.Module) -> str:
  name = type(model).__name__
  head_class(name)
  return name


def to_hf(model: nnx.Module, path: str | os.PathLike, config: ElectraConfig | None = None,
          dtype: str | None = None, vocab_file: str | os.PathLike | None = None, lowercase: bool = True,
          strip_accents: bool | None = None) -> str:
  """Writes `model` as an HF folder (config.json + model.safetensors) that transformers' from_pretrained loads.

  dtype: "float32" / "bfloat16" / "float16" to cast the tensors (default: the parameters' own dtype).
  vocab_file: also write the tokenizer files, so `transformers.pipeline(task, model=path)` works as is.
  """
  path = os.fspath(path)
  head = head_name(model)
  config = (config or model.config).replace(architectures=(head,))
  tensors = params_to_hf(head, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  if dtype is not None:
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
  write_hf_weights(tensors, path)
  config.to_json_file(os.path.join(path, "config.json"))
  if vocab_file is not None:
    write_tokenizer_files(path, vocab_file, lowercase, strip_accents, config.max_position_embeddings)
  return path


def write_tokenizer_files(path: str | os.PathLike, vocab_file: str | os.PathLike, lowercase: bool = True,
                          strip_accents: bool | None = None, model_max_length: int = 512) -> None:
  """Adds vocab.txt, tokenizer_config.json and special_tokens_map.json so `transformers.pipeline` needs no code."""
  import shutil  # pylint: disable=import-outside-toplevel
  from electra_jax.data.tokenization import read_vocab  # pylint: disable=import-outside-toplevel
  read_vocab(vocab_file)  # validates: exists, no duplicates, has the special tokens
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  shutil.copyfile(vocab_file, os.path.join(path, "vocab.txt"))
  specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
              "mask_token": "[MASK]"}
  tokenizer_config = {"tokenizer_class": "ElectraTokenizer", "do_lower_case": lowercase,
                      "strip_accents": strip_accents, "tokenize_chinese_chars": True,
                      "model_max_length": model_max_length, **specials}
  for name, content in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", specials)):
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
      json.dump(content, f, indent=2)
      f.write("\n")


def read_tokenizer_settings(path: str | os.PathLike) -> dict[str, Any]:
  """{"vocab_file", "lowercase", "strip_accents"} of an HF folder (BERT defaults where tokenizer_config.json is silent)."""
  path = os.fspath(path)
  vocab = os.path.join(path, "vocab.txt")
  if not os.path.isfile(vocab):
    raise FileNotFoundError(f"{path}: no vocab.txt (export with tokenizer files, or pass a vocab file)")
  settings = {"vocab_file": vocab, "lowercase": True, "strip_accents": None}
  cfg = os.path.join(path, "tokenizer_config.json")
  if os.path.isfile(cfg):
    with open(cfg, encoding="utf-8") as f:
      d = json.load(f)
    settings["lowercase"] = bool(d.get("do_lower_case", True))
    settings["strip_accents"] = d.get("strip_accents")
  return settings
