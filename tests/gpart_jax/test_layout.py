"""Layout: the global order of the adapted weights (natural, explicit), element order, biases that
follow their kernels, the fingerprint, checks against params, and planning from shapes only."""

import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import gpart_jax as gj
from gpart_jax import layout
from gpart_jax.core import _local_index
from gpart_jax.layout import LayoutEntry

GOLDEN = pathlib.Path(__file__).parents[1] / "golden"
QV = ("query/kernel", "value/kernel")


def bert_like(n_layers=3, hidden=8):
    def layer():
        return {"attention": {m: {"kernel": jnp.ones((hidden, hidden)), "bias": jnp.zeros(hidden)}
                              for m in ("query", "key", "value")},
                "ffn": {"kernel": jnp.ones((hidden, 2 * hidden)), "bias": jnp.zeros(2 * hidden)}}
    return {"params": {
        "embeddings": {"embedding": jnp.ones((50, hidden))},
        "encoder": {f"layer_{i}": layer() for i in range(n_layers)},
        "classifier": {"kernel": jnp.ones((hidden, 2)), "bias": jnp.zeros(2)},
        "step": jnp.zeros((), jnp.int32),
    }}


def test_layout_uses_natural_order_not_pytree_order():
    params = {f"layer_{i}": {"kernel": jnp.ones((2, 2))} for i in (10, 2, 1)}
    entries = layout.build(params, "kernel")
    assert [e.path for e in entries] == ["layer_1/kernel", "layer_2/kernel", "layer_10/kernel"]
    assert gj.GPart.create(params, d=3, targets="kernel").layout == entries
    assert all(e.element_order == "native" and not e.is_bias for e in entries)


def test_only_floating_point_leaves_can_be_adapted():
    with pytest.raises(gj.TargetError, match="floating-point.*params/step"):
        gj.GPart.create(bert_like(), d=4, targets="step")


def test_nnx_state_and_linen_dict_give_the_same_layout():
    class Layer(nnx.Module):
        def __init__(self, rngs):
            self.query = nnx.Linear(4, 4, rngs=rngs)
            self.value = nnx.Linear(4, 4, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([Layer(rngs) for _ in range(2)])

    model = Model(nnx.Rngs(0))
    as_dict = {"layers": {str(i): {m: {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}
                                   for m in ("query", "value")} for i in range(2)}}
    expected = gj.GPart.create(as_dict, d=5, targets="kernel").layout
    assert expected[0].path == "layers/0/query/kernel"
    for tree in (nnx.state(model, nnx.Param), nnx.state(model), model):
        assert gj.GPart.create(tree, d=5, targets="kernel").layout == expected


def test_an_nnx_module_passed_directly_works_for_create_and_apply():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.query = nnx.Linear(4, 4, rngs=rngs)
            self.value = nnx.Linear(4, 3, rngs=rngs)
            self.head = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.head(self.value(jnp.tanh(self.query(x))))

    model = Model(nnx.Rngs(0))
    gp = gj.GPart.create(model, d=5, targets=("query", "value"))
    assert gp.target_paths == ("query/kernel", "value/kernel")
    theta = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)
    x = jnp.ones((2, 4))
    adapted = jax.jit(gp.apply)(theta, model)  # a Module is a pytree: it passes through jit
    assert isinstance(adapted, Model) and adapted is not model
    deltas = dict(zip(gp.target_paths, jax.jit(gp.deltas)(theta), strict=True))
    np.testing.assert_allclose(adapted.query.kernel[...], model.query.kernel[...] + deltas["query/kernel"])
    np.testing.assert_array_equal(adapted.head.kernel[...], model.head.kernel[...])
    # The base module is not modified; the adapted one runs, under jit and grad too.
    assert not np.allclose(adapted.value.kernel[...], model.value.kernel[...])
    out = jax.jit(lambda t: gp.apply(t, model)(x))(theta)
    np.testing.assert_allclose(out, adapted(x), rtol=1e-6)
    grad = jax.jit(jax.grad(lambda t: gp.apply(t, model)(x).sum()))(theta)
    assert grad.shape == (5,) and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_torch_element_order_documented_index():
    params = {"lin": {"kernel": jnp.zeros((3, 5)), "bias": jnp.zeros(5)},
              "emb": {"embedding": jnp.zeros((4, 2))}}
    entries = layout.build(params, ("kernel", "embedding"), element_order="torch")
    orders = {e.path: e.element_order for e in entries}
    assert orders == {"lin/kernel": "torch", "emb/embedding": "native"}  # only 2-D kernels
    # Element (a, b) of an (in=3, out=5) kernel has local index b * 3 + a.
    a, b = np.meshgrid(np.arange(3), np.arange(5), indexing="ij")
    np.testing.assert_array_equal(np.asarray(_local_index(entries[1])), b * 3 + a)
    # Native order is row-major, for any rank.
    e3 = LayoutEntry("x", (2, 3, 4))
    np.testing.assert_array_equal(np.asarray(_local_index(e3)), np.arange(24).reshape(2, 3, 4))
    with pytest.raises(ValueError, match="element_order"):
        layout.build(params, "kernel", element_order="fortran")


