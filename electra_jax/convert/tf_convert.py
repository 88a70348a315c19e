"""Original TF1 ELECTRA checkpoints -> this project's Orbax workdirs and Hugging Face folders (no TensorFlow needed).

    conv = load_tf_checkpoint("electra_small/")            # every network in it, as our parameters, checked
    tf_to_hf(conv, "hf/", vocab_file="electra_small/vocab.txt")     # hf/discriminator, hf/generator (+ tokenizer)
    tf_to_orbax(conv, "workdir/", continue_pretraining=True)        # train.pretrain resumes; train.finetune inits

The architecture is read from the tensor shapes (vocabulary, embedding, hidden and FFN sizes, layers, positions); the
number of attention heads is not in a checkpoint: it is hidden_size // 64 (at least 1) as the original's
`get_bert_config`, or given. Variable names go through electra_jax/convert/tf_mapping.py; a variable the mapping does
not know, a missing one, or one of another shape is an error naming it, raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any

import numpy as np
from flax import nnx

from electra_jax.convert import (ConversionError, _pure_shapes, params_to_hf, unflatten, write_hf_weights,
                                 write_tokenizer_files)
from electra_jax.convert import tf_mapping as tm
from electra_jax.convert.tf_checkpoint import TFCheckpoint
from electra_jax.modeling import ConfigError, ElectraConfig, ElectraPretrainingModel, head_class


@dataclasses.dataclass
class Network:
  """One network of a TF checkpoint: our head class, its config, and its parameters (flat paths under the head)."""
  kind: str
  config: ElectraConfig
  params: dict[str, np.ndarray]
  rules: list[tm.TFRule]
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  slots: dict[str, dict[str, np.ndarray]] | None = None    # {"adam_m": flat, "adam_v": flat} when asked for


@dataclasses.dataclass
class Converted:
  source: str                    # the checkpoint prefix
  layout: str                    # tf_mapping.LAYOUTS
  global_step: int | None
  networks: dict[str, Network]   # "discriminator" and, with a generator, "generator"


class _Reader:
  """Reads each variable once (shared embeddings, slots) and names the checkpoint in every error."""

  def __init__(self, ckpt: TFCheckpoint):
    self.ckpt = ckpt
    self.cache: dict[str, np.ndarray] = {}

  def has(self, name: str) -> bool:
    return name in self.ckpt.entries

  def shape(self, name: str) -> tuple[int, ...]:
    if name not in self.ckpt.entries:
      raise ConversionError(f"{self.ckpt.prefix}.index: missing variable {name}")
    return self.ckpt.entries[name].shape

  def read(self, name: str) -> np.ndarray:
    if name not in self.cache:
      self.shape(name)
      self.cache[name] = self.ckpt.read(name)
    return self.cache[name]


def _config(r: _Reader, scope: str, embeddings_scope: str, heads: int | None, kind: str) -> ElectraConfig:
  """The architecture of the encoder under `scope`, from its tensor shapes."""
  vocab, emb = r.shape(f"{embeddings_scope}/embeddings/word_embeddings")
  positions = r.shape(f"{embeddings_scope}/embeddings/position_embeddings")[0]
  types = r.shape(f"{embeddings_scope}/embeddings/token_type_embeddings")[0]
  try:
    layers = tm.num_layers(set(r.ckpt.entries), scope)
  except ValueError as e:
    raise ConversionError(f"{r.ckpt.prefix}.index: {e}") from None
  if layers == 0:
    raise ConversionError(f"{r.ckpt.prefix}.index: no {scope}/encoder/layer_0 variables (not an ELECTRA checkpoint?)")
  hidden = r.shape(f"{scope}/encoder/layer_0/attention/self/query/kernel")[-1]
  ffn = r.shape(f"{scope}/encoder/layer_0/intermediate/dense/kernel")[-1]
  has_projection = r.has(f"{scope}/embeddings_project/kernel")
  if has_projection != (emb != hidden):
    raise ConversionError(f"{r.ckpt.prefix}.index: {scope} has embedding size {emb} and hidden size {hidden} but "
                          f"{'a' if has_projection else 'no'} {scope}/embeddings_project")
  heads = heads or max(1, hidden // 64)
  try:
    return ElectraConfig(vocab_size=vocab, embedding_size=emb, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=positions,
                         type_vocab_size=types, architectures=(kind,))
  except ConfigError as e:
    raise ConversionError(f"{r.ckpt.prefix}: {scope}: {e} (set the number of attention heads)") from None


def _gather(r: _Reader, rules: list[tm.TFRule], layers: int, suffix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for rule in rules:
    if rule.per_layer:
      out[rule.jax] = np.stack([r.read(rule.tf.format(i=i) + suffix) for i in range(layers)])
    else:
      out[rule.jax] = r.read(rule.tf + suffix)
  return out


def _expected_shapes(kind: str, config: ElectraConfig, options: dict[str, Any]) -> dict[str, tuple[int, ...]]:
  cls = head_class(kind)
  return _pure_shapes(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), **options)))


def _check_shapes(source: str, net: Network, name: str) -> None:
  """Every parameter of the head is mapped, with the shape the model built from the inferred config has."""
  expected = _expected_shapes(net.kind, net.config, net.options)
  rules = {r.jax: r for r in net.rules}
  for path in sorted(set(expected) | set(net.params)):
    if path not in net.params or path not in expected:
      side = "the mapping" if path not in net.params else "the model"
      raise ConversionError(f"{source}: {name} parameter {path} is missing from {side} (internal mapping error)")
    got, want, rule = tuple(net.params[path].shape), expected[path], rules[path]
    if got != want:
      tf = rule.tf.format(i=0) if rule.per_layer else rule.tf
      got, want = (got[1:], want[1:]) if rule.per_layer else (got, want)
      raise ConversionError(f"{source}.index: variable {tf} has shape {got} but the {name} whose sizes the "
                            f"checkpoint's other variables give expects {want}")


_Plan = dict[str, tuple[str, list[tm.TFRule], str, str, dict]]


def _plan(r: _Reader, layout: str, task: str | None) -> tuple[_Plan, set[str]]:
  """{network: (kind, rules, scope, embeddings scope, options)} and the TF names known but deliberately unused."""
  names = set(r.ckpt.entries)
  plan: _Plan = {}
  unused: set[str] = set()
  disc_body = tm.body_rules("electra", "electra", r.has("electra/embeddings_project/kernel"))
  tasks = tm.task_names(names)
  if tasks:
    if task is None and len(tasks) > 1:
      raise ConversionError(f"{r.ckpt.prefix}.index: fine-tuning heads of several tasks {tasks}; pick one with --task")
    task = task or tasks[0]
    if task not in tasks:
      raise ConversionError(f"{r.ckpt.prefix}.index: no task_specific/{task}/ head (tasks: {tasks})")
    kind = tm.task_head(task)
    head = [tm.TFRule(x.jax, x.tf.format(task=task)) for x in tm.TASK_HEADS[kind]]
    options: dict[str, Any] = {}
    if kind == "OriginalElectraForQuestionAnswering":
      answerable = r.has(f"task_specific/{task}/dense_2/kernel")
      if answerable and not r.has(f"task_specific/{task}/dense_3/kernel"):
        raise ConversionError(f"{r.ckpt.prefix}.index: task_specific/{task} has an answerability classifier without "
                              f"its hidden layer (answerable_uses_start_logits=False), which is not supported")
      options["answerable_classifier"] = answerable
      head = [x for x in head if answerable or not x.jax.startswith("answerable")]
    unused = {n for n in names if n.startswith("task_specific/") and n.split("/")[1] != task}
    plan["discriminator"] = (kind, disc_body + head, "electra", "electra", options)
  elif r.has("discriminator_predictions/dense/kernel"):
    plan["discriminator"] = ("ElectraForPreTraining", disc_body + tm.DISCRIMINATOR_HEAD, "electra", "electra", {})
  else:
    body = [tm.TFRule(x.jax[len("electra/"):], x.tf) for x in disc_body]
    plan["discriminator"] = ("ElectraModel", body, "electra", "electra", {})
  if layout != "discriminator":
    scope = "electra" if layout == "shared" else "generator"
    emb_scope = "generator" if layout == "untied_embeddings" else "electra"
    gen_body = tm.body_rules(scope, emb_scope, r.has(f"{scope}/embeddings_project/kernel"))
    plan["generator"] = ("ElectraForMaskedLM", gen_body + tm.GENERATOR_HEAD, scope, emb_scope, {})
  return plan, unused


def load_tf_checkpoint(path: str | os.PathLike, *, num_attention_heads: int | None = None,
                       generator_num_attention_heads: int | None = None, task: str | None = None,
                       with_slots: bool = False) -> Converted:
  """Reads an original ELECTRA checkpoint into our parameters (every tensor used is checksum-verified).

  with_slots: also read the AdamWeightDecayOptimizer slots (adam_m, adam_v) of every parameter, and global_step.
  Raises ConversionError (one line, naming the file and variable) on anything unexpected.
  """
  ckpt = TFCheckpoint.open(path)
  r = _Reader(ckpt)
  names = set(ckpt.entries)
  layout = tm.detect_layout(names)
  plan, unused = _plan(r, layout, task)

  known = set(unused) | {tm.GLOBAL_STEP}
  for kind, rules, scope, emb_scope, options in plan.values():
    layers = tm.num_layers(names, scope)
    for rule in rules:
      known.update([rule.tf.format(i=i) for i in range(layers)] if rule.per_layer else [rule.tf])
  unknown = sorted(n for n in names - known if not (tm.is_slot(n) and n.rsplit("/", 1)[0] in known))
  if unknown:
    more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
    raise ConversionError(f"{ckpt.prefix}.index: variable {unknown[0]} is not known to the ELECTRA mapping "
                          f"(generator layout {layout!r}){more}")
  ckpt.check_files()

  networks = {}
  for name, (kind, rules, scope, emb_scope, options) in plan.items():
    heads = num_attention_heads
    if name == "generator" and layout != "shared":   # the shared layout's generator is the discriminator's network
      heads = generator_num_attention_heads
    config = _config(r, scope, emb_scope, heads, kind)
    classifier = [x.tf for x in rules if x.jax == "classifier/kernel"]
    if classifier:   # a fine-tuned classification or tagging head: its labels
      config = config.replace(num_labels=int(r.shape(classifier[0])[-1]))
    net = Network(kind, config, _gather(r, rules, config.num_hidden_layers), rules, options)
    _check_shapes(ckpt.prefix, net, name)
    if with_slots:
      net.slots = {}
      for suffix in tm.SLOT_SUFFIXES:
        missing = [x.tf.format(i=0) + suffix for x in rules if not r.has(x.tf.format(i=0) + suffix)]
        if missing:
          raise ConversionError(f"{ckpt.prefix}.index: no optimizer slot {missing[0]} (continuing pretraining needs "
                                f"the adam_m/adam_v of every variable)")
        net.slots[suffix[1:]] = {k: v.astype(np.float32) for k, v in
                                 _gather(r, rules, config.num_hidden_layers, suffix).items()}
    networks[name] = net
  step = int(r.read(tm.GLOBAL_STEP)) if r.has(tm.GLOBAL_STEP) else None
  if with_slots and step is None:
    raise ConversionError(f"{ckpt.prefix}.index: no global_step variable (continuing pretraining needs it)")
  return Converted(source=ckpt.prefix, layout=layout, global_step=step, networks=networks)


# ------------------------------------------------------------------------------------------------ writers
def _tokenizer_settings(conv: Converted, vocab_file: str | None, lowercase: bool, strip_accents: bool | None
                        ) -> dict[str, Any] | None:
  """{"vocab_file", "lowercase", "strip_accents"} as HF's BERT tokenizer reads them, or None without a vocab.

  The original lower-cases (do_lower_case) and then strips accents (strip_accents, default True) only when it
  lower-cases; HF strips accents whenever strip_accents is True, so it is written False for a cased vocabulary.
  """
  if vocab_file is None:
    beside = os.path.join(os.path.dirname(conv.source), "vocab.txt")
    if not os.path.isfile(beside):
      return None
    vocab_file = beside
  if not os.path.isfile(vocab_file):
    raise FileNotFoundError(f"vocab file {vocab_file} does not exist")
  with open(vocab_file, encoding="utf-8") as f:
    size = sum(1 for line in f if line.rstrip("\n"))
  rows = conv.networks["discriminator"].config.vocab_size
  if size != rows:
    raise ConversionError(f"{vocab_file}: {size} tokens, but {conv.source} has word embeddings for {rows}")
  strip = (True if strip_accents is None else strip_accents) if lowercase else False
  return {"vocab_file": os.path.abspath(vocab_file), "lowercase": bool(lowercase), "strip_accents": strip}


def _fresh_dir(out: str) -> str:
  """A temporary sibling of `out` to write into (renamed to `out` when complete); `out` must not hold anything."""
  out = os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConversionError(f"{out} already exists and is not empty; choose a new --out")
  tmp = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  return tmp


def _finish(tmp: str, out: str) -> str:
  out = os.path.abspath(out)
  if os.path.isdir(out):
    os.rmdir(out)   # empty (checked by _fresh_dir)
  os.rename(tmp, out)
  return out


def tf_to_hf(conv: Converted, out: str, *, vocab_file: str | None = None, lowercase: bool = True,
             strip_accents: bool | None = None, dtype: str | None = None) -> dict[str, str]:
  """Writes OUT/discriminator (and OUT/generator) as HF folders; with a vocab, with tokenizer files too."""
  tokenizer = _tokenizer_settings(conv, vocab_file, lowercase, strip_accents)
  if tokenizer is None:
    logging.warning("no vocab file given and none beside the checkpoint: the HF folders have no tokenizer files")
  hf_parts = {}
  for name, net in conv.networks.items():
    kind, params = net.kind, net.params
    if kind.startswith("Original"):
      logging.warning("%s: the original %s head has no Hugging Face equivalent; writing the encoder alone "
                      "(ElectraModel)", name, kind)
      kind = "ElectraModel"
      params = {k[len("electra/"):]: v for k, v in params.items() if k.startswith("electra/")}
    tensors = params_to_hf(kind, unflatten(params))
    if dtype is not None:
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
      tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
    hf_parts[name] = (kind, net.config.replace(architectures=(kind,)), tensors)
  tmp = _fresh_dir(out)
  try:
    for name, (kind, config, tensors) in hf_parts.items():
      folder = os.path.join(tmp, name)
      write_hf_weights(tensors, folder)
      config.to_json_file(os.path.join(folder, "config.json"))
      if tokenizer is not None:
        write_tokenizer_files(folder, tokenizer["vocab_file"], tokenizer["lowercase"], tokenizer["strip_accents"],
                              config.max_position_embeddings)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  out = _finish(tmp, out)
  return {name: os.path.join(out, name) for name in hf_parts}


def optimizer_state(mu: Any, nu: Any, count: int) -> tuple:
  """The optimizer state of the pretraining AdamW (electra_jax.train.optim.adamw with clipping, weight decay and a
  schedule), built from optax's public state classes: (clip, Adam moments, masked weight decay, schedule count).

  Orbax restores by key path, so these restore into the trainer's own classes (optim.AdamState has the fields of
  optax.ScaleByAdamState). tests/test_tf_convert.py checks the tree against `optim.create`'s.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  c = jnp.asarray(count, jnp.int32)
  return (optax.EmptyState(), optax.ScaleByAdamState(count=c, mu=mu, nu=nu),
          optax.MaskedState(inner_state=optax.EmptyState()), optax.ScaleByScheduleState(count=c))


