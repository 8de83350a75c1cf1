"""Property: any method on any small base, saved and loaded, comes back bit for bit."""

import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gpart_jax as gj
from gpart_jax.paths import leaves_with_paths

METHODS = ("gpart", "gpart-noniso", "lora", "unilora", "vera", "fastfood", "full", "head-only")


@st.composite
def cases(draw):
    """``(base, method name, options, saved paths, data seed)`` over a random small model."""
    n_layers = draw(st.integers(1, 3))
    dims = draw(st.lists(st.integers(1, 6), min_size=n_layers + 1, max_size=n_layers + 1))
    base = {"params": {f"dense_{i}": {"kernel": jax.ShapeDtypeStruct((dims[i], dims[i + 1]), jnp.float32),
                                      "bias": jax.ShapeDtypeStruct((dims[i + 1],), jnp.float32)}
                       for i in range(n_layers)}}
    classes = draw(st.integers(1, 4))
    base["params"]["head"] = {"kernel": jax.ShapeDtypeStruct((dims[-1], classes), jnp.float32)}
    n = sum(dims[i] * dims[i + 1] for i in range(n_layers))
    name = draw(st.sampled_from(METHODS))
    targets = gj.All("kernel", gj.Not("head"))
    options = {"targets": targets}
    if name in ("gpart", "gpart-noniso"):
        options |= {"d": draw(st.integers(1, n)), "seed": draw(st.integers(0, 2**64 - 1)),
                    "scheme": draw(st.sampled_from(("stateless", "balanced")))}
    elif name == "lora":
        options |= {"r": draw(st.integers(1, 3))}
    elif name == "unilora":
        r = draw(st.integers(1, 2))
        big_d = r * sum(dims[i] + dims[i + 1] for i in range(n_layers))
        options |= {"r": r, "d": draw(st.integers(1, big_d)), "seed": draw(st.integers(0, 2**32))}
    elif name == "vera":
        options |= {"r": draw(st.integers(1, 4)), "seed": draw(st.integers(0, 2**32))}
    elif name == "fastfood":
        options |= {"d": draw(st.integers(1, n)), "seed": draw(st.integers(0, 2**32))}
    elif name == "head-only":
        options = {}
    with_head = draw(st.booleans()) or name == "head-only"
    return base, name, options, with_head, draw(st.integers(0, 2**32 - 1))


def concrete(tree, rng):
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), tree)


@settings(max_examples=10, deadline=None)
@given(case=cases())
def test_adapter_round_trip(case):
    shapes, name, options, with_head, seed = case
    rng = np.random.default_rng(seed)
    base = concrete(shapes, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty groups
        method = gj.methods.build(name, base, **options)
    trainable = concrete(method.trainable_shapes(), rng)
    saved = {p: np.asarray(v) + 1 for p, v in gj.saved_modules(base, "head").items()} if with_head else {}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = gj.save_adapter(f"{tmp}/a", method, trainable, saved=saved, base_params=base)
        for loaded in (gj.load_adapter(f"{tmp}/a", base_params=base), gj.load_adapter(f"{tmp}/a")):
            assert type(loaded.method) is type(method) and loaded.method.spec() == method.spec()
            assert loaded.metadata == manifest
            assert jax.tree_util.tree_structure(loaded.trainable) == jax.tree_util.tree_structure(trainable)
            for (path, a), (_, b) in zip(leaves_with_paths(loaded.trainable)[0],
                                         leaves_with_paths(trainable)[0], strict=True):
                assert a.dtype == b.dtype and a.tobytes() == np.asarray(b).tobytes(), path
            assert sorted(loaded.saved) == sorted(saved)
            for path, value in saved.items():
                assert loaded.saved[path].tobytes() == value.tobytes(), path
