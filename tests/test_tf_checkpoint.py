"""The TF checkpoint reader and the original-name mapping, on tiny checkpoints written by TensorFlow itself.

Fixtures: tests/fixtures/tf_checkpoints/{separate,shared,finetuned} (tests/fixtures/make_tf_checkpoints.py), each with
reference.npz: logits of the original forward computed in TensorFlow on the same weights.
"""

import os
import shutil
import struct

import numpy as np
import pytest

from electra_jax.convert import ConversionError, tf_convert
from electra_jax.convert import tf_mapping as tm
from electra_jax.convert.tf_checkpoint import (TFCheckpoint, TFCheckpointError, _raw_scalar, _varint, crc32c,
                                               mask_crc, resolve_prefix)
from tests.fixtures import make_tf_checkpoints as fx
from tests.tf_bundle import write_bundle

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tf_checkpoints")
PREFIX = f"model.ckpt-{fx.STEP}"
DATA = f"{PREFIX}.data-00000-of-00001"


def fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def copy(name: str, tmp_path) -> str:
  dst = tmp_path / name
  shutil.copytree(fixture(name), dst)
  return os.fspath(dst)


def load(name: str, **kw) -> tf_convert.Converted:
  return tf_convert.load_tf_checkpoint(fixture(name), num_attention_heads=2, **kw)


# ------------------------------------------------------------------------------------------------ CRC-32C
def test_crc32c_known_value_and_lanes_agree_with_the_byte_loop():
  assert crc32c(b"123456789") == 0xE3069283          # the CRC-32C check value
  assert crc32c(b"") == 0
  rng = np.random.default_rng(0)
  for n in (1, 4096, 4097, 70_001, 300_000):          # the scalar path, and the lane path with a zero-padded front
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == _raw_scalar(0xFFFFFFFF, data) ^ 0xFFFFFFFF, n
  assert mask_crc(0) == 0xA282EAD8


# ------------------------------------------------------------------------------------------------ the reader
def test_entries_dtypes_shapes_and_checksums_of_a_tensorflow_checkpoint():
  ckpt = TFCheckpoint.open(fixture("separate"))
  assert ckpt.header == {"num_shards": 1, "endianness": 0}
  weights = fx.make_params("separate").values
  expected = set(weights) | {f"{k}{s}" for k in weights for s in tm.SLOT_SUFFIXES} | {"global_step"}
  assert set(ckpt.entries) == expected           # every key back from the prefix-compressed blocks
  e = ckpt.entries["generator/embeddings_project/kernel"]
  assert (e.dtype, e.shape, e.shard_id, e.size) == (1, (24, 16), 0, 24 * 16 * 4)
  assert ckpt.entries["global_step"].dtype == 9 and ckpt.read("global_step") == fx.STEP
  for name, value in weights.items():            # TensorFlow's checksums verified, the values are the ones written
    np.testing.assert_array_equal(ckpt.read(name), value)
  assert ckpt.read("electra/embeddings/word_embeddings").flags.writeable


@pytest.mark.parametrize("given", ["", PREFIX, PREFIX + ".index", DATA])
def test_checkpoint_given_as_folder_prefix_index_or_data_file(given):
  assert resolve_prefix(os.path.join(fixture("shared"), given)) == os.path.join(fixture("shared"), PREFIX)


def test_folder_without_checkpoint_file_takes_the_highest_step(tmp_path):
  folder = copy("shared", tmp_path)
  os.remove(os.path.join(folder, "checkpoint"))
  write_bundle(os.path.join(folder, "model.ckpt-99"), {"x": np.zeros(2, np.float32)})
  assert resolve_prefix(folder).endswith(PREFIX)


def test_flipped_byte_in_the_data_file_names_file_and_variable(tmp_path):
  folder = copy("shared", tmp_path)
  ckpt = TFCheckpoint.open(folder)
  name = "electra/encoder/layer_1/intermediate/dense/kernel"
  with open(os.path.join(folder, DATA), "r+b") as f:
    f.seek(ckpt.entries[name].offset + 17)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x10]))
  with pytest.raises(TFCheckpointError, match=rf"{DATA}: variable {name}: checksum mismatch"):
    ckpt.read(name)
  ckpt.read("electra/encoder/layer_0/intermediate/dense/kernel")     # the others still read


def test_flipped_byte_in_the_index_is_a_checksum_error(tmp_path):
  folder = copy("shared", tmp_path)
  with open(os.path.join(folder, PREFIX + ".index"), "r+b") as f:
    f.seek(40)
    b = f.read(1)
    f.seek(40)
    f.write(bytes([b[0] ^ 1]))
  with pytest.raises(TFCheckpointError, match=r"\.index: checksum mismatch in the index block"):
    TFCheckpoint.open(folder)


