"""Bad configs, bad checkpoints and uncovered sharding names give errors that name the culprit."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from electra_jax import sharding
from electra_jax.convert import ConversionError, from_hf, to_hf
from electra_jax.modeling import ConfigError, ElectraConfig, ElectraForPreTraining

TINY = dict(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=20, max_position_embeddings=16)


@pytest.fixture
def hf_dir(tmp_path):
  torch.manual_seed(0)
  transformers.ElectraForPreTraining(transformers.ElectraConfig(**TINY)).save_pretrained(tmp_path / "disc")
  return tmp_path / "disc"


@pytest.mark.parametrize("field,value,pattern", [
    ("hidden_size", 30, r"hidden_size=30.*divisible by num_attention_heads=4"),
    ("hidden_act", "mish", r"hidden_act='mish'"),
    ("hidden_dropout_prob", 1.5, r"hidden_dropout_prob=1.5.*\[0, 1\)"),
    ("vocab_size", 0, r"vocab_size=0.*positive"),
    ("position_embedding_type", "relative_key", r"position_embedding_type"),
    ("dtype", "float64", r"dtype='float64'"),
    ("remat_policy", "sometimes", r"remat_policy"),
])
def test_config_validation_names_the_field(field, value, pattern):
  with pytest.raises(ConfigError, match=pattern):
    ElectraConfig(**{field: value})


def test_config_json_errors_name_the_file(tmp_path):
  bad = tmp_path / "config.json"
  bad.write_text(json.dumps({"model_type": "electra", "hidden_size": 30, "num_attention_heads": 4}))
  with pytest.raises(ConfigError, match=r"hidden_size=30.*config.json"):
    ElectraConfig.from_json_file(bad)
  bad.write_text("{not json")
  with pytest.raises(ConfigError, match=r"config.json: not valid JSON"):
    ElectraConfig.from_json_file(bad)
  bad.write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ConfigError, match="not an ELECTRA config"):
    ElectraConfig.from_json_file(bad)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    from_hf(tmp_path / "nowhere")


def test_config_round_trips_through_hf_json(tmp_path):
  cfg = ElectraConfig(**TINY, id2label={0: "neg", 1: "pos"}, problem_type="single_label_classification")
  cfg.to_json_file(tmp_path / "config.json")
  hf = transformers.ElectraConfig.from_pretrained(tmp_path)
  assert hf.id2label == {0: "neg", 1: "pos"} and hf.hidden_size == 16 and hf.problem_type == cfg.problem_type
  assert ElectraConfig.from_json_file(tmp_path / "config.json") == cfg


def _rewrite(path, edit):
  tensors = load_file(path / "model.safetensors")
  edit(tensors)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_mis_shaped_key_names_key_and_both_shapes(hf_dir):
  def edit(t):
    t["electra.encoder.layer.1.intermediate.dense.weight"] = np.zeros((21, 16), np.float32)
  _rewrite(hf_dir, edit)
  with pytest.raises(ConversionError, match=r"electra.encoder.layer.1.intermediate.dense.weight has shape \(21, 16\)"
                                           r".*expects \(20, 16\)"):
    from_hf(hf_dir)


def test_missing_key_is_named(hf_dir):
  _rewrite(hf_dir, lambda t: t.pop("electra.encoder.layer.0.attention.self.key.bias"))
  with pytest.raises(ConversionError, match=r"missing key electra.encoder.layer.0.attention.self.key.bias"):
    from_hf(hf_dir)


def test_unexpected_key_is_named(hf_dir):
  _rewrite(hf_dir, lambda t: t.update({"electra.encoder.layer.2.output.dense.bias": np.zeros(16, np.float32)}))
  with pytest.raises(ConversionError, match=r"unexpected key.*electra.encoder.layer.2.output.dense.bias"):
    from_hf(hf_dir)


def test_unknown_head_and_wrong_head(hf_dir):
  with pytest.raises(ValueError, match="unknown ELECTRA head 'ElectraForPony'"):
    from_hf(hf_dir, head="ElectraForPony")
  # A discriminator checkpoint lacks a QA head: an error for inference ...
  with pytest.raises(ConversionError, match="missing key qa_outputs.weight"):
    from_hf(hf_dir, head="ElectraForQuestionAnswering")
  # ... and a fresh head for fine-tuning, keeping the encoder and dropping the discriminator head.
  qa = from_hf(hf_dir, head="ElectraForQuestionAnswering", new_head_ok=True)
  disc = from_hf(hf_dir)
  np.testing.assert_array_equal(qa.electra.encoder.layers.query.kernel[...],
                                disc.electra.encoder.layers.query.kernel[...])


def test_base_model_checkpoint_loads_into_a_head(tmp_path):
  torch.manual_seed(0)
  transformers.ElectraModel(transformers.ElectraConfig(**TINY)).save_pretrained(tmp_path / "base")
  model = from_hf(tmp_path / "base", head="ElectraForSequenceClassification", new_head_ok=True)
  assert model.classifier.out_proj.kernel[...].shape == (16, 2)


def test_untied_lm_head_round_trips(tmp_path):
  torch.manual_seed(0)
  hf = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**TINY, tie_word_embeddings=False))
  hf.save_pretrained(tmp_path / "gen")
  model = from_hf(tmp_path / "gen")
  assert model.generator_lm_head.kernel[...].shape == (8, 50)
  to_hf(model, tmp_path / "out")
  a, b = load_file(tmp_path / "gen/model.safetensors"), load_file(tmp_path / "out/model.safetensors")
  assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_uncovered_logical_axis_raises():
  model = ElectraForPreTraining(ElectraConfig(**TINY), rngs=nnx.Rngs(0))
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = [r for r in sharding.DEFAULT_RULES if r[0] != "mlp"]
  with pytest.raises(sharding.ShardingError, match=r"(kernel|bias): logical axis 'mlp' is not covered"):
    sharding.logical_to_sharding(nnx.state(model), mesh, rules)


def test_parameter_without_axes_raises():
  class Bare(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jax.numpy.zeros(3))
  with pytest.raises(sharding.ShardingError, match="w carries no logical axis names"):
    sharding.logical_to_sharding(nnx.state(Bare()), sharding.make_mesh(), None)


def test_bad_mesh_shapes():
  with pytest.raises(sharding.ShardingError, match="needs 12 devices, 8 are available"):
    sharding.make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
  with pytest.raises(sharding.ShardingError, match="unknown mesh axes"):
    sharding.make_mesh({"model": 2})
  assert sharding.make_mesh({"data": -1, "tensor": 2}).shape == {"data": 4, "fsdp": 1, "tensor": 2}
