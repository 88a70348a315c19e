"""Hub model ids, offline: a Hugging Face cache built on disk in huggingface_hub's layout
(models--OWNER--NAME/snapshots/<sha>/..., refs/main), HF_HUB_CACHE pointed at it and HF_HUB_OFFLINE=1; no network.
push_to_hub is checked up to huggingface_hub's upload API (monkeypatched)."""

import json
import os
import subprocess
import sys

import huggingface_hub
from huggingface_hub import constants as hf_constants
import numpy as np
import pytest
from flax import nnx

from electra_jax import convert, errors
from electra_jax.convert import hub
from electra_jax.modeling import ElectraConfig, ElectraForPreTraining

SHA = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=32)
# google/electra-small-discriminator's config.json (architecture fields)
SMALL = dict(vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
             intermediate_size=1024, max_position_embeddings=512)


def cache_model(cache, repo_id, config, sha=SHA, seed=0, cls=ElectraForPreTraining):
  """Writes a random `cls` (ElectraForPreTraining) of `config` as the main revision of repo_id in a Hub cache."""
  folder = cache / f"models--{repo_id.replace('/', '--')}"
  snapshot = folder / "snapshots" / sha
  model = cls(ElectraConfig(**config), rngs=nnx.Rngs(seed))
  convert.to_hf(model, snapshot)
  (folder / "refs").mkdir(parents=True, exist_ok=True)
  (folder / "refs" / "main").write_text(sha)
  return model, snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
  cache = tmp_path / "hub"
  cache.mkdir()
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
  return cache


def test_from_hf_loads_a_cached_hub_id_offline(offline_cache):
  model, snapshot = cache_model(offline_cache, "google/electra-tiny-test", TINY)
  assert hub.resolve("google/electra-tiny-test") == str(snapshot)
  assert hub.resolve("google/electra-tiny-test", revision=SHA) == str(snapshot)
  assert hub.resolve(f"google/electra-tiny-test@{SHA}") == str(snapshot)
  loaded = convert.from_hf("google/electra-tiny-test")
  np.testing.assert_array_equal(np.asarray(loaded.electra.embeddings.word_embeddings[...]),
                                np.asarray(model.electra.embeddings.word_embeddings[...]))
  assert hub.resolve(str(snapshot)) == str(snapshot)              # a path stays a path


def test_an_uncached_id_fails_in_one_line_naming_it(offline_cache):
  with pytest.raises(hub.HubError) as e:
    convert.from_hf("google/electra-base-discriminator")
  assert isinstance(e.value, errors.Error) and isinstance(e.value, FileNotFoundError)
  message = str(e.value)
  assert "google/electra-base-discriminator" in message and "HF_HUB_OFFLINE=1" in message
  assert "\n" not in message
  cache_model(offline_cache, "google/electra-tiny-test", TINY)
  with pytest.raises(hub.HubError, match="electra-tiny-test@v2"):   # a revision the cache does not hold
    hub.resolve("google/electra-tiny-test", revision="v2")


def test_every_reader_of_a_model_folder_takes_a_hub_id(offline_cache, tmp_path):
  """predict --model, a frozen generator (generator.source) and fine-tuning's init_checkpoint resolve Hub ids."""
  from electra_jax.eval import predict  # pylint: disable=import-outside-toplevel
  from electra_jax.modeling import ElectraForMaskedLM  # pylint: disable=import-outside-toplevel
  from electra_jax.train import finetune_lib, generator  # pylint: disable=import-outside-toplevel
  _, snapshot = cache_model(offline_cache, "google/electra-tiny-test", TINY)
  assert predict.check_model_dir("google/electra-tiny-test") == str(snapshot)
  gen, gen_snapshot = cache_model(offline_cache, "google/electra-tiny-generator", TINY, cls=ElectraForMaskedLM)
  source = generator.load_source("google/electra-tiny-generator", vocab_size=TINY["vocab_size"])
  assert source.path == str(gen_snapshot)
  np.testing.assert_array_equal(source.params["electra"]["embeddings"]["word_embeddings"],
                                np.asarray(gen.electra.embeddings.word_embeddings[...]))
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({"init_checkpoint": "google/electra-base-discriminator"})
  with pytest.raises(hub.HubError, match="google/electra-base-discriminator"):
    finetune_lib.train_and_evaluate(config, str(tmp_path / "ft"))
  assert not (tmp_path / "ft").exists()


