"""Reference adapters and tiny PyTorch-named state dicts for the interop tests, and the reference's
merge written out directly (numpy, no gpart_jax plan) to test against."""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

import gpart_jax as gj

GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "golden"
PEFT_DIR = GOLDEN / "peft_minilm"
ADAPTER = PEFT_DIR / "adapter"
QV = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


def reference_merge(sd, blocks, d, seed, theta, *, bias=False, isometric=True):
    """The reference's merge (REFERENCE.md): ``blocks`` is a list of lists of module names, each
    block a partition with d split by divmod, seeded ``seed + k``, positions from 0."""
    base_d, extra = divmod(d, len(blocks))
    out, offset = {}, 0
    for k, modules in enumerate(blocks):
        d_k = base_d + (k < extra)
        params = [p for m in modules for p in (m + ".weight", m + ".bias")
                  if p.endswith(".weight") or (bias and p in sd)]
        ids = gj.group_ids(0, sum(sd[p].size for p in params), d_k, seed + k)
        n = np.maximum(np.bincount(ids, minlength=d_k), 1).astype(np.float32)
        scale = np.float32(1) / np.sqrt(n) if isometric else np.ones(d_k, np.float32)
        delta = (theta[offset:offset + d_k] * scale)[ids]
        pos = 0
        for p in params:
            out[p] = sd[p] + delta[pos:pos + sd[p].size].reshape(sd[p].shape)
            pos += sd[p].size
        offset += d_k
    return out


def bert_sd(n_layers=3, hidden=4, inter=8, seed=0, prefix="bert."):
    """A tiny BERT-for-classification state dict, keys sorted as a safetensors file has them."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    sd = {f"{prefix}embeddings.word_embeddings.weight": r(20, hidden),
          f"{prefix}embeddings.LayerNorm.weight": r(hidden)}
    for i in range(n_layers):
        p = f"{prefix}encoder.layer.{i}."
        for m in ("self.query", "self.key", "self.value", "output.dense"):
            sd[p + f"attention.{m}.weight"], sd[p + f"attention.{m}.bias"] = r(hidden, hidden), r(hidden)
        sd[p + "attention.output.LayerNorm.weight"] = r(hidden)
        sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"] = r(inter, hidden), r(inter)
        sd[p + "output.dense.weight"], sd[p + "output.dense.bias"] = r(hidden, inter), r(hidden)
        sd[p + "output.LayerNorm.weight"] = r(hidden)
    sd[f"{prefix}pooler.dense.weight"], sd[f"{prefix}pooler.dense.bias"] = r(hidden, hidden), r(hidden)
    sd["classifier.weight"], sd["classifier.bias"] = r(2, hidden), r(2)
    return dict(sorted(sd.items()))


def bert_definition_order(n_layers, prefix="bert."):
    layer = ["attention.self.query", "attention.self.key", "attention.self.value",
             "attention.output.dense", "intermediate.dense", "output.dense"]
    return ([f"{prefix}encoder.layer.{i}.{m}" for i in range(n_layers) for m in layer]
            + [f"{prefix}pooler.dense", "classifier"])


def to_flax(sd, prefix=""):
    """Flax-style params of a torch BERT state dict (kernels = W.T) and the PEFT -> flax name map."""
    params, name_map = {}, {}
    for name, value in sd.items():
        if name.endswith("position_ids"):
            continue
        parts, comps = name.split("."), []
        i = 0
        while i < len(parts):
            if parts[i] == "layer" and i + 1 < len(parts) and parts[i + 1].isdigit():
                comps.append(f"layer_{parts[i + 1]}")
                i += 2
            else:
                comps.append(parts[i])
                i += 1
        if comps[-1] == "weight" and value.ndim == 2 and "embeddings" not in name:
            comps[-1], value = "kernel", value.T
        elif comps[-1] == "weight":
            comps[-1] = "embedding" if value.ndim == 2 else "scale"
        node = params.setdefault("params", {})
        for c in comps[:-1]:
            node = node.setdefault(c, {})
        node[comps[-1]] = jnp.asarray(value)
        name_map[prefix + name] = "/".join(["params", *comps])
    return params, name_map


def minilm_flax(minilm):
    """MiniLM as flax-style params with a 2-class head, and its PEFT name map."""
    params, name_map = to_flax(minilm, prefix="bert.")
    params["params"]["classifier"] = {"kernel": jnp.zeros((384, 2)), "bias": jnp.zeros(2)}
    name_map["classifier.weight"] = "params/classifier/kernel"
    name_map["classifier.bias"] = "params/classifier/bias"
    return params, name_map


def write_adapter(tmp_path, config=None, tensors=None, name="adapter"):
    """A copy of the golden adapter with its config and/or tensors edited."""
    out = tmp_path / name
    shutil.copytree(ADAPTER, out)
    for p in out.iterdir():
        p.chmod(0o644)
    if config is not None:
        doc = json.loads((out / "adapter_config.json").read_text())
        doc.update(config)
        (out / "adapter_config.json").write_text(json.dumps(doc))
    if tensors is not None:
        save_file(tensors(load_file(str(out / "adapter_model.safetensors"))),
                  str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def assert_same_reference_adapter(a, b):
    """Config, theta, saved modules and recorded modules equal, bit for bit."""
    assert a.config == b.config
    assert a.theta.dtype == b.theta.dtype and np.array_equal(a.theta, b.theta)
    assert sorted(a.saved) == sorted(b.saved)
    for k in a.saved:
        assert a.saved[k].dtype == b.saved[k].dtype and np.array_equal(a.saved[k], b.saved[k]), k
    assert a.modules == b.modules


def listing(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir())


def assert_nothing_written(directory, out):
    assert not pathlib.Path(out).exists()
    assert not [p for p in pathlib.Path(directory).iterdir() if p.name.startswith(".")], \
        "temporary files left"
