"""Every head against transformers' PyTorch ELECTRA: outputs, losses, round trip, parameter counts, padding, meshes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from electra_jax import sharding
from electra_jax.convert import from_hf, to_hf
from electra_jax.modeling import (ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining, ElectraModel,
                                  count_params)

HEADS = ["ElectraModel", "ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForCausalLM",
         "ElectraForSequenceClassification", "ElectraForMultipleChoice", "ElectraForTokenClassification",
         "ElectraForQuestionAnswering"]

# embedding_size != hidden_size (factorised, with embeddings_project) and == (no projection).
CONFIGS = {
    "factorized": dict(vocab_size=113, embedding_size=24, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=61, max_position_embeddings=40, num_labels=3),
    "square": dict(vocab_size=97, embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=50, max_position_embeddings=40, num_labels=2, hidden_act="gelu_new"),
}


def _hf_model(head, cfg_kw, tmp_path, **extra):
  torch.manual_seed(0)
  cfg = transformers.ElectraConfig(**cfg_kw, **extra)
  model = getattr(transformers, head)(cfg).eval()
  with torch.no_grad():  # HF inits LayerNorm to 1/0 and biases to 0: randomise so the test sees every tensor
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  path = tmp_path / head
  model.save_pretrained(path)
  return model, path


def _inputs(head, vocab, seed=0):
  rs = np.random.RandomState(seed)
  ids = rs.randint(1, vocab, (3, 11))
  types = np.zeros_like(ids)
  types[:, 6:] = 1
  mask = np.ones_like(ids)
  mask[1, 7:] = 0   # padding
  mask[2, 4:] = 0
  ids = np.where(mask == 1, ids, 0)
  if head == "ElectraForMultipleChoice":
    ids, types, mask = (np.stack([x, np.roll(x, 1, axis=0)], axis=1) for x in (ids, types, mask))
  return ids, types, mask


def _main_outputs(head, out, torch_out=False):
  if head == "ElectraModel":
    outs = [out.last_hidden_state]
  elif head == "ElectraForQuestionAnswering":
    outs = [out.start_logits, out.end_logits]
  else:
    outs = [out.logits]
  return [o.detach().numpy() if torch_out else np.asarray(o) for o in outs]


@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_outputs_equal_transformers(head, cfg_name, tmp_path):
  extra = {"is_decoder": True} if head == "ElectraForCausalLM" else {}
  cfg = dict(CONFIGS[cfg_name], num_labels=2) if head == "ElectraForQuestionAnswering" else CONFIGS[cfg_name]
  hf, path = _hf_model(head, cfg, tmp_path, **extra)
  ours = from_hf(path)
  assert type(ours).__name__ == head
  ids, types, mask = _inputs(head, CONFIGS[cfg_name]["vocab_size"])
  with torch.no_grad():
    want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
  got = ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types))
  for w, g in zip(_main_outputs(head, want, True), _main_outputs(head, got)):
    if head in ("ElectraModel", "ElectraForPreTraining", "ElectraForTokenClassification",
                "ElectraForQuestionAnswering", "ElectraForMaskedLM", "ElectraForCausalLM"):
      real = mask.astype(bool)   # HF computes garbage-but-finite values at padded queries; compare real tokens
      w, g = w[real], g[real]
    assert g.shape == w.shape
    np.testing.assert_array_less(np.abs(g - w).max(), 1e-4)


@pytest.mark.parametrize("head,labels", [
    ("ElectraForPreTraining", "binary"), ("ElectraForMaskedLM", "tokens"), ("ElectraForCausalLM", "tokens"),
    ("ElectraForSequenceClassification", "class"), ("ElectraForSequenceClassification", "multi"),
    ("ElectraForMultipleChoice", "choice"), ("ElectraForTokenClassification", "token_class"),
])
def test_losses_equal_transformers(head, labels, tmp_path):
  cfg = CONFIGS["factorized"]
  extra = {"is_decoder": True} if head == "ElectraForCausalLM" else {}
  hf, path = _hf_model(head, cfg, tmp_path, **extra)
  ours = from_hf(path)
  ids, types, mask = _inputs(head, cfg["vocab_size"])
  rs = np.random.RandomState(1)
  y = {"binary": lambda: rs.randint(0, 2, ids.shape),
       "tokens": lambda: np.where(mask == 1, rs.randint(0, cfg["vocab_size"], ids.shape), -100),
       "class": lambda: rs.randint(0, cfg["num_labels"], (ids.shape[0],)),
       "multi": lambda: rs.randint(0, 2, (ids.shape[0], cfg["num_labels"])).astype(np.float32),
       "choice": lambda: rs.randint(0, ids.shape[1], (ids.shape[0],)),
       "token_class": lambda: np.where(mask == 1, rs.randint(0, cfg["num_labels"], ids.shape), -100)}[labels]()
  with torch.no_grad():
    want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types),
              labels=torch.tensor(y)).loss.item()
  got = ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types),
             labels=jnp.asarray(y)).loss
  assert abs(float(got) - want) < 1e-5


def _gradients_and_torch_model(head, labels, tmp_path):
  """Our parameter gradients of `head`'s loss (a nested dict) and the torch model after its loss.backward()."""
  cfg = CONFIGS["factorized"]
  hf, path = _hf_model(head, cfg, tmp_path)
  ours = from_hf(path)
  ids, types, mask = _inputs("x", cfg["vocab_size"])
  y = labels(mask)
  hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types),
     labels=torch.tensor(y)).loss.backward()
  graphdef, params = nnx.split(ours, nnx.Param)

  def loss(p):
    return nnx.merge(graphdef, p)(jnp.asarray(ids), attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types),
                                  labels=jnp.asarray(y)).loss

  return nnx.to_pure_dict(jax.grad(loss)(params)), hf


