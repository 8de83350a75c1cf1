"""Shared defaults of the run configs: one place for the paper's recipe and each method's budget.

Every file in ``configs/`` is ``get_config()`` returning one of the helpers below. Keys:

* ``name``, ``workdir`` (default ``runs/<name>``), ``seed`` (head init, adapter init, data
  order, dropout), ``devices`` (0: all local devices), ``compute_dtype`` (``float32`` or
  ``bfloat16``: the model's matmuls; params stay float32), ``progress``, ``log_every``.
* ``model``: ``name`` (``minilm``, ``vit``, ``smollm2``), ``pooling`` (MiniLM), ``num_layers``
  (0: all; fewer keeps the first layers, for tests).
* ``task``: ``dataset`` and its ``*_split`` names, ``test_dataset`` ("" = ``dataset``),
  ``train_examples`` / ``validation_examples`` / ``test_examples`` (0: the whole split; else a
  fixed subset), ``max_length`` and ``buckets`` (text), ``metric`` (model selection and the
  reported number: ``accuracy``, ``mcc`` (Matthews correlation, for unbalanced classes),
  ``loss`` or ``exact_match``).
* ``method``: ``name`` (``gpart_jax.methods.build``), ``modules_to_save`` (trained in full:
  the new head) and the method's own options (``d``, ``r``, ``seed``, ``targets``, ...).
* ``optim``: the paper's recipe (AdamW; linear warmup over ``warmup_frac`` = 6% of the steps,
  then linear decay to 0; ``adapter_lr`` 5e-3 and ``weight_decay`` 0.1 on theta; the head's
  own ``head_lr`` without decay).
* ``train``: ``batch_size`` (examples per optimizer step), ``grad_accum`` (micro-batches per
  step), ``epochs`` or ``steps`` (if > 0, overrides epochs), ``eval_batch_size``,
  ``checkpoint_every``, ``keep_last``.

Learning rates. theta (GPart, Uni-LoRA): 5e-3, the paper's. Heads: 4e-3, within the range of
the head rates of the VeRA / Uni-LoRA GLUE recipes; not tuned here. LoRA: 5e-4 and VeRA: 4e-3,
their authors' RoBERTa-base SST-2 rates as we read them; full fine-tuning: 5e-5 with weight decay
0.01 (the usual BERT recipe). None of the baselines' rates was tuned on these tasks.
"""

from __future__ import annotations

import ml_collections

QV_BERT = ("query/kernel", "value/kernel")
QV_LLAMA = ("q_proj/kernel", "v_proj/kernel")
D_PAPER = 23_040  # GPart / Uni-LoRA d of the paper's GLUE runs (RoBERTa-base q,v)


def method(name: str, targets: tuple[str, ...] = QV_BERT, modules_to_save: tuple[str, ...] = ("classifier",),
           d: int = D_PAPER) -> ml_collections.ConfigDict:
    """``cfg.method`` of ``name`` at the paper's budgets (GPart/Uni-LoRA ``d``, LoRA r=8, VeRA r=256)."""
    options: dict = {"name": name, "modules_to_save": modules_to_save}
    if name in ("gpart", "gpart-noniso"):
        options |= {"d": d, "seed": 42, "targets": targets}
    elif name == "unilora":
        options |= {"d": d, "r": 4, "seed": 42, "targets": targets}
    elif name == "lora":
        options |= {"r": 8, "targets": targets}
    elif name == "vera":
        options |= {"r": 256, "seed": 0, "targets": targets}
    elif name == "full":  # the target matrices in full (issue 7: every method on query and value)
        options |= {"targets": targets}
    elif name != "head-only":
        raise ValueError(f"no defaults for method {name!r}")
    return ml_collections.ConfigDict(options)


def adapter_lr(name: str) -> float:
    """Method ``name``'s usual adapter learning rate (module docstring): theta 5e-3, LoRA 5e-4,
    VeRA 4e-3, full fine-tuning 5e-5."""
    return {"lora": 5e-4, "vera": 4e-3, "full": 5e-5}.get(name, 5e-3)


