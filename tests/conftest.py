"""Test set-up: 8 simulated CPU devices (set before jax is imported) and the data-location helper."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from electra_jax import paths  # noqa: E402


def shared_data(relative: str = ""):
  """Path of `relative` under the benchmark data folder.

  Skips the test with the reason when the data is absent; fails instead when CI is set, since CI must have it.
  """
  path = paths.data_dir() / relative
  if not path.exists():
    msg = (f"benchmark data {path} is absent (set {paths.ENV_VAR} to the folder holding glue_data/, squad/, "
           f"vocab/, corpus/)")
    if os.environ.get("CI"):
      pytest.fail(msg + " — CI must have it")
    pytest.skip(msg)
  return path


@pytest.fixture
def data_dir():
  return shared_data()
