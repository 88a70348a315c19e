"""paths.write_json_atomically: the one JSON writer; a failed write leaves the previous file whole."""

import json

import pytest

from electra_jax import paths


def test_write_json_atomically_replaces_the_file_whole(tmp_path):
  target = tmp_path / "results.json"
  assert paths.write_json_atomically(target, {"b": 1, "a": [1.5]}) == str(target)
  assert json.loads(target.read_text()) == {"a": [1.5], "b": 1}
  with pytest.raises(TypeError):   # not serialisable: fails before anything is renamed
    paths.write_json_atomically(target, {"a": object()})
  assert json.loads(target.read_text()) == {"a": [1.5], "b": 1}
  with pytest.raises(ValueError):
    paths.write_json_atomically(target, {"a": float("nan")}, allow_nan=False)
  paths.write_json_atomically(target, {"a": float("inf")}, default=str, tmp_suffix=".partial")
  assert target.read_text() == '{\n  "a": Infinity\n}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