def test_bias_follows_its_kernel():
    entries = layout.build(bert_like(2), QV, bias=True)
    paths = [(e.path.split("/", 2)[-1], e.is_bias) for e in entries]
    assert paths[:4] == [("layer_0/attention/query/kernel", False),
                         ("layer_0/attention/query/bias", True),
                         ("layer_0/attention/value/kernel", False),
                         ("layer_0/attention/value/bias", True)]
    gp = gj.GPart.from_layout(entries, d=4)
    assert gp.num_adapted == 2 * 2 * (64 + 8)
    # A bias selected by the targets themselves is an ordinary entry, not a follower.
    both = layout.build(bert_like(1), ("query/kernel", "query/bias"), bias=True)
    assert [(e.path.rsplit("/", 1)[-1], e.is_bias) for e in both] == [("bias", False), ("kernel", False)]


def test_explicit_order():
    params = bert_like(2)
    names = ["params/encoder/layer_1/attention/value/kernel",
             "params/encoder/layer_0/attention/query/kernel",
             "params/encoder/layer_1/attention/query/kernel",
             "params/encoder/layer_0/attention/value/kernel"]
    assert [e.path for e in layout.build(params, QV, order=names)] == names
    with pytest.raises(gj.TargetError, match="order must list every targeted path.*missing"):
        layout.build(params, QV, order=names[:3])
    with pytest.raises(gj.TargetError, match="not targeted"):
        layout.build(params, "query/kernel", order=names)
    with pytest.raises(gj.TargetError, match="repeated"):
        layout.build(params, QV, order=names + names[:1])


def test_fingerprint_ignores_dtype_and_changes_with_the_partition_structure():
    p32 = bert_like(2)
    p16 = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, p32)
    a = gj.GPart.create(p32, d=8, targets=QV)
    assert a.fingerprint == gj.GPart.create(p16, d=8, targets=QV).fingerprint
    assert a.fingerprint == gj.GPart.create(p32, d=8, targets=QV, seed=7).fingerprint  # not the seed
    assert a.fingerprint != gj.GPart.create(p32, d=9, targets=QV).fingerprint
    assert a.fingerprint != gj.GPart.create(p32, d=8, targets=QV, scheme="balanced").fingerprint
    torch = gj.GPart.from_layout(layout.build(p32, QV, element_order="torch"), d=8)
    assert a.fingerprint != torch.fingerprint
    assert a.fingerprint != gj.GPart.create(bert_like(3), d=8, targets=QV).fingerprint


def test_fingerprint_golden():
    # The canonical JSON is part of the adapter format: sorted keys, no spaces, ASCII.
    entries = (LayoutEntry("enc/layer_0/query/kernel", (384, 384), "torch", False),
               LayoutEntry("enc/layer_0/query/bias", (384,), "native", True))
    text = ('{"d":23040,"layout":[["enc/layer_0/query/kernel",[384,384],"torch",false],'
            '["enc/layer_0/query/bias",[384],"native",true]],"scheme":"stateless",'
            '"scope":"global"}')
    got = layout.fingerprint(entries, 23040, "stateless", "global")
    assert got == hashlib.sha256(text.encode()).hexdigest()
    assert got == "865bf414890194dec5766ab993dbda9a934cb5e9ad40b7dd3f3c661433b26b76"


def test_layout_entry_json_round_trip():
    entry = LayoutEntry("a/kernel", (3, 4), "torch", False)
    assert entry.to_json() == ["a/kernel", [3, 4], "torch", False]
    assert LayoutEntry.from_json(entry.to_json()) == entry
    assert entry.size == 12