def test_truncated_data_file_names_the_first_variable_it_cuts(tmp_path):
  folder = copy("shared", tmp_path)
  ckpt = TFCheckpoint.open(folder)
  last = max(ckpt.entries, key=lambda k: ckpt.entries[k].offset)
  with open(os.path.join(folder, DATA), "r+b") as f:
    f.truncate(ckpt.entries[last].offset + 3)
  with pytest.raises(TFCheckpointError, match=rf"{DATA}: truncated .* variable {last} needs bytes"):
    ckpt.check_files()


def test_missing_shard_is_named(tmp_path):
  prefix = os.fspath(tmp_path / "model.ckpt-5")
  write_bundle(prefix, {"a": np.ones(3, np.float32), "b": np.arange(4, dtype=np.int64)}, num_shards=2)
  ckpt = TFCheckpoint.open(prefix)
  np.testing.assert_array_equal(ckpt.read("b"), np.arange(4))       # round-robin: b is in shard 1
  os.remove(prefix + ".data-00001-of-00002")
  with pytest.raises(TFCheckpointError, match=r"data-00001-of-00002: missing data shard \(it holds variable b\)"):
    ckpt.check_files()
  np.testing.assert_array_equal(ckpt.read("a"), np.ones(3))


def test_other_formats_are_refused(tmp_path):
  (tmp_path / "model.ckpt-1.index").write_bytes(b"PK\x03\x04 not a table" * 10)
  with pytest.raises(TFCheckpointError, match=r"model\.ckpt-1\.index: not a TensorFlow checkpoint index"):
    TFCheckpoint.open(tmp_path / "model.ckpt-1")
  (tmp_path / "v1").write_bytes(b"\0" * 100)
  with pytest.raises(TFCheckpointError, match=r"a V1 TensorFlow checkpoint or another file"):
    TFCheckpoint.open(tmp_path / "v1")
  with pytest.raises(TFCheckpointError, match=r"no TensorFlow checkpoint here"):
    TFCheckpoint.open(tmp_path / "absent")


def test_snappy_compressed_block_is_refused_clearly(tmp_path):
  prefix = os.fspath(tmp_path / "model.ckpt-1")
  write_bundle(prefix, {"a": np.ones(3, np.float32)}, kind=1)
  with pytest.raises(TFCheckpointError, match=r"snappy-compressed index blocks are not supported"):
    TFCheckpoint.open(prefix)


# ------------------------------------------------------------------------------------------------ the mapping
def test_layouts_are_detected_from_the_variable_names():
  assert [tm.detect_layout(set(TFCheckpoint.open(fixture(n)).entries)) for n in ("separate", "shared", "finetuned")
          ] == ["separate", "shared", "discriminator"]


def test_mapping_consumes_every_variable_with_the_configs_the_shapes_give():
  conv = load("separate", generator_num_attention_heads=1, with_slots=True)
  disc, gen = conv.networks["discriminator"], conv.networks["generator"]
  assert (disc.kind, gen.kind, conv.global_step) == ("ElectraForPreTraining", "ElectraForMaskedLM", fx.STEP)
  d, g = disc.config, gen.config
  assert (d.vocab_size, d.embedding_size, d.hidden_size, d.num_hidden_layers, d.intermediate_size,
          d.max_position_embeddings, d.num_attention_heads) == (100, 24, 32, 2, 64, 40, 2)
  assert (g.hidden_size, g.num_hidden_layers, g.intermediate_size, g.num_attention_heads) == (16, 2, 64, 1)
  weights = fx.make_params("separate").values
  np.testing.assert_array_equal(disc.params["electra/encoder/layers/query/kernel"][1],
                                weights["electra/encoder/layer_1/attention/self/query/kernel"])
  np.testing.assert_array_equal(disc.params["discriminator_predictions/dense_prediction/kernel"],
                                weights["discriminator_predictions/dense_1/kernel"])
  np.testing.assert_array_equal(gen.params["electra/embeddings/word_embeddings"],        # the shared table
                                weights["electra/embeddings/word_embeddings"])
  np.testing.assert_array_equal(gen.params["generator_lm_head/bias"], weights["generator_predictions/output_bias"])
  np.testing.assert_array_equal(gen.params["electra/encoder/layers/output_norm/scale"][0],
                                weights["generator/encoder/layer_0/output/LayerNorm/gamma"])
  assert set(disc.slots["adam_m"]) == set(disc.params)
  ckpt = TFCheckpoint.open(fixture("separate"))
  np.testing.assert_array_equal(gen.slots["adam_v"]["electra/encoder/layers/key/bias"][1],
                                ckpt.read("generator/encoder/layer_1/attention/self/key/bias/adam_v"))
  # the shared layout: one network under electra/ serves both heads
  shared = load("shared")
  assert shared.networks["generator"].config == shared.networks["discriminator"].config.replace(
      architectures=("ElectraForMaskedLM",))
  np.testing.assert_array_equal(shared.networks["generator"].params["electra/encoder/layers/value/kernel"],
                                shared.networks["discriminator"].params["electra/encoder/layers/value/kernel"])
  tuned = load("finetuned")
  assert tuned.networks["discriminator"].kind == "OriginalElectraForSequenceClassification"
  assert tuned.networks["discriminator"].config.num_labels == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["separate", "shared", "finetuned"])