PRETRAINING_LAYOUTS = ("separate", "shared")


def pretraining_tree(conv: Converted, which: str | None = None) -> dict[str, Any]:
  """The joint model's parameter tree (or, with which="adam_m"/"adam_v", that slot's tree); what the networks share
  (the embeddings, or in the shared layout the whole encoder) is stored once, under the discriminator."""
  if conv.layout not in PRETRAINING_LAYOUTS:
    raise ConversionError(f"{conv.source}: generator layout {conv.layout!r} is not one of our pretraining model's "
                          f"{PRETRAINING_LAYOUTS}")
  shared = "electra/" if conv.layout == "shared" else "electra/embeddings/"
  parts = {}
  for name, net in conv.networks.items():
    flat = net.params if which is None else net.slots[which]
    if name == "generator":
      flat = {k: v for k, v in flat.items() if not k.startswith(shared)}
    parts[name] = unflatten(dict(flat))
  return parts


def tf_to_orbax(conv: Converted, out: str, *, continue_pretraining: bool = False, vocab_file: str | None = None,
                lowercase: bool = True, strip_accents: bool | None = None) -> str:
  """Writes OUT/checkpoints/<step> for our trainers.

  A pretraining checkpoint (generator layout "separate", or "shared": config.generator.weight_sharing=all) becomes a full
  pretraining state {params, opt_state, train_meta} that train.pretrain resumes: at global_step with the original's
  Adam moments (continue_pretraining), or at step 0 with zero moments. Other checkpoints (a discriminator alone, a
  fine-tuned head, or a generator with embeddings of its own, of which the discriminator is kept) become a params-only
  checkpoint of that head, which train.finetune initialises from.
  """
  tokenizer = _tokenizer_settings(conv, vocab_file, lowercase, strip_accents)
  disc = conv.networks["discriminator"]
  if conv.layout in PRETRAINING_LAYOUTS:
    params = pretraining_tree(conv)
    share = conv.layout == "shared"
    abstract = nnx.eval_shape(lambda: ElectraPretrainingModel(disc.config, conv.networks["generator"].config,
                                                              rngs=nnx.Rngs(0),
                                                              weight_sharing="all" if share else "embeddings"))
    _, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)   # raises if the structure differs
    step = conv.global_step if continue_pretraining else 0
    if continue_pretraining:
      mu, nu = pretraining_tree(conv, "adam_m"), pretraining_tree(conv, "adam_v")
    else:
      mu = nu = _zeros_like(params)
    opt_state = optimizer_state(mu, nu, step)
    meta = _pretraining_meta(disc.config, conv.networks["generator"].config, tokenizer, share)
    train_meta = {"converted_from": conv.source, "global_step": conv.global_step}
    return _write_checkpoint(out, meta, params, opt_state, train_meta, step)
  if continue_pretraining:
    raise ConversionError(f"{conv.source}: --continue_pretraining needs a pretraining checkpoint of generator layout "
                          f"{' or '.join(PRETRAINING_LAYOUTS)}; this one's layout is {conv.layout!r}")
  if conv.layout != "discriminator":
    logging.warning("%s: generator layout %r is not our pretraining model's; writing the discriminator alone (for "
                    "fine-tuning); use tf_to_hf for the generator", conv.source, conv.layout)
  meta = {"kind": disc.kind, "config": disc.config.to_hf_dict()}
  if disc.options:
    meta["head_options"] = dict(disc.options)
  if tokenizer is not None:
    meta["tokenizer"] = tokenizer
  return _write_checkpoint(out, meta, unflatten(dict(disc.params)), None, None, 0)


