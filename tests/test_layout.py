"""Layout: paths, target selection, global order, element order, fingerprint."""

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import gpart_jax as gj
from gpart_jax.layout import flatten_with_paths, layer_index, natural_sorted, select_targets

GOLDEN = pathlib.Path(__file__).parent / "golden"


def bert_like(n_layers=3, hidden=8):
    layer = lambda: {  # noqa: E731
        "attention": {m: {"kernel": jnp.ones((hidden, hidden)), "bias": jnp.zeros(hidden)}
                      for m in ("query", "key", "value")},
        "ffn": {"kernel": jnp.ones((hidden, 2 * hidden)), "bias": jnp.zeros(2 * hidden)},
        "xkernel": jnp.ones((hidden, hidden)),
    }
    return {"params": {
        "embeddings": {"embedding": jnp.ones((50, hidden))},
        "encoder": {f"layer_{i}": layer() for i in range(n_layers)},
        "classifier": {"kernel": jnp.ones((hidden, 2)), "bias": jnp.zeros(2)},
        "step": jnp.zeros((), jnp.int32),
    }}


def test_default_order_golden():
    doc = json.loads((GOLDEN / "natural_order.json").read_text())
    assert natural_sorted(doc["input"]) == doc["expected"]
    # The points the rule was written for.
    exp = doc["expected"]
    assert exp.index("params/encoder/layer_2/attention/key/kernel") < exp.index(
        "params/encoder/layer_10/attention/key/kernel")
    assert exp.index("model/layers/9/self_attn/k_proj/kernel") < exp.index(
        "model/layers/10/self_attn/k_proj/kernel")
    assert exp[:3] == ["a/b", "a/b/c", "a/c"]


def test_layout_uses_natural_order_not_pytree_order():
    params = {f"layer_{i}": {"kernel": jnp.ones((2, 2))} for i in (10, 2, 1)}
    gp = gj.GPart.create(params, d=3, targets=("kernel",))
    assert [e.path for e in gp.layout] == ["layer_1/kernel", "layer_2/kernel", "layer_10/kernel"]


def test_suffix_targets_match_whole_components():
    flat, _ = flatten_with_paths(bert_like())
    chosen = select_targets(flat, ("kernel",))
    assert not any(p.endswith("xkernel") for p in chosen)
    assert "params/classifier/kernel" in chosen
    chosen = select_targets(flat, ("query/kernel", "value/kernel"))
    assert len(chosen) == 6 and all(p.split("/")[-2] in ("query", "value") for p in chosen)
    assert select_targets(flat, ("attention/query/kernel",)) == [
        p for p in chosen if "query" in p]


def test_regex_targets_are_full_match():
    flat, _ = flatten_with_paths(bert_like())
    assert select_targets(flat, r".*/(query|value)/kernel") == select_targets(
        flat, ("query/kernel", "value/kernel"))
    with pytest.raises(ValueError, match="matched no parameter"):
        select_targets(flat, r"query/kernel")  # a search would match; a full match does not


def test_callable_targets():
    flat, _ = flatten_with_paths(bert_like())
    chosen = select_targets(flat, lambda path, leaf: leaf.ndim == 2 and leaf.shape[1] == 16)
    assert chosen == [p for p in chosen if p.endswith("ffn/kernel")] and len(chosen) == 3


def test_all_linear_excludes_heads():
    flat, _ = flatten_with_paths(bert_like())
    chosen = select_targets(flat, "all-linear")
    assert len(chosen) == 3 * 4  # q, k, v, ffn per layer; not classifier, not xkernel
    assert not any("classifier" in p for p in chosen)
    chosen = select_targets(flat, "all-linear", exclude=())
    assert "params/classifier/kernel" in chosen


def test_layers_subset_and_pattern():
    flat, _ = flatten_with_paths(bert_like(n_layers=4))
    chosen = select_targets(flat, ("query/kernel",), layers=[0, 3])
    assert [layer_index(p)[0] for p in chosen] == [0, 3]
    assert layer_index("model/layers/12/mlp/kernel") == (12, "model/layers/12")
    assert layer_index("transformer/h3/attn/kernel") == (3, "transformer/h3")
    assert layer_index("blocks_7/x") == (7, "blocks_7")
    assert layer_index("params/hx3/kernel") is None
    assert layer_index("encoder/stage2/kernel", r"stage(\d+)") == (2, "encoder/stage2")


def test_targets_matching_nothing_lists_available_paths():
    with pytest.raises(ValueError, match=r"(?s)matched no parameter.*params/encoder/layer_0/ffn/kernel"):
        gj.GPart.create(bert_like(), d=4, targets=("nonexistent",))


def test_targets_matching_integer_leaves_is_an_error():
    with pytest.raises(ValueError, match="floating-point.*params/step"):
        gj.GPart.create(bert_like(), d=4, targets=("step",))


def test_bad_target_types():
    with pytest.raises(TypeError, match="targets"):
        gj.GPart.create(bert_like(), d=4, targets=3)
    with pytest.raises(ValueError, match="invalid regular expression"):
        gj.GPart.create(bert_like(), d=4, targets="(")


def test_nnx_state_has_the_same_paths_as_linen_dicts():
    class Layer(nnx.Module):
        def __init__(self, rngs):
            self.query = nnx.Linear(4, 4, rngs=rngs)
            self.value = nnx.Linear(4, 4, rngs=rngs)

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([Layer(rngs) for _ in range(2)])

    state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
    as_dict = {"layers": {str(i): {m: {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}
                                   for m in ("query", "value")} for i in range(2)}}
    gp_nnx = gj.GPart.create(state, d=5, targets=("kernel",))
    gp_dict = gj.GPart.create(as_dict, d=5, targets=("kernel",))
    assert gp_nnx.layout == gp_dict.layout
    assert gp_nnx.layout[0].path == "layers/0/query/kernel"


