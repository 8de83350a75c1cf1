"""Shared defaults of the config families: the paper's recipe and each method's budget.

A config is ``get_config(arg)`` of a family file (``configs/minilm.py``, ``configs/vit.py``,
``configs/smollm2_gsm.py``); these helpers build its parts. Keys:

* ``name``, ``workdir`` (default ``runs/<name>``), ``seed`` (head init, adapter init, data
  order, dropout), ``devices`` (0: all local devices), ``compute_dtype`` (``float32`` or
  ``bfloat16``: the model's matmuls; params stay float32), ``progress``, ``log_every``,
  ``distributed`` (the multi-process run: coordinator address, process count and index; without
  them JAX's cluster auto-detection, one process where it finds no cluster; ``auto=False``
  skips it).
* ``model``: ``name`` (a module of ``experiments/models``), ``pooling`` (MiniLM),
  ``num_layers`` (0: all; fewer keeps the first layers, for tests), ``dropout`` (None: the
  checkpoint's rates).
* ``task``: ``dataset`` and its ``*_split`` names, ``test_dataset`` ("" = ``dataset``),
  ``train_examples`` / ``validation_examples`` / ``test_examples`` (0: the whole split; else a
  fixed subset), ``max_length`` and ``buckets`` (text), ``metric`` (model selection and the
  reported number), and a user's own data (``files``, ``text_column``, ``label_column``,
  ``split_column``, ``order_file``; see ``experiments/data/user.py``).
* ``method``: ``name`` (``gpart_jax.methods.build``), ``saved_modules`` (trained in full: the
  new head) and every option of the method's ``create`` (``d``, ``r``, ``seed``, ``targets``,
  LoRA's ``alpha``, ...), plus GPart's reference numbering (``element_order``, ``bias``,
  ``scope``, ``layer_pattern``).
* ``optim``: the paper's recipe (AdamW; linear warmup over ``warmup_frac`` = 6% of the steps or
  ``warmup_steps``, then linear decay to 0; ``adapter_lr`` 5e-3 and ``weight_decay`` 0.1 on
  theta; the head's own ``head_lr`` and ``head_weight_decay``; ``regularization``,
  ``max_grad_norm``).
* ``train``: ``batch_size`` (examples per optimizer step), ``grad_accum`` (micro-batches per
  step), ``epochs`` or ``steps`` (if > 0, overrides epochs), ``eval_batch_size``,
  ``checkpoint_every``, ``keep_last``.

Learning rates. theta (GPart, Uni-LoRA): 5e-3, the paper's. Heads: 4e-3, within the range of
the head rates of the VeRA / Uni-LoRA GLUE recipes; not tuned here. LoRA: 5e-4 and VeRA: 4e-3,
their authors' RoBERTa-base SST-2 rates as we read them; full fine-tuning: 5e-5 with weight decay
0.01 (the usual BERT recipe). None of the baselines' rates was tuned on these tasks
(``configs/suites/lr_sweep_text.py`` sweeps them).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

QV_BERT = ("query/kernel", "value/kernel")
QV_LLAMA = ("q_proj/kernel", "v_proj/kernel")
D_PAPER = 23_040  # GPart / Uni-LoRA d of the paper's GLUE runs (RoBERTa-base q,v)
# Config names of the methods (a family's ``method=`` argument) and their gpart_jax names.
METHODS = {"gpart": "gpart", "gpart_noniso": "gpart-noniso", "unilora": "unilora", "lora": "lora",
           "vera": "vera", "full": "full", "head_only": "head-only"}


def method(name: str, targets: tuple[str, ...] = QV_BERT, saved: tuple[str, ...] = ("classifier",),
           d: int = D_PAPER) -> ml_collections.ConfigDict:
    """``cfg.method`` of ``gpart_jax`` method ``name``: every option of its ``create``, at the
    paper's budgets (GPart/Uni-LoRA ``d``, LoRA r = 8, VeRA r = 256)."""
    options: dict = {"name": name, "saved_modules": saved}
    if name in ("gpart", "gpart-noniso"):
        options |= {"d": d, "seed": 42, "targets": targets, "scheme": "stateless",
                    "materialize": False, "adapted_dtype": "float32", "init_bound": 0.0,
                    "element_order": "native", "bias": False, "scope": "global",
                    "layer_pattern": config_dict.placeholder(str)}
    elif name == "unilora":
        options |= {"d": d, "r": 4, "seed": 42, "scale": 1.0, "init_bound": 0.02,
                    "targets": targets, "adapted_dtype": "float32"}
    elif name == "lora":
        options |= {"r": 8, "alpha": config_dict.placeholder(float), "targets": targets,
                    "adapted_dtype": "float32"}
    elif name == "vera":
        options |= {"r": 256, "seed": 0, "d_initial": 0.1, "targets": targets,
                    "adapted_dtype": "float32"}
    elif name == "full":  # the target matrices in full (every method on the same matrices)
        options |= {"targets": targets, "adapted_dtype": "float32"}
    elif name != "head-only":
        raise ValueError(f"no defaults for method {name!r}")
    return ml_collections.ConfigDict(options)


