"""MetricWriter (metrics.jsonl + TensorBoard), resume truncation, throughput/ETA, console lines, config parsing."""

import json
import math
import os

import pytest

from configs import common
from configs import pretrain as pretrain_config
from electra_jax.train import metrics


def test_writer_jsonl_tensorboard_and_resume(tmp_path):
  work = str(tmp_path)
  with metrics.MetricWriter(work, resume_step=0, enabled=True) as w:
    for step in (1, 2, 3, 4):
      w.write_scalars(step, {"loss": 10.0 - step, "disc_auc": float("nan"), "skipped": None, "count": 3})
  recs = metrics.read_metrics(work)
  assert [r["step"] for r in recs] == [1, 2, 3, 4]
  assert recs[0] == {"step": 1, "loss": 9.0, "disc_auc": None, "count": 3}   # NaN -> null, None dropped
  assert [f for f in os.listdir(work) if f.startswith("events.out.tfevents")]
  # a resumed run (restored at step 2) drops what the killed run wrote after its checkpoint, even a torn line
  with open(os.path.join(work, metrics.METRICS_FILE), "a", encoding="utf-8") as f:
    f.write('{"step": 5, "lo')
  with metrics.MetricWriter(work, resume_step=2, enabled=True) as w:
    w.write_scalars(3, {"loss": 0.5})
  assert [(r["step"], r["loss"]) for r in metrics.read_metrics(work)] == [(1, 9.0), (2, 8.0), (3, 0.5)]
  # a disabled writer (processes other than 0) writes nothing
  other = tmp_path / "other"
  metrics.MetricWriter(str(other), enabled=False).write_scalars(1, {"loss": 1.0})
  assert not other.exists()


def test_throughput_and_console_line(monkeypatch):
  clock = iter([100.0, 110.0])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  meter = metrics.Throughput(tokens_per_step=1000, flops_per_step=2e12, num_devices=2, peak_flops_per_device=1e12,
                             total_steps=100)
  meter.start(10)
  out = meter.update(20)          # 10 steps in 10 s
  assert out["steps_per_sec"] == pytest.approx(1.0)
  assert out["tokens_per_sec"] == pytest.approx(1000.0)
  assert out["tflops_per_sec_per_device"] == pytest.approx(1.0)
  assert out["mfu"] == pytest.approx(1.0)
  assert out["eta_seconds"] == pytest.approx(80.0)
  line = metrics.format_step_line(20, 100, {"loss": 3.25, "mlm_loss": 2.0, "rtd_loss": 0.025, "disc_auc": 0.9,
                                            "learning_rate": 1e-4, **out})
  assert line.startswith("step 20/100 | loss 3.2500 (mlm 2 rtd 0.025)")
  assert "MFU 100.0%" in line and "ETA 1m20s" in line and "1e+03 tok/s" in line
  assert metrics.format_duration(2 * 86400 + 3 * 3600) == "2d03h"
  assert math.isfinite(out["model_flops_per_step"])


def test_parse_arg_and_presets():
  arg = common.parse_arg("size=base,runlocal,steps=10", size="small", runlocal=False, steps=1)
  assert (arg.size, arg.runlocal, arg.steps) == ("base", True, 10)
  with pytest.raises(ValueError, match="unknown config argument 'sz'"):
    common.parse_arg("sz=base", size="small")
  with pytest.raises(ValueError, match="expected int"):
    common.parse_arg("steps=ten", steps=1)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("size", size="small")
  small = pretrain_config.get_config("size=small")
  assert (small.model.hidden_size, small.model.embedding_size, small.learning_rate, small.batch_size,
          small.num_train_steps, small.max_seq_length) == (256, 128, 5e-4, 128, 1_000_000, 128)
  large = pretrain_config.get_config("size=large")
  assert (large.mask_prob, large.model.num_hidden_layers, large.batch_size, large.max_seq_length) == \
      (0.25, 24, 2048, 512)
  base = pretrain_config.get_config("size=base,objective=mlm")
  assert base.objective == "mlm" and round(768 * base.generator.hidden_fraction) == 256
  for c in (small, large, base):
    assert (c.optimizer.eps, c.optimizer.weight_decay, c.optimizer.warmup_steps, c.optimizer.bias_correction,
            c.gen_weight, c.disc_weight) == (1e-6, 0.01, 10_000, False, 1.0, 50.0)
  assert pretrain_config.get_config("size=tiny").data.corpus.endswith("wikitext-2-raw")
  with pytest.raises(ValueError, match="size="):
    pretrain_config.get_config("size=huge")
  json.dumps(small.to_dict())   # serialisable (written to WORKDIR/config.json)