def test_torch_element_order_documented_index():
    params = {"lin": {"kernel": jnp.zeros((3, 5)), "bias": jnp.zeros(5)},
              "emb": {"embedding": jnp.zeros((4, 2))}}
    gp = gj.GPart.create(params, d=2, targets=("kernel", "embedding"), element_order="torch")
    orders = {e.path: e.element_order for e in gp.layout}
    assert orders == {"lin/kernel": "torch", "emb/embedding": "native"}
    # Element (a, b) of a (in=3, out=5) kernel has local index b * 3 + a.
    from gpart_jax.core import _local_index
    local = np.asarray(_local_index(gp.layout[1]))
    a, b = np.meshgrid(np.arange(3), np.arange(5), indexing="ij")
    np.testing.assert_array_equal(local, b * 3 + a)


def test_bias_follows_its_kernel():
    gp = gj.GPart.create(bert_like(2), d=4, targets=("query/kernel", "value/kernel"), bias=True)
    paths = [(e.path.split("/", 2)[-1], e.is_bias) for e in gp.layout]
    assert paths[:4] == [("layer_0/attention/query/kernel", False),
                         ("layer_0/attention/query/bias", True),
                         ("layer_0/attention/value/kernel", False),
                         ("layer_0/attention/value/bias", True)]
    assert gp.num_adapted == 2 * 2 * (64 + 8)


def test_explicit_order():
    params = bert_like(2)
    names = ["params/encoder/layer_1/attention/value/kernel",
             "params/encoder/layer_0/attention/query/kernel",
             "params/encoder/layer_1/attention/query/kernel",
             "params/encoder/layer_0/attention/value/kernel"]
    gp = gj.GPart.create(params, d=4, targets=("query/kernel", "value/kernel"), order=names)
    assert [e.path for e in gp.layout] == names
    with pytest.raises(ValueError, match="order must list every targeted path.*missing"):
        gj.GPart.create(params, d=4, targets=("query/kernel", "value/kernel"), order=names[:3])
    with pytest.raises(ValueError, match="not targeted"):
        gj.GPart.create(params, d=4, targets=("query/kernel",), order=names)


def test_fingerprint_ignores_dtype_and_changes_with_layout():
    p32 = bert_like(2)
    p16 = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, p32)
    a = gj.GPart.create(p32, d=8)
    assert a.fingerprint == gj.GPart.create(p16, d=8).fingerprint
    assert a.fingerprint != gj.GPart.create(p32, d=9).fingerprint
    assert a.fingerprint != gj.GPart.create(p32, d=8, scheme="balanced").fingerprint
    assert a.fingerprint != gj.GPart.create(p32, d=8, element_order="torch").fingerprint
    assert a.fingerprint != gj.GPart.create(bert_like(3), d=8).fingerprint


def test_fingerprint_golden():
    # The canonical JSON is part of the adapter format: sorted keys, no spaces, ASCII.
    layout = (gj.LayoutEntry("enc/layer_0/query/kernel", (384, 384), "torch", False),
              gj.LayoutEntry("enc/layer_0/query/bias", (384,), "native", True))
    text = ('{"d":23040,"layout":[["enc/layer_0/query/kernel",[384,384],"torch",false],'
            '["enc/layer_0/query/bias",[384],"native",true]],"scheme":"stateless",'
            '"scope":"global"}')
    assert gj.fingerprint(layout, 23040, "stateless", "global") == hashlib.sha256(
        text.encode()).hexdigest()
    assert gj.fingerprint(layout, 23040, "stateless", "global") == (
        "865bf414890194dec5766ab993dbda9a934cb5e9ad40b7dd3f3c661433b26b76")


def test_shape_only_planning_matches_reference_counts():
    # MiniLM query/value shapes, planned from ShapeDtypeStructs: the reference's group counts.
    shapes = {"encoder": {"layer": {str(i): {"attention": {"self": {
        m: {"kernel": jax.ShapeDtypeStruct((384, 384), jnp.float32)} for m in ("query", "value")}}}
        for i in range(6)}}}
    gp = gj.GPart.create(shapes, d=4096, seed=1234, element_order="torch")
    golden = load_file(str(GOLDEN / "reference_minilm_qv_group_counts.safetensors"))
    assert gp.num_adapted == 1_769_472
    np.testing.assert_array_equal(gp.group_sizes, golden["gpart_group_counts"])
    np.testing.assert_array_equal(np.asarray(gp.scales), golden["gpart_global_scales_ieee"])


def test_billion_parameter_plan_without_materializing():
    # 30 layers x 8 kernels of 4096 x 1024 = 1.0e9 adapted weights, planned from shapes only.
    shapes = {"layers": {str(i): {f"proj_{j}": {"kernel": jax.ShapeDtypeStruct(
        (4096, 1024), jnp.bfloat16)} for j in range(8)} for i in range(30)}}
    gp = gj.GPart.create(shapes, d=1_000_000, targets=("kernel",), scheme="balanced")
    assert gp.num_adapted == 30 * 8 * 4096 * 1024
    assert gp.group_sizes.sum() == gp.num_adapted
    assert gp.group_sizes.max() - gp.group_sizes.min() <= 1


@pytest.mark.slow
def test_billion_parameter_stateless_counting_pass():
    shapes = {"layers": {str(i): {"kernel": jax.ShapeDtypeStruct((4096, 8192), jnp.bfloat16)}
                         for i in range(30)}}
    gp = gj.GPart.create(shapes, d=100_000, targets=("kernel",), warn_empty=False)
    assert gp.group_sizes.sum() == gp.num_adapted == 30 * 4096 * 8192
