"""MiniLM-L6 (all-MiniLM-L6-v2) with a new classification head, fine-tuned on a text task.

    --config configs/minilm.py:task=rt,method=gpart       # the default run (the quick start)
    --config configs/minilm.py:task=r8,method=lora

``task``: ``rt`` (Rotten Tomatoes, accuracy), ``r8`` (Reuters R8, Matthews correlation: its
classes are unbalanced, ``earn`` is about half), ``tweets`` (the 2016 election tweets, accuracy),
``20ng`` (20 Newsgroups, accuracy). ``method``: ``gpart`` (isometric, stateless, d = 23,040),
``gpart_noniso`` (no 1/sqrt(n_j)), ``gpart_balanced`` (the balanced partition: groups of
floor/ceil(N/d)), ``gpart_l2`` and ``gpart_noniso_l2`` (``0.1 ||theta||^2`` added to the loss
instead of AdamW's decoupled decay), ``unilora`` (d = 23,040 over rank-4 factors), ``lora``
(r = 8), ``vera`` (r = 256), ``full`` (the query and value kernels in full) and ``head_only``.
Every method adapts the query and value kernels of the 6 layers (N = 1,769,472 weights, about 77
a group at d = 23,040) and trains the new 2-class head (770 weights) in full. Rates and the rest:
``configs/common.py``.

Each task is cut to fit a 2-core CPU, the same for every method (so they compare at one budget
of steps; the run's name is ``minilm_<task>_<method>``):

* ``rt``: a fixed subset of 5,632 of the 10,243 training snippets, 2 epochs (352 steps of 32), 64
  tokens (99% of the snippets fit; length buckets 16/32/48/64); the whole validation (1,228) and
  test (1,281) splits. Sized from the step time measured here (about 0.85 s a step on average
  over an epoch's buckets); the default run, ``experiments/results/main_job/minilm_rt_gpart.json``,
  took 351 s for its steps. Without the cut (3 epochs of all 10,243) the steps would take about
  15 minutes here.
* ``r8``: a fixed subset of 2,048 of the 4,898 training articles, 2 epochs (128 steps), the first
  64 tokens (the headline and lead); validation (517) and test (2,189) whole.
* ``tweets``: the whole 5,134 / 656 / 644 tweets, 64 tokens, 2 epochs (322 steps).
* ``20ng``: a fixed subset of 2,048 of the 10,138 training posts, 2 epochs, the first 64 tokens;
  validation (1,124) and test (7,528) whole.
"""

from __future__ import annotations

from configs import common
from experiments.config import parse_arg

TASKS = {  # task -> (dataset, metric, training examples (0: all), epochs)
    "rt": ("rotten_tomatoes", "accuracy", 5_632, 2),
    "r8": ("r8", "mcc", 2_048, 2),
    "tweets": ("election_tweets", "accuracy", 0, 2),
    "20ng": ("20newsgroups", "accuracy", 2_048, 2),
}
VARIANTS = {  # method argument -> (gpart_jax method, changes to the method and optimizer)
    "gpart_balanced": ("gpart", {"method.scheme": "balanced"}),
    "gpart_l2": ("gpart", {"optim.regularization": "l2"}),
    "gpart_noniso_l2": ("gpart-noniso", {"optim.regularization": "l2"}),
}
METHODS = (*common.METHODS, *VARIANTS)


def get_config(arg: str | None = None):
    args = parse_arg(arg, {"task": tuple(TASKS), "method": METHODS})
    dataset, metric, examples, epochs = TASKS[args["task"]]
    method, changes = VARIANTS.get(args["method"], (common.METHODS.get(args["method"]), {}))
    cfg = common.base(f"minilm_{args['task']}_{args['method']}", method)
    cfg.model = common.model("minilm", pooling="pooler")
    cfg.task = common.task(dataset, metric, max_length=64)
    cfg.task.train_examples = examples
    cfg.train.epochs = epochs
    for key, value in changes.items():
        part, leaf = key.split(".")
        cfg[part][leaf] = value
    return cfg