def _zeros_like(tree: Any) -> Any:
  return {k: _zeros_like(v) if isinstance(v, dict) else np.zeros(v.shape, np.float32) for k, v in tree.items()}


def _pretraining_meta(disc: ElectraConfig, gen: ElectraConfig, tokenizer: dict[str, Any] | None,
                      share_encoder: bool) -> dict[str, Any]:
  """checkpointing.pretraining_meta's dict (built here so that this module imports the trainers' code in one place)."""
  meta = {"kind": "pretraining", "discriminator": disc.to_hf_dict(), "generator": gen.to_hf_dict()}
  if share_encoder:   # the original's untied_generator=False: ElectraPretrainingModel(weight_sharing="all")
    meta["options"] = {"weight_sharing": "all", "discriminator_head": "rtd", "generator_kind": "mlm"}
  if tokenizer is not None:
    meta["tokenizer"] = tokenizer
  return meta


def _write_checkpoint(out: str, meta: dict[str, Any], params: Any, opt_state: Any, train_meta: dict | None,
                      step: int) -> str:
  """The one place that writes Orbax (through the project's checkpointing module), into a fresh directory."""
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  checkpointing.quiet_orbax_logging()
  tmp = _fresh_dir(out)
  try:
    directory = os.path.join(tmp, checkpointing.CHECKPOINTS_SUBDIR)
    if opt_state is None:
      checkpointing.save_params(directory, meta, params, step=step)
    else:
      ckpt = checkpointing.Checkpointer(directory, keep=None, model_meta=meta, async_save=False,
                                        handle_sigterm=False)
      try:
        ckpt.save(step, params, opt_state, train_meta or {})
      finally:
        ckpt.close()
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return _finish(tmp, out)