def test_check_params_names_what_differs():
    entries = layout.build(bert_like(2), QV)
    flat, _ = gj.paths.leaves_with_paths(bert_like(1))
    missing = r"does not match the test layout: params/encoder/layer_1/attention/query/kernel: missing"
    with pytest.raises(gj.LayoutMismatchError, match=missing):
        layout.check_params(entries, flat, "the test layout")
    wider = bert_like(2)
    wider["params"]["encoder"]["layer_0"]["attention"]["query"]["kernel"] = jnp.ones((7, 8))
    with pytest.raises(gj.LayoutMismatchError, match=r"query/kernel: shape \(7, 8\), expected \(8, 8\)"):
        layout.check_params(entries, gj.paths.leaves_with_paths(wider)[0], "x")
    ints = jax.tree_util.tree_map(lambda x: x.astype(jnp.int32), bert_like(2))
    with pytest.raises(gj.LayoutMismatchError, match="dtype int32, expected a floating-point array"):
        layout.check_params(entries, gj.paths.leaves_with_paths(ints)[0], "x")
    shapes = jax.eval_shape(lambda: bert_like(2))
    layout.check_params(entries, gj.paths.leaves_with_paths(shapes)[0], "x")  # shapes suffice
    with pytest.raises(gj.LayoutMismatchError, match="ShapeDtypeStruct"):
        layout.check_params(entries, gj.paths.leaves_with_paths(shapes)[0], "x", arrays=True)


def test_leaves_too_large_to_index_are_refused():
    shapes = {"big": {"kernel": jax.ShapeDtypeStruct((2**16, 2**16), jnp.bfloat16)}}
    with pytest.raises(gj.TargetError, match="2\\*\\*32 or more"):
        layout.build(shapes, "kernel")


def test_an_empty_layout_is_refused():
    with pytest.raises(gj.TargetError, match="layout is empty"):
        gj.GPart.from_layout((), d=1)


def test_shape_only_planning_matches_reference_counts():
    # MiniLM query/value shapes, planned from ShapeDtypeStructs: the reference's group counts.
    sds = jax.ShapeDtypeStruct((384, 384), jnp.float32)
    shapes = {"encoder": {"layer": {str(i): {"attention": {"self": {
        m: {"kernel": sds} for m in ("query", "value")}}} for i in range(6)}}}
    gp = gj.GPart.from_layout(layout.build(shapes, QV, element_order="torch"), d=4096, seed=1234)
    golden = load_file(str(GOLDEN / "reference_minilm_qv_group_counts.safetensors"))
    assert gp.num_adapted == 1_769_472
    np.testing.assert_array_equal(gp.group_sizes, golden["gpart_group_counts"])
    np.testing.assert_array_equal(np.asarray(gp.scales), golden["gpart_global_scales_ieee"])


def test_billion_parameter_plan_without_materializing():
    # 30 layers x 8 kernels of 4096 x 1024 = 1.0e9 adapted weights, planned from shapes only.
    shapes = {"layers": {str(i): {f"proj_{j}": {"kernel": jax.ShapeDtypeStruct(
        (4096, 1024), jnp.bfloat16)} for j in range(8)} for i in range(30)}}
    gp = gj.GPart.create(shapes, d=1_000_000, targets="kernel", scheme="balanced")
    assert gp.num_adapted == 30 * 8 * 4096 * 1024
    assert gp.group_sizes.sum() == gp.num_adapted
    assert gp.group_sizes.max() - gp.group_sizes.min() <= 1


@pytest.mark.slow
def test_billion_parameter_stateless_counting_pass():
    shapes = {"layers": {str(i): {"kernel": jax.ShapeDtypeStruct((4096, 8192), jnp.bfloat16)}
                         for i in range(30)}}
    gp = gj.GPart.create(shapes, d=100_000, targets="kernel")  # N/d ~ 10^4: no empty groups
    assert gp.group_sizes.sum() == gp.num_adapted == 30 * 4096 * 8192
    ids = gj.group_ids(0, 2**20, gp.d, gp.seed)  # the first chunk, counted on the host
    assert np.all(np.bincount(ids, minlength=gp.d) <= gp.group_sizes)
