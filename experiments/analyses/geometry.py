"""Singular values of the Jacobian ``d vec(Delta W) / d(trainable)`` on one layer: GPart, LoRA, Uni-LoRA.

    python -m experiments.analyses.geometry            # writes results/geometry.json and geometry.png
    python -m experiments.analyses.geometry --render   # prints the README table from the JSON
    python -m experiments.analyses.geometry --replot   # redraws geometry.png from the JSON
    python -m experiments.analyses.geometry --num-layers 1 --layer 0 --steps 3 --out /tmp/g.json

The layer: the top-left ``64 x 64`` block of MiniLM's layer-5 query kernel (rows: the first 64
input features; columns: the outputs of attention heads 0 and 1), ``N = 4,096`` weights, so that
the Jacobian (``4,096 x 512``) is dense and its singular values exact (``numpy.linalg.svd`` in
float64 of the ``jax.jacrev`` Jacobian; GPart's custom VJP has no forward mode). Every case has 512
trainable numbers:

* ``gpart``: GPart over the block alone, d = 512 (stateless scheme, seed 0): ``J = P`` with
  ``P^T P = I``, every singular value 1.
* ``gpart-noniso``: the same partition without ``1/sqrt(n_j)``: singular values ``sqrt(n_j)``.
* ``gpart-global``: one GPart, d = 512, over the 64 x 64 blocks of all 12 query and value kernels
  (6 layers; N = 49,152, N/d = 96, near MiniLM's 1,769,472 / 23,040 = 77), its Jacobian
  restricted to the same block. Not an isometry: the columns keep disjoint supports, so the
  singular values are ``sqrt(k_j / n_j)``, ``k_j`` the members of group ``j`` in the block.
* ``lora``: r = 4, ``Delta W = B A`` (``alpha = r``), trainable ``(A, B)``: at init ``B = 0``, so
  ``d/dA = I (x) B = 0`` (256 zero singular values) and ``d/dB = A^T (x) I`` gives the singular
  values of ``A``, each 64 times. After training both parts are nonzero; ``r^2 = 16`` directions
  ``(G A, -B G)`` (the factorisation's gauge) stay in the kernel for full-rank ``A``, ``B``.
* ``unilora``: d = 512 over the r = 8 factors (``D = 1,024``, groups of 2), theta uniform in
  +-0.02 at init: ``J = J_{BA}(P theta) P``, which scales with theta.

"After training": each trained case is a ``BlockMethod`` (the case's map on the block, written
into MiniLM's kernel; every other weight frozen) in the task of ``configs/minilm.py:task=rt``
(``experiments.tasks.build_task``: the new 2-class head trained in full; a fixed subset of 1,024
Rotten Tomatoes training texts, up to 64 tokens, batch 32), trained by the trainer's own step
(``experiments.train.Runner``, ``experiments.step.make_train_step``) for 300 steps of the
config's AdamW recipe with adapter learning rate 5e-3 for GPart and Uni-LoRA, 5e-4 for LoRA, and
head 1e-2, dropout on. The trainable starts from the trainer's ``fold_in(key(seed), 1)``.
Validation accuracy on a fixed subset of 512 validation texts. GPart's Jacobian does not depend
on theta (the map is linear); it is trained too, to show it. The non-isometric and global GPart
maps are linear as well and are not trained.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

import gpart_jax as gj
from experiments.analyses import run_analysis
from gpart_jax.paths import leaves_with_paths

CONFIG = "configs/minilm.py:task=rt,method=gpart"  # the task; each case replaces its method
TARGETS = ("query/kernel", "value/kernel")
MINILM_KERNEL = "params/bert/encoder/layer/{layer}/attention/self/{module}/kernel"
ZERO_TOL = 1e-6  # singular values below ZERO_TOL * max count as exact zeros
ONE_TOL = 1e-5  # |s - 1| below this counts as a one
LR = {"gpart": 5e-3, "unilora": 5e-3, "lora": 5e-4}  # adapter learning rates
HEAD_LR = 1e-2
STEPS = 300


def block_bases(kernels: dict[tuple[int, str], np.ndarray], size: int, layer: int):
    """The one-layer base ``{"params": {"layer": {layer: {"query": {"kernel"}}}}}`` and the global
    base holding every ``(layer, module)`` block; each block is ``kernel[:size, :size]``."""
    def tree(items):
        out: dict[str, Any] = {}
        for (i, module), w in items:
            out.setdefault(str(i), {})[module] = {"kernel": jnp.asarray(w[:size, :size], jnp.float32)}
        return {"params": {"layer": out}}

    one = tree([((layer, "query"), kernels[(layer, "query")])])
    return one, tree(sorted(kernels.items()))


def block_path(layer: int) -> str:
    """Path of the adapted block in the bases of ``block_bases``."""
    return f"params/layer/{layer}/query/kernel"


def build_cases(one, glob, d: int, lora_r: int, unilora_r: int, seed: int = 0) -> dict[str, dict]:
    """The five maps of the module docstring: ``{name: {"method", "base", "options", "train"}}``."""
    def case(name, base, train, **options):
        method = gj.methods.build(name, base, targets=TARGETS, seed=seed, **options)
        return {"method": method, "base": base, "options": options, "train": train}

    return {
        "gpart": case("gpart", one, True, d=d),
        "gpart-noniso": case("gpart-noniso", one, False, d=d),
        "gpart-global": case("gpart", glob, False, d=d),
        "lora": case("lora", one, True, r=lora_r),
        "unilora": case("unilora", one, True, d=d, r=unilora_r),
    }


def jacobian(method: gj.Method, adapter, base, path: str) -> np.ndarray:
    """Dense ``d vec(Delta W_path) / d vec(adapter)`` (float64 copy of the float32 ``jacrev``).

    ``Delta W`` is ``method.apply(adapter, 0)`` at ``path`` (every method here is additive), the
    adapter flattened with ``ravel_pytree``; row and column orders do not change singular values.
    """
    flat, unravel = ravel_pytree(adapter)
    zero = jax.tree_util.tree_map(jnp.zeros_like, base)

    def delta(v):
        return dict(leaves_with_paths(method.apply(unravel(v), zero))[0])[path].reshape(-1)

    return np.asarray(jax.jit(jax.jacrev(delta))(flat), np.float64)


def singular_values(jac: np.ndarray) -> np.ndarray:
    """All ``min(rows, cols)`` singular values, largest first."""
    return np.linalg.svd(jac, compute_uv=False)


def expected_singular_values(name: str, method: gj.Method, adapter, path: str) -> np.ndarray | None:
    """Closed forms: GPart 1; non-isometric ``sqrt(n_j)``; global restricted ``sqrt(k_j / n_j)``;
    LoRA with ``B = 0``: ``s(A)`` each ``out`` times, then ``r * in`` zeros. ``None`` otherwise."""
    if name in ("gpart", "gpart-noniso", "gpart-global"):
        gp = method
        sizes = gp.group_sizes.astype(np.float64)
        if name == "gpart":
            return np.sort(np.where(sizes > 0, 1.0, 0.0))[::-1]
        if name == "gpart-noniso":
            return np.sort(np.sqrt(sizes))[::-1]
        ids, offset = gp.global_group_ids(), 0
        for e in gp.layout:
            if e.path == path:
                break
            offset += math.prod(e.shape)
        entry = next(e for e in gp.layout if e.path == path)
        k = np.bincount(ids[offset:offset + math.prod(entry.shape)], minlength=gp.d)
        return np.sort(np.sqrt(k / np.maximum(sizes, 1)))[::-1]
    if name == "lora":
        (factors,) = adapter.values()
        if np.any(np.asarray(factors["B"])):
            return None
        a = np.asarray(factors["A"], np.float64) * method.scale
        n_out = factors["B"].shape[0]
        s_a = np.linalg.svd(a, compute_uv=False)
        return np.concatenate([np.repeat(s_a, n_out), np.zeros(a.size)])
    return None


def summarize(sv: np.ndarray) -> dict[str, Any]:
    """min, max, condition number (``None`` if a value is 0), over the nonzero values too, counts."""
    sv = np.sort(np.asarray(sv, np.float64))[::-1]
    top = float(sv[0])
    nonzero = sv[sv > ZERO_TOL * top] if top > 0 else sv[:0]
    return {
        "n": int(sv.size), "min": float(sv[-1]), "max": top, "median": float(np.median(sv)),
        "zeros": int(sv.size - nonzero.size), "ones": int(np.sum(np.abs(sv - 1.0) < ONE_TOL)),
        "condition": top / float(sv[-1]) if nonzero.size == sv.size else None,
        "min_nonzero": float(nonzero[-1]) if nonzero.size else None,
        "condition_nonzero": top / float(nonzero[-1]) if nonzero.size else None,
    }


class BlockMethod(gj.Method):
    """A method on a block, written into a bigger model: ``inner`` adapts ``block_base`` (the
    ``size x size`` block of one kernel, at ``block_path``) and ``apply`` puts the adapted block
    into the top-left corner of the model's kernel at ``kernel_path``; every other weight is the
    base's. Its trainable is ``inner``'s."""

    inner: gj.Method
    block_base: Any
    block_path: str = struct.field(pytree_node=False)
    kernel_path: str = struct.field(pytree_node=False)
    kernel_shape: tuple[int, ...] = struct.field(pytree_node=False)
    size: int = struct.field(pytree_node=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    @property
    def adapted(self):
        return ((self.kernel_path, self.kernel_shape),)

    def init(self, key: jax.Array | None = None):
        return self.inner.init(key)

    def apply(self, trainable, base_params):
        block = dict(leaves_with_paths(self.inner.apply(trainable, self.block_base))[0])[self.block_path]
        flat, treedef = leaves_with_paths(base_params)
        s = self.size
        leaves = [jnp.asarray(leaf).at[:s, :s].set(block) if p == self.kernel_path else leaf
                  for p, leaf in flat]
        return jax.tree_util.tree_unflatten(treedef, leaves)


# --------------------------------------------------------------------------- training

def task_overrides(steps: int, num_train: int, num_val: int, batch: int, num_layers: int) -> list[str]:
    """The config overrides of the geometry task (module docstring)."""
    return [f"--config.train.steps={steps}", f"--config.train.batch_size={batch}",
            f"--config.task.train_examples={num_train}", f"--config.task.validation_examples={num_val}",
            "--config.task.test_examples=8", f"--config.optim.head_lr={HEAD_LR}",
            f"--config.model.num_layers={num_layers}"]


def train_case(task, cfg, steps: int) -> dict:
    """Train ``task`` (its method a ``BlockMethod``) for ``steps`` steps with the trainer's step;
    returns the initial and trained ``(trainable, saved)``, the losses and validation accuracies."""
    from experiments.train import Runner

    runner = Runner(task, cfg)
    state = runner.init_state(steps)
    init = (jax.device_get(state["trainable"]), jax.device_get(state["saved"]))
    stream = task.splits["train"].stream()
    losses = []
    for _ in range(steps):
        _, batch = next(stream)
        state, out = runner.train_step(state, batch)
        losses.append(float(out["loss"]))
    trained = (jax.device_get(state["trainable"]), jax.device_get(state["saved"]))
    return {"init": init, "trained": trained, "losses": losses,
            "val_accuracy_init": runner.evaluate(*init, "validation")["accuracy"],
            "val_accuracy_trained": runner.evaluate(*trained, "validation")["accuracy"]}


# --------------------------------------------------------------------------- run

def analyse(name: str, case: dict, adapter, path: str) -> dict:
    """Singular values, summary and (where a closed form exists) its largest deviation."""
    sv = singular_values(jacobian(case["method"], adapter, case["base"], path))
    out = {"summary": summarize(sv), "singular_values": [float(f"{x:.6g}") for x in sv]}
    expected = expected_singular_values(name, case["method"], adapter, path)
    if expected is not None:
        out["closed_form_max_abs_error"] = float(np.max(np.abs(sv - expected)))
    return out


def run(size: int = 64, d: int = 512, lora_r: int = 4, unilora_r: int = 8, layer: int = 5,
        steps: int = STEPS, num_train: int = 1024, num_val: int = 512, batch: int = 32,
        num_layers: int = 0, log=print) -> dict:
    """The whole experiment: the result document. ``num_layers`` > 0 keeps MiniLM's first layers
    (a quick check; ``layer`` must be one of them)."""
    from experiments.config import load_config
    from experiments.tasks import build_task

    overrides = task_overrides(steps, num_train, num_val, batch, num_layers)
    task = build_task(load_config(CONFIG, overrides))
    flat = dict(leaves_with_paths(task.base)[0])
    layers = [i for i in range(64) if MINILM_KERNEL.format(layer=i, module="query") in flat]
    kernels = {(i, m): np.asarray(flat[MINILM_KERNEL.format(layer=i, module=m)])
               for i in layers for m in ("query", "value")}
    kernel_path = MINILM_KERNEL.format(layer=layer, module="query")
    one, glob = block_bases(kernels, size, layer)
    path = block_path(layer)
    cases = build_cases(one, glob, d, lora_r, unilora_r)
    init_key = jax.random.fold_in(jax.random.key(task.cfg.seed), 1)  # the trainer's
    doc_cases = {}
    for name, case in cases.items():
        method = case["method"]
        adapter0 = method.init(init_key)
        entry: dict[str, Any] = {
            "method": method.name, "options": case["options"], "trainable": method.num_trainable,
            "adapted_in_map": method.num_adapted, "rows": size * size,
            "num_empty_groups": getattr(method, "num_empty_groups", None),
            "init": analyse(name, case, adapter0, path)}
        if case["train"]:
            cfg = load_config(CONFIG, [*overrides, f"--config.optim.adapter_lr={LR[name]}"])
            in_model = BlockMethod(inner=method, block_base=one, block_path=path,
                                   kernel_path=kernel_path, kernel_shape=tuple(flat[kernel_path].shape),
                                   size=size)
            block_task = dataclasses.replace(task, cfg=cfg, method=in_model)
            start = time.perf_counter()
            result = train_case(block_task, cfg, steps)
            losses = result["losses"]
            trained = result["trained"][0]
            delta = ravel_pytree(jax.tree_util.tree_map(jnp.subtract, trained, result["init"][0]))[0]
            entry["training"] = {
                "steps": steps, "adapter_lr": LR[name], "head_lr": HEAD_LR,
                "seconds": time.perf_counter() - start,
                "loss_first_20": float(np.mean(losses[:20])), "loss_last_20": float(np.mean(losses[-20:])),
                "val_accuracy_init": result["val_accuracy_init"],
                "val_accuracy_trained": result["val_accuracy_trained"],
                "adapter_change_norm": float(jnp.linalg.norm(delta)),
                "losses": [round(x, 4) for x in losses]}
            entry["trained"] = analyse(name, case, trained, path)
            log(f"{name}: trained {steps} steps in {entry['training']['seconds']:.0f} s, loss "
                f"{entry['training']['loss_first_20']:.3f} -> {entry['training']['loss_last_20']:.3f}")
        log(f"{name}: init {entry['init']['summary']}"
            + (f"; trained {entry['trained']['summary']}" if "trained" in entry else ""))
        doc_cases[name] = entry
    t = task.cfg.task
    return {
        "setup": {"layer": f"{kernel_path}[:{size}, :{size}]",
                  "size": size, "d": d, "lora_r": lora_r, "unilora_r": unilora_r,
                  "global_blocks": f"query and value of layers {layers[0]}-{layers[-1]}, each "
                                   f"[:size, :size]",
                  "config": CONFIG, "overrides": overrides,
                  "training": f"Rotten Tomatoes, {t.train_examples} train texts (a fixed subset), up to "
                              f"{t.max_length} tokens, batch {batch}, {steps} steps; val accuracy on "
                              f"{t.validation_examples} validation texts",
                  "zero_tol_relative": ZERO_TOL, "one_tol": ONE_TOL},
        "jax": jax.__version__, "loadavg": list(os.getloadavg()), "cases": doc_cases,
    }


# --------------------------------------------------------------------------- outputs

LABELS = {"gpart": "GPart (block alone)", "gpart-noniso": "GPart non-isometric",
          "gpart-global": "global GPart, restricted to the block", "lora": "LoRA", "unilora": "Uni-LoRA"}


def render(doc: dict) -> str:
    """The README table: one row per case and state (init, trained)."""
    def fmt(x):
        return "-" if x is None else f"{x:.3g}"

    lines = ["| map | trainable | state | min | max | condition (nonzero) | zeros | ones |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in doc["cases"].items():
        for state in ("init", "trained"):
            if state not in c:
                continue
            s = c[state]["summary"]
            lines.append(f"| {LABELS[name]} | {c['trainable']:,} | {state} | {fmt(s['min'])} | "
                         f"{fmt(s['max'])} | {fmt(s['condition_nonzero'])} | {s['zeros']} | {s['ones']} |")
    return "\n".join(lines)


def plot(doc: dict, path: pathlib.Path) -> None:
    """Sorted singular values, log scale: GPart's linear maps (left), init vs trained (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = doc["cases"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)

    def draw(ax, name, state, **style):
        sv = np.asarray(cases[name][state]["singular_values"])
        top = sv.max()
        keep = sv > ZERO_TOL * top
        zeros = int(np.sum(~keep))
        label = f"{LABELS[name]}, {state}" + (f" ({zeros} zeros not drawn)" if zeros else "")
        ax.plot(np.arange(1, sv.size + 1)[keep], sv[keep], label=label, **style)

    left, right = axes
    draw(left, "gpart", "init", color="tab:red", lw=2.5)
    draw(left, "gpart-noniso", "init", color="tab:orange", lw=1.5)
    draw(left, "gpart-global", "init", color="tab:purple", lw=1.5)
    left.set_title("GPart: linear maps (the same at init and after training)")
    draw(right, "gpart", "trained", color="tab:red", lw=2.5)
    for name, color in (("lora", "tab:green"), ("unilora", "tab:blue")):
        draw(right, name, "init", color=color, lw=1.5)
        draw(right, name, "trained", color=color, lw=1.5, ls="--")
    right.set_title("bilinear maps: at init and after training")
    s = doc["setup"]
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("index (singular values sorted, largest first)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    left.set_ylabel(f"singular value of d vec(Delta W) / d trainable\n({s['size']} x {s['size']} block, "
                    f"{s['d']} trainable)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    def arguments(parser):
        parser.add_argument("--steps", type=int, default=STEPS)
        parser.add_argument("--layer", type=int, default=5, help="the layer whose query block is adapted")
        parser.add_argument("--num-layers", type=int, default=0,
                            help="keep MiniLM's first layers only (0: all), for a quick check")

    def measure(args) -> dict:
        start = time.perf_counter()
        doc = {"command": args.command,
               **run(layer=args.layer, steps=args.steps, num_layers=args.num_layers)}
        doc["wall_seconds"] = time.perf_counter() - start
        return doc

    return run_analysis("geometry", measure, render, plot, description=__doc__,
                        arguments=arguments, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