def test_paths_are_not_hub_ids(tmp_path, monkeypatch):
  assert not hub.is_hub_id("/no/such/folder")
  assert not hub.is_hub_id("./rel")
  assert not hub.is_hub_id("config.json")
  assert hub.is_hub_id("google/electra-small-discriminator") and hub.is_hub_id("bert-base-uncased")
  assert hub.resolve("/no/such/folder") == "/no/such/folder"        # left to the caller's "does not exist"
  (tmp_path / "google").mkdir()
  assert not hub.is_hub_id(str(tmp_path / "google"))
  monkeypatch.chdir(tmp_path)
  assert not hub.is_hub_id("google/electra-small-discriminator")   # ./google exists: a missing local path


def test_push_to_hub_calls_the_upload_api(tmp_path, monkeypatch):
  calls = []

  class FakeApi:
    def create_repo(self, repo_id, **kw):
      calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
      calls.append(("upload_folder", kw))
      return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()

  monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
  (tmp_path / "out").mkdir()
  url = hub.push(tmp_path / "out", "me/electra-x")
  assert url.endswith("/me/electra-x/commit/abc")
  assert calls[0] == ("create_repo", "me/electra-x", {"repo_type": "model", "private": None, "exist_ok": True})
  assert calls[1][1]["folder_path"] == str(tmp_path / "out") and calls[1][1]["repo_id"] == "me/electra-x"
  with pytest.raises(hub.HubError, match="owner/name"):
    hub.push(tmp_path / "out", "no-owner")


@pytest.mark.slow
def test_orbax_to_hf_push_to_hub(tmp_path, monkeypatch):
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from electra_jax.convert import __main__ as cli  # pylint: disable=import-outside-toplevel
  model = ElectraForPreTraining(ElectraConfig(**TINY), rngs=nnx.Rngs(0))
  checkpointing.save_params(str(tmp_path / "ckpt"), checkpointing.head_meta("ElectraForPreTraining", model.config),
                            nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  pushed = []
  monkeypatch.setattr(hub, "push", lambda folder, repo_id: pushed.append((folder, repo_id)) or "url")
  cli.orbax_to_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"), push_to_hub="me/electra-x")
  assert pushed == [(str(tmp_path / "hf"), "me/electra-x")]
  assert os.path.isfile(tmp_path / "hf" / "model.safetensors")


@pytest.mark.slow
def test_acceptance_electra_small_discriminator_offline_and_the_cli_error(tmp_path):
  """HF_HUB_OFFLINE=1 with a cache holding google/electra-small-discriminator (random weights of its config):
  from_hf loads it; an uncached id fails in one line (the converter's exit status 1, no traceback)."""
  cache = tmp_path / "hub"
  _, snapshot = cache_model(cache, "google/electra-small-discriminator", SMALL)
  with open(snapshot / "config.json", encoding="utf-8") as f:
    assert json.load(f)["architectures"] == ["ElectraForPreTraining"]
  env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
  code = ("from electra_jax import convert; m = convert.from_hf('google/electra-small-discriminator'); "
          "print(type(m).__name__, m.config.hidden_size, m.config.num_hidden_layers)")
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["ElectraForPreTraining", "256", "12"]
  r = subprocess.run([sys.executable, "-m", "electra_jax.convert", "hf_to_orbax",
                      "--hf_dir=google/electra-base-discriminator", f"--out={tmp_path / 'out'}"],
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and "google/electra-base-discriminator" in lines[0], r.stderr
  assert not (tmp_path / "out").exists()
