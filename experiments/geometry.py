"""Singular values of the Jacobian ``d vec(Delta W) / d(trainable)`` on one layer: GPart, LoRA, Uni-LoRA.

    python experiments/geometry.py            # writes results/geometry.json and geometry.png
    python experiments/geometry.py --render   # prints the README table from the JSON
    python experiments/geometry.py --replot   # redraws geometry.png from the JSON

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

"After training": each trained case adapts only this block inside MiniLM (all other weights
frozen, the new 2-class head trained in full), on Rotten Tomatoes (1,024 training texts drawn with
seed 0, 64 tokens, batch 32, 300 AdamW steps from ``gpart_jax.optim.make_optimizer``: adapter
learning rate 5e-3 for GPart and Uni-LoRA, 5e-4 for LoRA, head 1e-2, dropout on). GPart's
Jacobian does not depend on theta (the map is linear); it is trained too, to show it. The
non-isometric and global GPart maps are linear as well and are not trained.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import gpart_jax.methods as M
from gpart_jax import trainable as T
from gpart_jax.layout import flatten_with_paths
from gpart_jax.optim import make_optimizer

RESULTS = pathlib.Path(__file__).parent / "results"
OUT = RESULTS / "geometry.json"
FIGURE = RESULTS / "geometry.png"
TARGETS = ("query/kernel", "value/kernel")
MINILM_KERNEL = "params/bert/encoder/layer/{layer}/attention/self/{module}/kernel"
ZERO_TOL = 1e-6  # singular values below ZERO_TOL * max count as exact zeros
ONE_TOL = 1e-5  # |s - 1| below this counts as a one


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
        method = M.build(name, base, targets=TARGETS, seed=seed, **options)
        return {"method": method, "base": base, "options": options, "train": train}

    return {
        "gpart": case("gpart", one, True, d=d),
        "gpart-noniso": case("gpart-noniso", one, False, d=d),
        "gpart-global": case("gpart", glob, False, d=d),
        "lora": case("lora", one, True, r=lora_r),
        "unilora": case("unilora", one, True, d=d, r=unilora_r),
    }


def jacobian(method: M.Method, adapter, base, path: str) -> np.ndarray:
    """Dense ``d vec(Delta W_path) / d vec(adapter)`` (float64 copy of the float32 ``jacrev``).

    ``Delta W`` is ``method.apply(adapter, 0)`` at ``path`` (every method here is additive), the
    adapter flattened with ``ravel_pytree``; row and column orders do not change singular values.
    """
    flat, unravel = ravel_pytree(adapter)
    zero = jax.tree_util.tree_map(jnp.zeros_like, base)

    def delta(v):
        return dict(flatten_with_paths(method.apply(unravel(v), zero))[0])[path].reshape(-1)

    return np.asarray(jax.jit(jax.jacrev(delta))(flat), np.float64)


def singular_values(jac: np.ndarray) -> np.ndarray:
    """All ``min(rows, cols)`` singular values, largest first."""
    return np.linalg.svd(jac, compute_uv=False)


def expected_singular_values(name: str, method: M.Method, adapter, path: str) -> np.ndarray | None:
    """Closed forms: GPart 1; non-isometric ``sqrt(n_j)``; global restricted ``sqrt(k_j / n_j)``;
    LoRA with ``B = 0``: ``s(A)`` each ``out`` times, then ``r * in`` zeros. ``None`` otherwise."""
    if name in ("gpart", "gpart-noniso", "gpart-global"):
        gp = method.gpart
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


# --------------------------------------------------------------------------- training

def train(loss_fn: Callable, trainable: dict, batches: Iterator, steps: int, adapter_lr: float,
          saved_lr: float = 1e-2) -> tuple[dict, list[float]]:
    """``steps`` jitted AdamW steps of ``loss_fn(trainable, batch, key)`` (``make_optimizer``).

    Returns the trained ``trainable`` and the loss of every step.
    """
    opt = make_optimizer(trainable, total_steps=steps, adapter_lr=adapter_lr, saved_lr=saved_lr)
    opt_state = opt.init(trainable)

    @jax.jit
    def step(trainable, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(trainable, batch, key)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    losses = []
    for i in range(steps):
        trainable, opt_state, loss = step(trainable, opt_state, next(batches), jax.random.key(i))
        losses.append(float(loss))
    return trainable, losses


def minilm_task(size: int, layer: int, num_train: int, num_val: int, seq_len: int, batch: int,
                seed: int = 0) -> dict:
    """MiniLM, its q/v blocks, and Rotten Tomatoes batches for training the block in place."""
    from experiments import data
    from experiments.data.text import WordPieceTokenizer
    from experiments.models.bert import load_minilm

    model, params = load_minilm(num_labels=2)
    flat = dict(flatten_with_paths(params)[0])
    kernels = {(i, m): np.asarray(flat[MINILM_KERNEL.format(layer=i, module=m)])
               for i in range(6) for m in ("query", "value")}
    tok = WordPieceTokenizer.minilm(max_length=seq_len)

    def encode(split, n):
        ds = data.load("rotten_tomatoes", split)
        idx = np.random.default_rng(seed).permutation(len(ds))[:n]
        rows = [ds[int(i)] for i in idx]
        enc = tok.encode_padded([r["text"] for r in rows])
        enc["label"] = np.asarray([r["label"] for r in rows], np.int32)
        return enc

    train_set, val_set = encode("train", num_train), encode("validation", num_val)

    def batches():
        rng = np.random.default_rng(seed)
        while True:
            idx = rng.choice(num_train, batch, replace=False)
            yield {k: jnp.asarray(v[idx]) for k, v in train_set.items()}

    return {"model": model, "params": params, "kernels": kernels, "batches": batches,
            "val": {k: jnp.asarray(v) for k, v in val_set.items()},
            "kernel_path": MINILM_KERNEL.format(layer=layer, module="query")}


def minilm_loss(task: dict, method: M.Method, block_base, path: str, size: int):
    """``loss(trainable, batch, key)``: MiniLM with ``kernel[:size, :size]`` the adapted block."""
    model, params, kernel_path = task["model"], task["params"], task["kernel_path"]

    def full(trainable):
        block = dict(flatten_with_paths(method.apply(trainable["adapter"], block_base))[0])[path]
        flat, treedef = flatten_with_paths(params)
        leaves = [leaf.at[:size, :size].set(block) if p == kernel_path else leaf for p, leaf in flat]
        return T.join(trainable["saved"], jax.tree_util.tree_unflatten(treedef, leaves))

    def logits(trainable, batch, key=None):
        rngs = {"dropout": key} if key is not None else None
        return model.apply(full(trainable), batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"], deterministic=key is None, rngs=rngs)

    def loss(trainable, batch, key):
        return optax.softmax_cross_entropy_with_integer_labels(
            logits(trainable, batch, key), batch["label"]).mean()

    return loss, jax.jit(logits)


def accuracy(logits_fn, trainable, val: dict, batch: int = 64) -> float:
    """Accuracy of ``logits_fn`` (no dropout) on the ``val`` arrays."""
    n = val["label"].shape[0]
    correct = 0
    for s in range(0, n, batch):
        part = {k: v[s:s + batch] for k, v in val.items()}
        correct += int(jnp.sum(jnp.argmax(logits_fn(trainable, part), -1) == part["label"]))
    return correct / n


# --------------------------------------------------------------------------- run

LR = {"gpart": 5e-3, "unilora": 5e-3, "lora": 5e-4}  # adapter learning rates
HEAD_LR = 1e-2
STEPS = 300


def analyse(name: str, case: dict, adapter, path: str) -> dict:
    """Singular values, summary and (where a closed form exists) its largest deviation."""
    sv = singular_values(jacobian(case["method"], adapter, case["base"], path))
    out = {"summary": summarize(sv), "singular_values": [float(f"{x:.6g}") for x in sv]}
    expected = expected_singular_values(name, case["method"], adapter, path)
    if expected is not None:
        out["closed_form_max_abs_error"] = float(np.max(np.abs(sv - expected)))
    return out


def run(size: int = 64, d: int = 512, lora_r: int = 4, unilora_r: int = 8, layer: int = 5,
        steps: int = STEPS, num_train: int = 1024, num_val: int = 512, seq_len: int = 64,
        batch: int = 32, log=print) -> dict:
    """The whole experiment: the result document."""
    task = minilm_task(size, layer, num_train, num_val, seq_len, batch)
    one, glob = block_bases(task["kernels"], size, layer)
    path = block_path(layer)
    cases = build_cases(one, glob, d, lora_r, unilora_r)
    saved0, _ = T.split(task["params"], ("classifier",))
    doc_cases = {}
    for name, case in cases.items():
        method = case["method"]
        adapter0 = method.init(jax.random.key(0))
        entry: dict[str, Any] = {
            "method": method.name, "options": case["options"], "trainable": M.count(method)["trainable"],
            "adapted_in_map": method.num_adapted, "rows": size * size,
            "num_empty_groups": getattr(getattr(method, "gpart", None), "num_empty_groups", None),
            "init": analyse(name, case, adapter0, path)}
        if case["train"]:
            loss_fn, logits_fn = minilm_loss(task, method, one, path, size)
            trainable0 = {"adapter": adapter0, "saved": saved0}
            start = time.perf_counter()
            trained, losses = train(loss_fn, trainable0, task["batches"](), steps, LR[name], HEAD_LR)
            delta = ravel_pytree(jax.tree_util.tree_map(
                jnp.subtract, trained["adapter"], adapter0))[0]
            entry["training"] = {
                "steps": steps, "adapter_lr": LR[name], "head_lr": HEAD_LR,
                "seconds": time.perf_counter() - start,
                "loss_first_20": float(np.mean(losses[:20])), "loss_last_20": float(np.mean(losses[-20:])),
                "val_accuracy_init": accuracy(logits_fn, trainable0, task["val"]),
                "val_accuracy_trained": accuracy(logits_fn, trained, task["val"]),
                "adapter_change_norm": float(jnp.linalg.norm(delta)),
                "losses": [round(x, 4) for x in losses]}
            entry["trained"] = analyse(name, case, trained["adapter"], path)
            log(f"{name}: trained {steps} steps in {entry['training']['seconds']:.0f} s, loss "
                f"{entry['training']['loss_first_20']:.3f} -> {entry['training']['loss_last_20']:.3f}")
        log(f"{name}: init {entry['init']['summary']}"
            + (f"; trained {entry['trained']['summary']}" if "trained" in entry else ""))
        doc_cases[name] = entry
    return {
        "command": "python experiments/geometry.py",
        "setup": {"layer": f"{MINILM_KERNEL.format(layer=layer, module='query')}[:{size}, :{size}]",
                  "size": size, "d": d, "lora_r": lora_r, "unilora_r": unilora_r,
                  "global_blocks": "query and value of layers 0-5, each [:size, :size]",
                  "training": f"Rotten Tomatoes, {num_train} train texts (seed 0), {seq_len} tokens, "
                              f"batch {batch}, {steps} steps; val accuracy on {num_val} validation texts",
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    ap.add_argument("--figure", type=pathlib.Path, default=None,
                    help=f"PNG to write (default {FIGURE} when --out is the default)")
    ap.add_argument("--render", action="store_true", help="print the README table from --out")
    ap.add_argument("--replot", action="store_true", help="redraw the figure from --out")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(args.out.read_text())))
        return
    figure = args.figure or (FIGURE if args.out == OUT else args.out.with_suffix(".png"))
    if args.replot:
        plot(json.loads(args.out.read_text()), figure)
        return
    start = time.perf_counter()
    doc = run(steps=args.steps)
    doc["wall_seconds"] = time.perf_counter() - start
    if args.steps != STEPS:
        doc["command"] += f" --steps {args.steps}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, figure)
    print(render(doc))


if __name__ == "__main__":
    main()
