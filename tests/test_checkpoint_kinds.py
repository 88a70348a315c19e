"""A params-only checkpoint of an original ELECTRA head rebuilds with its head options (predict, convert, evaluate)."""

import jax
import numpy as np
import pytest
from flax import nnx

from electra_jax.modeling import ElectraConfig
from electra_jax.modeling.original_heads import OriginalElectraForQuestionAnswering
from electra_jax import checkpointing


@pytest.mark.slow
def test_original_head_checkpoint_round_trips(tmp_path):
  cfg = ElectraConfig(vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)
  model = OriginalElectraForQuestionAnswering(cfg, beam_size=3, answerable_classifier=False, rngs=nnx.Rngs(0))
  meta = checkpointing.head_meta("OriginalElectraForQuestionAnswering", cfg)
  meta["head_options"] = {"beam_size": 3, "answerable_classifier": False}
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  checkpointing.save_params(tmp_path / "ckpt", meta, params)
  loaded = checkpointing.load_model(tmp_path / "ckpt")
  assert isinstance(loaded, OriginalElectraForQuestionAnswering)
  got = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, got, params)