def resume_flags(conv: Converted) -> list[str]:
  """configs/pretrain.py overrides under which train.pretrain builds the model of a converted checkpoint."""
  d, g = conv.networks["discriminator"].config, conv.networks["generator"].config
  generator = ([f"--config.generator.hidden_fraction={g.hidden_size / d.hidden_size:.6g}",
                f"--config.generator.layers_fraction={g.num_hidden_layers / d.num_hidden_layers:.6g}"]
               if conv.layout == "separate" else ["--config.generator.hidden_fraction=1",
                                                  "--config.generator.layers_fraction=1",
                                                  "--config.generator.weight_sharing=all"])
  flags = [f"--config.model.embedding_size={d.embedding_size}", f"--config.model.hidden_size={d.hidden_size}",
           f"--config.model.num_hidden_layers={d.num_hidden_layers}",
           f"--config.model.num_attention_heads={d.num_attention_heads}",
           f"--config.model.intermediate_size={d.intermediate_size}",
           f"--config.model.max_position_embeddings={d.max_position_embeddings}", *generator]
  return flags


def build_module(net: Network) -> nnx.Module:
  """The nnx module of one converted network, with its parameters (for inference: dropout is off by default)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  cls = head_class(net.kind)
  abstract = nnx.eval_shape(lambda: cls(net.config, rngs=nnx.Rngs(0), **net.options))
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, unflatten({k: jnp.asarray(v) for k, v in net.params.items()}))
  return nnx.merge(graphdef, state)