def _assert_gradients_close(pairs):
  for got, want in pairs:
    want = want.numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6 * np.abs(want).max() + 1e-8, rtol=1e-4)


@pytest.mark.slow
def test_masked_lm_gradients_equal_transformers(tmp_path):
  """The tied LM head's hand-written backward (xla_cpu.tied_logits): table, bias and the layers below, against torch."""
  vocab = CONFIGS["factorized"]["vocab_size"]

  def labels(mask):
    return np.where(mask == 1, np.random.RandomState(2).randint(0, vocab, mask.shape), -100)

  g, hf = _gradients_and_torch_model("ElectraForMaskedLM", labels, tmp_path)
  _assert_gradients_close([
      (g["electra"]["embeddings"]["word_embeddings"], hf.electra.embeddings.word_embeddings.weight.grad),
      (g["generator_lm_head"]["bias"], hf.generator_lm_head.bias.grad),
      (g["generator_predictions"]["dense"]["kernel"], hf.generator_predictions.dense.weight.grad.T),
      (g["electra"]["encoder"]["layers"]["intermediate"]["kernel"][0],
       hf.electra.encoder.layer[0].intermediate.dense.weight.grad.T)])


def test_gelu_is_torchs_exact_gelu():
  from electra_jax.modeling.layers import activation  # pylint: disable=import-outside-toplevel
  x = np.concatenate([np.linspace(-12, 12, 48001, dtype=np.float32),
                      np.random.RandomState(0).standard_normal(20000).astype(np.float32) * 3])
  gelu = activation("gelu")
  tx = torch.tensor(x, requires_grad=True)
  want = torch.nn.functional.gelu(tx)
  want.sum().backward()
  np.testing.assert_allclose(np.asarray(jax.jit(gelu)(x)), want.detach().numpy(), atol=2e-6, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(lambda v: gelu(v).sum()))(x)), tx.grad.numpy(), atol=2e-6)
  np.testing.assert_array_equal(np.asarray(gelu(x[x < -10])), 0.0)   # the tail select changes no value
  assert gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


def test_regression_and_qa_losses(tmp_path):
  cfg = dict(CONFIGS["square"], num_labels=1)
  hf, path = _hf_model("ElectraForSequenceClassification", cfg, tmp_path)
  ours = from_hf(path)
  ids, types, mask = _inputs("x", cfg["vocab_size"])
  y = np.array([0.5, 3.2, 1.0], np.float32)
  with torch.no_grad():
    want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(y)).loss.item()
  assert abs(float(ours(ids, attention_mask=mask, labels=y).loss) - want) < 1e-5

  hf, path = _hf_model("ElectraForQuestionAnswering", CONFIGS["square"], tmp_path)
  ours = from_hf(path)
  s, e = np.array([1, 40, 3]), np.array([2, 5, 60])   # positions beyond the input are ignored, as in HF
  with torch.no_grad():
    want = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), start_positions=torch.tensor(s),
              end_positions=torch.tensor(e)).loss.item()
  got = ours(ids, attention_mask=mask, start_positions=s, end_positions=e).loss
  assert abs(float(got) - want) < 1e-5


