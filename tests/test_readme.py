"""Every command of README.md runs as written, so the README cannot drift from the code.

What runs: every inline `python -m ...` command of the page (the command table, split at " / ", and the prose), and
the Python snippet, in the order of the page (the snippet last: it reads what the table wrote). README's upper-case
placeholders are filled in with PLACEHOLDERS below (temporary folders; CORPUS a few hundred lines of WikiText-2;
SQUAD_TRAIN_JSON and SQUAD_DEV_JSON the first 16 questions of the shared SQuAD v2.0 dev subset), and TINY appends a
few documented overrides per binary that make the sizes tiny (later flags win; the replication line runs its
smallest suite). `$ELECTRA_DATA_DIR` is the shared
data folder. The "Three commands" block is checked, not run: its install step would change this Python environment
and scripts/test.sh runs this very suite; tests/test_quickstart.py runs what scripts/quickstart.sh runs.
Afterwards, README's promise of the fine-tune -> export chain: transformers.pipeline loads the exported folder.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from electra_jax import paths
from electra_jax.eval.tasks import subset_squad
from tests.conftest import shared_data

README = paths.REPO_ROOT / "README.md"
THREE_COMMANDS = ["bash scripts/quickstart.sh", "bash scripts/test.sh", 'bash scripts/test.sh -m "not slow"']

# Appended to every command of a binary (absl: the last value of a flag wins).
TINY = {
    "electra_jax.data.pretraining": "--num_processes=2 --num_shards=2 --max_seq_length=32",
    "electra_jax.train.pretrain": (
        "--config.num_train_steps=2 --config.batch_size=8 --config.max_seq_length=32 --config.log_every_steps=1 "
        "--config.checkpoint_every_steps=2 --config.optimizer.warmup_steps=1 --config.model.embedding_size=16 "
        "--config.model.hidden_size=32 --config.model.num_hidden_layers=1 --config.model.num_attention_heads=1 "
        "--config.model.intermediate_size=64 --config.model.dtype=float32 --config.model.scan_layers=false "
        "--config.data.num_shards=2"),
    "electra_jax.train.finetune": (
        "--config.num_train_steps=2 --config.batch_size=8 --config.eval_batch_size=8 --config.max_train_examples=16 "
        "--config.max_eval_examples=16 --config.log_every_steps=1 --config.max_seq_length=64 --config.doc_stride=32 "
        "--config.max_query_length=16 --config.eval_file=SQUAD_DEV_JSON"),   # the SQuAD fields: SQuAD's line only
    "electra_jax.eval.evaluate": "--config.eval_batch_size=8 --config.max_seq_length=32",
    # the smoke size, and the suite with fewest variants: "efficiency" pretrains seven variants, 20+ minutes even at
    # the smoke size on a 2-core CPU; every suite runs through the same harness (tests/test_replicate.py).
    "electra_jax.experiments.replicate": "--size=smoke --suite=attention_dropout",
}
SQUAD_ONLY = ("--config.doc_stride=32", "--config.max_query_length=16", "--config.eval_file=SQUAD_DEV_JSON")


def readme_commands(text: str) -> tuple[list[str], list[str], str]:
  """(the "Three commands" block's lines, every inline `python -m` command in page order, the Python snippet)."""
  bash = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
  three = [line.split("#")[0].strip() for line in bash.splitlines() if line.strip()]
  snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  commands = []
  for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
    span = span.replace("\\|", "|")
    if span.startswith("python -m ") or "| python -m " in span:
      commands.append(span)
  return three, commands, snippet


def _placeholders(tmp) -> dict[str, str]:
  data = shared_data()
  corpus = tmp / "corpus.txt"
  lines = (data / "corpus/wikitext-2-raw/wiki.valid.raw").read_text(encoding="utf-8").splitlines()[:300]
  corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
  dev = json.loads((data / "squad/dev-v2.0.cs224n-dev-half.json").read_text(encoding="utf-8"))
  qids = [qa["id"] for a in dev["data"] for p in a["paragraphs"] for qa in p["qas"]][:16]
  small = tmp / "squad16.json"
  small.write_text(json.dumps(subset_squad(dev, set(qids))), encoding="utf-8")
  folders = ("SHARDS", "PRETRAIN_DIR", "FINETUNE_DIR", "SQUAD_DIR", "EVAL_DIR", "HF_DIR", "GEN_DIR", "CKPT",
             "TF_WORKDIR", "TF_HF_DIR", "OUT_DIR", "REPLICATE_DIR")
  out = {name: os.fspath(tmp / name.lower()) for name in folders}
  out.update(CORPUS=os.fspath(corpus), SQUAD_TRAIN_JSON=os.fspath(small), SQUAD_DEV_JSON=os.fspath(small),
             VOCAB=os.fspath(data / "vocab/bert-base-uncased-vocab.txt"),
             TF_DIR=os.fspath(paths.REPO_ROOT / "tests/fixtures/tf_checkpoints/separate"))
  return out


def _fill(text: str, mapping: dict[str, str]) -> str:
  names = sorted(mapping, key=len, reverse=True)
  return re.sub(r"\b(" + "|".join(names) + r")\b", lambda m: mapping[m.group(1)], text)


def _binary(command: str) -> str:
  return re.search(r"python -m (\S+)", command).group(1)


def _tiny(command: str) -> str:
  extra = TINY.get(_binary(command), "")
  if _binary(command) == "electra_jax.train.finetune" and "configs/squad.py" not in command:
    extra = " ".join(flag for flag in extra.split() if flag not in SQUAD_ONLY)
  return f"{command} {extra}".strip()


def _run(command: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
  proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout, env=env,
                        cwd=paths.REPO_ROOT)
  assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
  return proc


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env[paths.ENV_VAR] = os.fspath(shared_data())
  env["PYTHONPATH"] = os.pathsep.join([os.fspath(paths.REPO_ROOT), env.get("PYTHONPATH", "")])
  return env


def test_three_commands_block_is_what_the_scripts_take():
  three, commands, _ = readme_commands(README.read_text(encoding="utf-8"))
  assert three == THREE_COMMANDS
  for script in ("scripts/quickstart.sh", "scripts/test.sh"):
    assert subprocess.run(["bash", "-n", os.fspath(paths.REPO_ROOT / script)]).returncode == 0
  binaries = {_binary(c) for c in commands}
  assert set(TINY) <= binaries, f"TINY names binaries README no longer runs: {set(TINY) - binaries}"
  assert "Three commands" in README.read_text(encoding="utf-8")


def test_readme_config_overrides_name_real_fields():
  """Every `--config.<field>` README shows exists in the configs it is shown for (runtime fields: in all three)."""
  from configs import glue as glue_config, pretrain as pretrain_config, squad as squad_config
  configs = [pretrain_config.get_config("size=small"), glue_config.get_config(), squad_config.get_config()]
  text = README.read_text(encoding="utf-8")
  for field in sorted(set(re.findall(r"--config\.([a-z_.]+)=", text))):
    holders = [c for c in configs if _has(c, field)]
    assert holders, f"--config.{field} is in no config"
    if field.startswith("model.") or field.startswith("mesh."):
      assert len(holders) == 3, f"--config.{field} is not in every config"


def _has(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
  import transformers
  _, commands, snippet = readme_commands(README.read_text(encoding="utf-8"))
  mapping = _placeholders(tmp_path)
  env = _env()
  outputs = {}
  for command in commands:
    if _binary(command) == "electra_jax.experiments.replicate":
      continue   # test_replicate_command_runs_as_written
    proc = _run(_fill(_tiny(command), mapping), env)
    outputs[command] = proc.stdout
  # scores are printed and recorded beside their trivial baselines
  for workdir in ("FINETUNE_DIR", "SQUAD_DIR", "EVAL_DIR"):
    with open(os.path.join(mapping[workdir], "results.json"), encoding="utf-8") as f:
      results = json.load(f)
    assert results["baselines"]["dev"]["what"] and "beats" in results["beats_baseline"]["dev"], workdir
  finetune_out = next(out for c, out in outputs.items() if "configs/glue.py" in c and "train.finetune" in c)
  assert "the trivial baseline" in finetune_out
  pretrain_out = next(out for c, out in outputs.items() if "train.pretrain" in c)
  assert re.search(r"step 2: discriminator accuracy \d\.\d{3} \(\"always original\" scores \d\.\d{3} at the",
                   pretrain_out), pretrain_out[-2000:]
  # fine-tune (HF head by default) -> orbax_to_hf -> transformers
  classify = transformers.pipeline("text-classification", model=mapping["HF_DIR"])
  assert classify("a gripping, funny film")[0]["label"] in ("equivalent", "not_equivalent")
  proc = subprocess.run([sys.executable, "-c", _fill(snippet, mapping)], capture_output=True, text=True,
                        timeout=600, env=env, cwd=paths.REPO_ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_replicate_command_runs_as_written(tmp_path):
  _, commands, _ = readme_commands(README.read_text(encoding="utf-8"))
  [command] = [c for c in commands if _binary(c) == "electra_jax.experiments.replicate"]
  _run(_fill(_tiny(command), _placeholders(tmp_path)), _env(), timeout=900)
  assert (tmp_path / "replicate_dir" / "results.json").is_file()