def adapter_lr(name: str) -> float:
    """Method ``name``'s usual learning rate of its trainable part (module docstring): theta
    5e-3, LoRA 5e-4, VeRA 4e-3, full fine-tuning 5e-5."""
    return {"lora": 5e-4, "vera": 4e-3, "full": 5e-5}.get(name, 5e-3)


def optim(name: str, head_lr: float = 4e-3) -> ml_collections.ConfigDict:
    """The paper's recipe, with each baseline's usual adapter learning rate (``adapter_lr``)."""
    return ml_collections.ConfigDict({
        "adapter_lr": adapter_lr(name),
        "head_lr": head_lr,
        "warmup_frac": 0.06,
        "warmup_steps": config_dict.placeholder(int),  # if set, replaces warmup_frac
        "weight_decay": 0.01 if name == "full" else 0.1,
        "head_weight_decay": 0.0,
        "regularization": "decoupled",
        "max_grad_norm": 0.0,  # 0: no clipping
    })


def distributed() -> ml_collections.ConfigDict:
    """Several processes (``jax.distributed``): the coordinator's address, the process count and
    this process's index; without them, JAX's cluster auto-detection (TPU pod slice, SLURM, Open
    MPI), one process where it finds none (``auto=False``: no detection)."""
    return ml_collections.ConfigDict({"coordinator": "", "num_processes": 0, "process_id": -1,
                                      "auto": True})


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
    cfg.distributed = distributed()
    cfg.method = method(method_name)
    cfg.optim = optim(method_name)
    cfg.train = ml_collections.ConfigDict({
        "batch_size": 32, "grad_accum": 1, "epochs": 3, "steps": 0, "eval_batch_size": 64,
        "checkpoint_every": 100, "keep_last": 2})
    return cfg


def model(name: str, pooling: str = "", num_layers: int = 0) -> ml_collections.ConfigDict:
    """``cfg.model``: a module of ``experiments/models`` and its options (``dropout``: None keeps
    the checkpoint's own rates)."""
    return ml_collections.ConfigDict({"name": name, "pooling": pooling, "num_layers": num_layers,
                                      "dropout": config_dict.placeholder(float)})


def task(dataset: str, metric: str = "accuracy", max_length: int = 64,
         buckets: tuple[int, ...] = (16, 32, 48, 64)) -> ml_collections.ConfigDict:
    """``cfg.task`` of a dataset (whole splits unless cut by the caller)."""
    return ml_collections.ConfigDict({
        "dataset": dataset, "train_split": "train", "validation_split": "validation",
        "test_split": "test", "test_dataset": "", "train_examples": 0, "validation_examples": 0,
        "test_examples": 0, "max_length": max_length, "buckets": buckets, "metric": metric,
        # a user's own data (experiments/data/user.py): dataset="files" with these
        "files": ml_collections.ConfigDict({"train": "", "validation": "", "test": ""}),
        "text_column": "text", "label_column": "label", "split_column": "", "order_file": ""})