@pytest.mark.parametrize("head", HEADS)
def test_round_trip_is_bit_exact(head, tmp_path):
  _, path = _hf_model(head, dict(CONFIGS["factorized"], num_labels=2), tmp_path)
  out = tmp_path / "out"
  to_hf(from_hf(path), out)
  a, b = load_file(path / "model.safetensors"), load_file(out / "model.safetensors")
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  loaded, info = getattr(transformers, head).from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  cfg_in, cfg_out = json.loads((path / "config.json").read_text()), json.loads((out / "config.json").read_text())
  for key in CONFIGS["factorized"]:
    if key != "num_labels":
      assert cfg_in[key] == cfg_out[key]


def test_parameter_counts_equal_hugging_face():
  small = ElectraConfig()  # HF defaults = ELECTRA-Small discriminator
  count = lambda cls: count_params(nnx.eval_shape(lambda: cls(small, rngs=nnx.Rngs(0))))  # noqa: E731
  assert count(ElectraModel) == 13_483_008
  assert count(ElectraForPreTraining) == 13_549_057
  assert count(ElectraForMaskedLM) == 13_546_682
  base = small.replace(embedding_size=768, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
  assert count_params(nnx.eval_shape(lambda: ElectraModel(base, rngs=nnx.Rngs(0)))) == 108_891_648


@pytest.mark.slow
def test_padding_does_not_change_real_tokens():
  cfg = ElectraConfig(**CONFIGS["factorized"])
  model = ElectraForPreTraining(cfg, rngs=nnx.Rngs(0))
  ids, types, mask = _inputs("x", cfg.vocab_size)
  short = model(ids, attention_mask=mask, token_type_ids=types).logits
  pad = lambda x: np.pad(x, ((0, 0), (0, 9)))  # noqa: E731
  long = model(pad(ids), attention_mask=pad(mask), token_type_ids=pad(types)).logits
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(long)[:, :11][real], np.asarray(short)[real], atol=1e-5)