def scaled_rate(name: str, multiple: float) -> float:
    """``multiple`` x ``adapter_lr(name)`` to 3 significant digits (0.4 x 5e-3 is 0.002, not
    0.0020000000000000005: the override, and so the workdir name, stays short)."""
    return float(f"{multiple * adapter_lr(name):.3g}")


def suite_entry(config: str, name: str, seed: int, rate: float | None = None,
                extra: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """A suite entry (``experiments.suite``): ``config`` (a run of method ``name``) with ``seed``,
    at adapter rate ``rate``, plus the overrides ``extra`` (after the rate's). ``rate`` None or
    ``adapter_lr(name)`` adds no override, so the run is the default-rate run's own workdir, shared
    with any other suite that lists it."""
    lr = [] if rate in (None, adapter_lr(name)) else [f"--config.optim.adapter_lr={rate:g}"]
    return config, [*lr, *extra, f"--config.seed={seed}"]


STAGE_A_METHODS = ("gpart", "unilora", "lora", "gpart_noniso", "head_only", "full")


def stage_a_suite(rates: dict[tuple[str, str], float], tasks: tuple[str, ...] = ("rt", "r8"),
                  seeds: tuple[int, ...] = (0, 1, 2)) -> list[tuple[str, list[str]]]:
    """Stage (a)'s grid (issue 7): ``configs/minilm_<task>_<method>.py`` for every task, method of
    ``STAGE_A_METHODS`` and seed, seed-major (a first pass gives every task and method one seed
    before any gets a second), each at ``rates[(task, method)]`` or its default rate if absent."""
    return [suite_entry(f"configs/minilm_{task}_{m}.py", m, seed, rates.get((task, m)))
            for seed in seeds for task in tasks for m in STAGE_A_METHODS]


def optim(name: str, head_lr: float = 4e-3) -> ml_collections.ConfigDict:
    """The paper's recipe, with each baseline's usual adapter learning rate (``adapter_lr``)."""
    return ml_collections.ConfigDict({
        "adapter_lr": adapter_lr(name),
        "head_lr": head_lr,
        "warmup_frac": 0.06,
        "weight_decay": 0.01 if name == "full" else 0.1,
        "head_weight_decay": 0.0,
        "regularization": "decoupled",
        "max_grad_norm": 0.0,  # 0: no clipping
    })


def base(name: str, method_name: str) -> ml_collections.ConfigDict:
    """Top-level keys, method and optimizer; the caller fills ``model``, ``task`` and ``train``."""
    cfg = ml_collections.ConfigDict()
    cfg.name = name
    cfg.workdir = f"runs/{name}"
    cfg.seed = 0
    cfg.devices = 0
    cfg.compute_dtype = "float32"
    cfg.progress = True
    cfg.log_every = 10
    cfg.method = method(method_name)
    cfg.optim = optim(method_name)
    cfg.train = ml_collections.ConfigDict({
        "batch_size": 32, "grad_accum": 1, "epochs": 3, "steps": 0, "eval_batch_size": 64,
        "checkpoint_every": 100, "keep_last": 2})
    return cfg


def renamed(cfg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """``cfg`` under another ``name`` (and its default workdir ``runs/<name>``): a variant of a
    config that must not share its runs."""
    cfg.name = name
    cfg.workdir = f"runs/{name}"
    return cfg


def text_task(dataset: str, metric: str = "accuracy", max_length: int = 64,
              buckets: tuple[int, ...] = (16, 32, 48, 64)) -> ml_collections.ConfigDict:
    """``cfg.task`` of a text classification dataset (whole splits unless cut by the caller)."""
    return ml_collections.ConfigDict({
        "dataset": dataset, "train_split": "train", "validation_split": "validation",
        "test_split": "test", "test_dataset": "", "train_examples": 0, "validation_examples": 0,
        "test_examples": 0, "max_length": max_length, "buckets": buckets, "metric": metric})


def minilm(name: str, method_name: str, dataset: str, metric: str = "accuracy",
           max_length: int = 64) -> ml_collections.ConfigDict:
    """MiniLM-L6 (all-MiniLM-L6-v2) + ``method_name`` on a text classification ``dataset``."""
    cfg = base(name, method_name)
    cfg.model = ml_collections.ConfigDict({"name": "minilm", "pooling": "pooler", "num_layers": 0})
    buckets = tuple(b for b in (16, 32, 48, 64, 96, 128) if b <= max_length)
    cfg.task = text_task(dataset, metric, max_length, buckets)
    return cfg


# Rotten Tomatoes on a 2-core CPU (the quick start): sized from the measured step time of
# GPart d=23,040 on MiniLM q,v at batch 32, max_length 64 (see configs/minilm_rt_gpart.py).
RT_TRAIN_EXAMPLES = 5_632
RT_EPOCHS = 2


def minilm_rt(method_name: str) -> ml_collections.ConfigDict:
    """MiniLM + ``method_name`` on Rotten Tomatoes, cut to fit the quick start (same steps for
    every method, so they compare at one budget of steps)."""
    name = "minilm_rt_" + method_name.replace("-", "_")
    cfg = minilm(name, method_name, "rotten_tomatoes", "accuracy", max_length=64)
    cfg.task.train_examples = RT_TRAIN_EXAMPLES
    cfg.train.epochs = RT_EPOCHS
    return cfg


# Reuters R8 on a 2-core CPU: the whole splits at 128 tokens for 3 epochs (462 steps of about
# 3.3 s) would take about 25 minutes a run, 7.5 hours for stage (a)'s 18. Cut identically for every
# method: a fixed subset of 2,048 training articles, 2 epochs (128 steps), the first 64 tokens of
# each article (the headline and lead; about 1.6 s a step); validation and test whole.
R8_TRAIN_EXAMPLES = 2_048
R8_EPOCHS = 2
R8_MAX_LENGTH = 64


def minilm_r8(method_name: str) -> ml_collections.ConfigDict:
    """MiniLM + ``method_name`` on Reuters R8 (8 topics, unbalanced: ``earn`` is about half):
    selected and reported by Matthews correlation; cut as ``R8_*`` above, the same for every method."""
    name = "minilm_r8_" + method_name.replace("-", "_")
    cfg = minilm(name, method_name, "r8", "mcc", max_length=R8_MAX_LENGTH)
    cfg.task.train_examples = R8_TRAIN_EXAMPLES
    cfg.train.epochs = R8_EPOCHS
    return cfg


# Issue 7, stage (h): the other text tasks, cut like R8 where the texts are long.
TWEETS_EPOCHS = 2  # the whole 5,134 tweets, 64 tokens: 322 steps
NG20_TRAIN_EXAMPLES = 2_048  # of 10,138; 2 epochs, the first 64 tokens, as R8
NG20_EPOCHS = 2


def minilm_tweets(method_name: str) -> ml_collections.ConfigDict:
    """MiniLM + ``method_name`` on the 2016 election tweets (Clinton or Trump, 5,134 / 656 / 644):
    the whole splits, 64 tokens, 2 epochs; accuracy."""
    name = "minilm_tweets_" + method_name.replace("-", "_")
    cfg = minilm(name, method_name, "election_tweets", "accuracy", max_length=64)
    cfg.train.epochs = TWEETS_EPOCHS
    return cfg


def minilm_20ng(method_name: str) -> ml_collections.ConfigDict:
    """MiniLM + ``method_name`` on 20 Newsgroups (20 classes, about balanced): a fixed subset of
    2,048 training posts, 2 epochs, the first 64 tokens; validation (1,124) and test (7,528) whole;
    accuracy."""
    name = "minilm_20ng_" + method_name.replace("-", "_")
    cfg = minilm(name, method_name, "20newsgroups", "accuracy", max_length=64)
    cfg.task.train_examples = NG20_TRAIN_EXAMPLES
    cfg.train.epochs = NG20_EPOCHS
    return cfg


# Vision transfer (issue 7, stage f): the project's ViT pretrained on Fashion-MNIST
# (experiments/pretrain_vit.py: 4 blocks, width 96, patches 7x7; N = 73,728 query/value weights).
VIT_D = 1_024  # about 72 weights a group, as d = 23,040 keeps on MiniLM q,v (77)
VIT_EPOCHS = {"mnist5k": 5, "digits": 10}  # 625 and 450 steps of 32


def vit(dataset: str, method_name: str) -> ml_collections.ConfigDict:
    """The pretrained ViT + ``method_name`` on the query and value kernels, a new zero-initialised
    10-class ``head`` trained in full; ``mnist5k`` (3,986 / 478 / 536) or
    ``digits`` (8x8 images resized to 28x28; 1,425 / 217 / 155). GPart and Uni-LoRA at
    d = ``VIT_D``; the other budgets and every learning rate as on MiniLM (``method``, ``optim``)."""
    if dataset not in VIT_EPOCHS:
        raise ValueError(f"no ViT defaults for dataset {dataset!r}; one of {sorted(VIT_EPOCHS)}")
    name = f"vit_{dataset}_{method_name.replace('-', '_')}"
    cfg = base(name, method_name)
    cfg.model = ml_collections.ConfigDict({"name": "vit", "pooling": "", "num_layers": 0})
    cfg.task = text_task(dataset, "accuracy", max_length=0, buckets=())
    cfg.method = method(method_name, modules_to_save=("head",), d=VIT_D)
    cfg.train.epochs = VIT_EPOCHS[dataset]
    return cfg


# Issue 7, stage (g) on the 2-core CPU: SmolLM2-135M-Instruct on GSM-symbolic, cut to about half an
# hour of training per method (the full recipe is configs/smollm2_gsm_gpart.py, for an accelerator).
GSM_CPU_TRAIN_EXAMPLES = 512  # of 8,884: 1 epoch, 64 steps of 8
GSM_CPU_TEST_EXAMPLES = 200  # a fixed subset of the 1,319 GSM8K test problems, the same for every run


def smollm2_gsm_cpu(method_name: str) -> ml_collections.ConfigDict:
    """SmolLM2 + ``method_name`` (GPart or Uni-LoRA at d = 23,040 on q_proj / v_proj of the 30
    layers) on a fixed 512-problem subset of GSM-symbolic: 1 epoch of 64 steps (batch 8), 384
    tokens; the held-out answer loss on 128 validation problems (``metric = loss``: no generation
    during training); the test is greedy generation (256 new tokens) on 200 fixed GSM8K test
    problems, scored by exact match, and the answer loss on them."""
    name = "smollm2_gsm_cpu_" + method_name.replace("-", "_")
    cfg = base(name, method_name)
    cfg.model = ml_collections.ConfigDict({"name": "smollm2", "pooling": "", "num_layers": 0})
    cfg.task = text_task("gsm_symbolic", "loss", max_length=384, buckets=(128, 256, 384))
    cfg.task.test_dataset = "gsm8k"
    cfg.task.train_examples = GSM_CPU_TRAIN_EXAMPLES
    cfg.task.validation_examples = 128
    cfg.task.test_examples = GSM_CPU_TEST_EXAMPLES
    cfg.task.generate_examples = 0
    cfg.task.max_new_tokens = 256
    cfg.method = method(method_name, targets=QV_LLAMA, modules_to_save=())
    cfg.train.batch_size = 8
    cfg.train.eval_batch_size = 16
    cfg.train.epochs = 1
    cfg.train.checkpoint_every = 8
    return cfg