def test_converted_networks_equal_the_tensorflow_forward(name):
  ref = np.load(os.path.join(fixture(name), "reference.npz"))
  conv = load(name)
  keys = {"ElectraForPreTraining": "disc_logits", "ElectraForMaskedLM": "gen_logits",
          "OriginalElectraForSequenceClassification": "task_logits"}
  for net in conv.networks.values():
    out = tf_convert.build_module(net)(ref["input_ids"], ref["input_mask"], ref["segment_ids"]).logits
    np.testing.assert_allclose(np.asarray(out), ref[keys[net.kind]], atol=1e-5, rtol=0)


def _rewrite(folder: str, change) -> str:
  """The fixture's tensors, changed by `change(dict)`, written as a new bundle next to it."""
  ckpt = TFCheckpoint.open(folder)
  tensors = {k: ckpt.read(k) for k in ckpt.entries}
  change(tensors)
  prefix = os.path.join(folder, "model.ckpt-2000")
  write_bundle(prefix, tensors)
  return prefix


def test_unknown_missing_and_misshapen_variables_are_named(tmp_path):
  folder = copy("shared", tmp_path)
  extra = {"generator_ltr/encoder/layer_0/output/dense/kernel": np.zeros(2, np.float32)}   # Electric's two-tower
  prefix = _rewrite(folder, lambda t: t.update(extra))
  with pytest.raises(ConversionError, match=r"variable generator_ltr/encoder/layer_0/output/dense/kernel is not "
                                            r"known to the ELECTRA mapping"):
    tf_convert.load_tf_checkpoint(prefix)
  prefix = _rewrite(folder, lambda t: t.pop("electra/encoder/layer_1/attention/self/key/bias"))
  with pytest.raises(ConversionError, match=r"missing variable electra/encoder/layer_1/attention/self/key/bias"):
    tf_convert.load_tf_checkpoint(prefix, num_attention_heads=2)
  prefix = _rewrite(folder, lambda t: t.update({"discriminator_predictions/dense_1/bias": np.zeros(3, np.float32)}))
  with pytest.raises(ConversionError, match=r"variable discriminator_predictions/dense_1/bias has shape \(3,\)"):
    tf_convert.load_tf_checkpoint(prefix, num_attention_heads=2)
  with pytest.raises(ConversionError, match=r"hidden_size=32: must be divisible by num_attention_heads=3"):
    tf_convert.load_tf_checkpoint(folder, num_attention_heads=3)


def test_continuing_needs_slots_and_global_step():
  with pytest.raises(ConversionError, match=r"no optimizer slot .*/adam_m"):
    load("shared", with_slots=True)


def test_varint_reader_rejects_overlong_input():
  with pytest.raises(ValueError):
    _varint(b"\xff" * 11, 0)
  assert _varint(struct.pack("B", 5), 0) == (5, 1)


@pytest.mark.slow
def test_generator_with_embeddings_of_its_own(tmp_path):
  """untied_generator_embeddings=True: generator/embeddings/ is the generator's (here a copy, so the outputs stay)."""
  folder = copy("separate", tmp_path)

  def untie(t):
    for k in [k for k in t if k.startswith("electra/embeddings/") and not tm.is_slot(k)]:
      t["generator/" + k[len("electra/"):]] = t[k] * 1.0
  conv = tf_convert.load_tf_checkpoint(_rewrite(folder, untie), num_attention_heads=2)
  assert conv.layout == "untied_embeddings"
  ref = np.load(os.path.join(folder, "reference.npz"))
  out = tf_convert.build_module(conv.networks["generator"])(ref["input_ids"], ref["input_mask"], ref["segment_ids"])
  np.testing.assert_allclose(np.asarray(out.logits), ref["gen_logits"], atol=1e-5, rtol=0)
  with pytest.raises(ConversionError, match=r"--continue_pretraining needs a pretraining checkpoint of generator"):
    tf_convert.tf_to_orbax(conv, os.fspath(tmp_path / "out"), continue_pretraining=True)
  assert not os.path.exists(tmp_path / "out")