@pytest.mark.slow
def test_scan_and_remat_equal_the_loop():
  cfg = ElectraConfig(**CONFIGS["factorized"])
  ids, types, mask = _inputs("x", cfg.vocab_size)
  base = ElectraForPreTraining(cfg, rngs=nnx.Rngs(0))
  want = base(ids, attention_mask=mask, token_type_ids=types).logits
  for variant in (dict(scan_layers=True), dict(scan_layers=True, remat_policy="full"), dict(remat_policy="dots")):
    other = ElectraForPreTraining(cfg.replace(**variant), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(other(ids, attention_mask=mask, token_type_ids=types).logits, want, atol=1e-6)


@pytest.mark.parametrize("variant", [{}, dict(scan_layers=True), dict(scan_layers=True, remat_policy="full"),
                                     dict(remat_policy="dots"), dict(is_decoder=True)])
@pytest.mark.slow
def test_last_layer_at_the_first_positions_equals_the_full_layer(variant):
  # ElectraModel.encode(last_layer_positions=n), as the [CLS] heads call it: the last layer at the first n positions
  # only, with the same values and parameter gradients as the full model's first n positions (causal masks included).
  # ElectraModel itself keeps transformers' contract: last_hidden_state [B, L, H], no such option.
  cfg = ElectraConfig(**CONFIGS["factorized"]).replace(**variant)
  model = ElectraModel(cfg, rngs=nnx.Rngs(0))
  ids, types, mask = _inputs("x", cfg.vocab_size)
  graphdef, params = nnx.split(model, nnx.Param)
  cot = jax.random.normal(jax.random.key(3), (3, 2, cfg.hidden_size))

  def run(p, n):
    m = nnx.merge(graphdef, p)
    if n is None:
      return m(ids, attention_mask=mask, token_type_ids=types).last_hidden_state[:, :2]
    return m.encode(ids, attention_mask=mask, token_type_ids=types, last_layer_positions=n)

  full, pruned = run(params, None), run(params, 2)
  with pytest.raises(TypeError):
    model(ids, attention_mask=mask, token_type_ids=types, last_layer_positions=2)
  assert pruned.shape == (3, 2, cfg.hidden_size)
  np.testing.assert_allclose(pruned, full, atol=1e-6)
  grads = [jax.tree.leaves(jax.grad(lambda p, n=n: jnp.sum(run(p, n) * cot))(params)) for n in (None, 2)]
  for want, got in zip(*grads):
    np.testing.assert_allclose(got, want, atol=2e-6 * float(jnp.abs(want).max()) + 1e-9)


@pytest.mark.slow
def test_sequence_classification_gradients_equal_transformers(tmp_path):
  """The [CLS] head's last layer runs at [CLS] alone; every parameter's gradient still equals torch's."""
  g, hf = _gradients_and_torch_model("ElectraForSequenceClassification", lambda mask: np.array([0, 2, 1]), tmp_path)
  layers = g["electra"]["encoder"]["layers"]
  last = CONFIGS["factorized"]["num_hidden_layers"] - 1
  hf_last = hf.electra.encoder.layer[last]
  _assert_gradients_close([
      (g["electra"]["embeddings"]["word_embeddings"], hf.electra.embeddings.word_embeddings.weight.grad),
      (g["classifier"]["dense"]["kernel"], hf.classifier.dense.weight.grad.T),
      (layers["query"]["kernel"][last], hf_last.attention.self.query.weight.grad.T),
      (layers["key"]["kernel"][last], hf_last.attention.self.key.weight.grad.T),
      (layers["output"]["kernel"][last], hf_last.output.dense.weight.grad.T),
      (layers["output_norm"]["scale"][last], hf_last.output.LayerNorm.weight.grad),
      (layers["intermediate"]["kernel"][0], hf.electra.encoder.layer[0].intermediate.dense.weight.grad.T)])


@pytest.mark.slow
def test_bfloat16_compute_stays_close():
  cfg = ElectraConfig(**CONFIGS["factorized"])
  ids, types, mask = _inputs("x", cfg.vocab_size)
  f32 = ElectraForPreTraining(cfg, rngs=nnx.Rngs(0))(ids, attention_mask=mask).logits
  bf16_model = ElectraForPreTraining(cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
  bf16 = bf16_model(ids, attention_mask=mask).logits
  assert bf16.dtype == jnp.float32   # logits come back in float32
  assert jax.tree.leaves(nnx.state(bf16_model, nnx.Param))[0].dtype == jnp.float32   # params stay float32
  np.testing.assert_allclose(bf16, f32, atol=0.05)


@pytest.mark.slow
def test_sharded_forward_equals_single_device(tmp_path):
  assert jax.device_count() == 8
  _, path = _hf_model("ElectraForMaskedLM", dict(CONFIGS["factorized"], vocab_size=128, intermediate_size=64), tmp_path)
  single = from_hf(path)
  ids, types, mask = _inputs("x", 128)
  ids, types, mask = (np.concatenate([x, x[::-1], x, x[::-1]])[:8] for x in (ids, types, mask))
  want = single(ids, attention_mask=mask, token_type_ids=types).logits

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = from_hf(path, mesh=mesh)
  kernel = model.electra.encoder.layers.intermediate.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, ids, mask, types):
    return nnx.merge(graphdef, state)(ids, attention_mask=mask, token_type_ids=types).logits

  batch = [jax.device_put(x, sharding.batch_sharding(mesh)) for x in (ids, mask, types)]
  with jax.set_mesh(mesh):
    got = forward(state, *batch)
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)

  # State can also be born sharded from abstract shapes, with no single-device copy.
  born = sharding.create_sharded_model(lambda: ElectraForPreTraining(ElectraConfig(**dict(CONFIGS["square"], vocab_size=128)),
                                                                     rngs=nnx.Rngs(0)), mesh)
  emb = born.electra.embeddings.word_embeddings[...]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
