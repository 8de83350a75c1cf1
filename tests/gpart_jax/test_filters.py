"""The filter vocabulary: module and leaf names, regexes over path components, "all-linear",
types and callables (nnx Variables), combinators, and the error that names the closest paths."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import gpart_jax as gj
from gpart_jax.filters import Pattern, select, to_predicate


def bert_like(n_layers=3, hidden=8):
    def layer():
        return {
            "attention": {m: {"kernel": jnp.ones((hidden, hidden)), "bias": jnp.zeros(hidden)}
                          for m in ("query", "key", "value")},
            "ffn": {"fc1": {"kernel": jnp.ones((hidden, 2 * hidden))},
                    "fc2": {"kernel": jnp.ones((2 * hidden, hidden))}},
            "xkernel": jnp.ones((hidden, hidden)),
        }
    return {"params": {
        "embeddings": {"embedding": jnp.ones((50, hidden))},
        "encoder": {f"layer_{i}": layer() for i in range(n_layers)},
        "classifier": {"kernel": jnp.ones((hidden, 2)), "bias": jnp.zeros(2)},
        "step": jnp.zeros((), jnp.int32),
    }}


def leaf_paths(paths):
    """``paths`` without the ``params/encoder/`` prefix, for readable comparisons."""
    return [p.removeprefix("params/encoder/") for p in paths]


class AttentionClassifier(nn.Module):
    """A flax attention layer (DenseGeneral q/k/v/out: 3-D kernels, 2-D biases) and a head."""

    @nn.compact
    def __call__(self, x):
        x = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(x)
        x = nn.Dense(6, name="mlp")(x)
        return nn.Dense(3, name="classifier")(x.mean(axis=1))


def attention_params():
    """The parameter shapes (``jax.ShapeDtypeStruct``): selection reads shapes only."""
    return jax.eval_shape(AttentionClassifier().init, jax.random.key(0), jnp.ones((1, 5, 4)))


class Block(nnx.Module):
    def __init__(self, rngs):
        self.query = nnx.Linear(4, 4, rngs=rngs)
        self.value = nnx.Linear(4, 3, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([Block(rngs) for _ in range(2)])
        self.stat = nnx.BatchStat(jnp.zeros((4, 4)))


# --------------------------------------------------------------------------- strings

def test_peft_module_names_select_those_modules_kernels():
    chosen = select(bert_like(), ("query", "value"))
    assert leaf_paths(chosen) == [f"layer_{i}/attention/{m}/kernel"
                                  for i in range(3) for m in ("query", "value")]
    # A module path works the same; its bias (rank 1) is not a weight.
    assert select(bert_like(), "attention/query") == [p for p in chosen if "/query/" in p]


def test_leaf_names_and_regexes_match_runs_of_whole_components():
    params = bert_like()
    kernels = select(params, "kernel")
    assert "params/classifier/kernel" in kernels
    assert not any(p.endswith("xkernel") for p in kernels)  # "kernel" is a whole component
    assert len(kernels) == 3 * 5 + 1
    assert leaf_paths(select(params, r"fc\d/kernel")) == [
        f"layer_{i}/ffn/fc{j}/kernel" for i in range(3) for j in (1, 2)]
    assert select(params, r".*/(query|value)/kernel") == select(params, ("query/kernel", "value/kernel"))
    assert select(params, "query/kernel") == select(params, "query")
    with pytest.raises(gj.TargetError, match="matched no parameter"):
        select(params, "uery/kernel")  # components match whole, never a substring of one


def test_a_module_name_selects_its_own_weights_or_every_leaf_under_it():
    params = bert_like()
    # Adapter targets: the weights directly in the module; "attention" holds none itself.
    with pytest.raises(gj.TargetError, match="matched no parameter"):
        select(params, "attention")
    # Modules trained in full: every leaf under the module, biases included.
    head = select(params, "classifier", modules="all")
    assert head == ["params/classifier/bias", "params/classifier/kernel"]
    assert len(select(params, "attention", modules="all")) == 3 * 3 * 2
    assert select(params, "classifier") == ["params/classifier/kernel"]


def test_module_names_on_flax_attention_select_the_kernels_not_the_2d_biases():
    # DenseGeneral's bias is (heads, head_dim): rank 2 but not a weight PEFT would adapt.
    chosen = select(attention_params(), ("query", "value"))
    assert chosen == ["params/attn/query/kernel", "params/attn/value/kernel"]
    gp = gj.GPart.create(attention_params(), d=8, targets=("query", "value"))
    assert gp.adapted == (("params/attn/query/kernel", (4, 2, 4)),
                          ("params/attn/value/kernel", (4, 2, 4)))


def test_all_linear_picks_dense_general_kernels_and_leaves_the_head_alone():
    params = attention_params()
    assert select(params, "all-linear") == [
        "params/attn/key/kernel", "params/attn/out/kernel", "params/attn/query/kernel",
        "params/attn/value/kernel", "params/mlp/kernel"]
    assert "params/classifier/kernel" in select(params, gj.AllLinear(exclude=()))
    assert "params/mlp/kernel" not in select(params, gj.AllLinear(exclude=("mlp", "classifier")))
    # On the BERT-like tree: every Dense kernel of the blocks; not the head, not "xkernel".
    assert len(select(bert_like(), "all-linear")) == 3 * 5
    # GPart adapts the 3-D kernels as they are.
    gp = gj.GPart.create(params, d=16, targets="all-linear")
    assert dict(gp.adapted)["params/attn/out/kernel"] == (2, 4, 4)
    assert gp.num_adapted == 4 * 32 + 24


def test_all_linear_never_selects_conv_kernels_or_integer_leaves():
    params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8))}, "dense": {"kernel": jnp.ones((8, 2))},
              "ids": {"kernel": jnp.ones((4, 4), jnp.int32)}}
    assert select(params, "all-linear") == ["dense/kernel"]


# --------------------------------------------------------------------------- types, callables

def test_nnx_types_and_callables_see_the_variable():
    model = Net(nnx.Rngs(0))
    seen = []

    def wide_params(path, leaf):
        seen.append(type(leaf))
        return isinstance(leaf, nnx.Param) and leaf.ndim == 2 and leaf.shape[1] == 3

    for tree in (model, nnx.state(model)):
        assert select(tree, wide_params) == ["layers/0/value/kernel", "layers/1/value/kernel"]
        # The BatchStat is 2-D and named like nothing: only the type keeps it out.
        assert "stat" in select(tree, lambda path, leaf: leaf.ndim == 2)
        assert "stat" not in select(tree, gj.All(nnx.Param, lambda path, leaf: leaf.ndim == 2))
        assert select(tree, nnx.BatchStat) == ["stat"]
    assert nnx.Param in seen and nnx.BatchStat in seen


def test_callables_on_linen_dicts_see_the_arrays():
    chosen = select(bert_like(), lambda path, leaf: leaf.ndim == 2 and leaf.shape[1] == 16)
    assert leaf_paths(chosen) == [f"layer_{i}/ffn/fc1/kernel" for i in range(3)]


# --------------------------------------------------------------------------- combinators

def test_combinators():
    params = bert_like(n_layers=4)
    qv = ("query", "value")
    assert leaf_paths(select(params, gj.All(qv, gj.Layers([0, 3])))) == [
        f"layer_{i}/attention/{m}/kernel" for i in (0, 3) for m in ("query", "value")]
    assert select(params, gj.All("kernel", gj.Layers(2))) == [
        p for p in select(params, "kernel") if "/layer_2/" in p]
    assert select(params, gj.Any("query", "value")) == select(params, qv)
    not_bias = select(params, gj.All("all-linear", gj.Not(r"fc\d")))
    assert len(not_bias) == 4 * 3 and not any("/ffn/" in p for p in not_bias)
    assert select(params, True) == [p for p, _ in gj.paths.leaves_with_paths(params)[0]]
    with pytest.raises(gj.TargetError):
        select(params, False)
    with pytest.raises(gj.TargetError, match="needs at least one filter"):
        gj.All()


def test_layers_with_a_custom_pattern():
    params = {"stage1": {"kernel": jnp.ones((2, 2))}, "stage2": {"kernel": jnp.ones((2, 2))}}
    assert select(params, gj.Layers([2], pattern=r"stage(\d+)")) == ["stage2/kernel"]
    assert gj.Layers(3).indices == (3,)


def test_to_predicate_is_one_function_over_path_and_leaf():
    w = jnp.ones((3, 3))
    pred = to_predicate(("query", "value"))
    assert pred("enc/query/kernel", w) and not pred("enc/query/bias", jnp.ones((3, 3)))
    assert not pred("enc/key/kernel", w)
    assert to_predicate("query", modules="all")("enc/query/bias", jnp.ones(3))
    with pytest.raises(ValueError, match="modules must be one of"):
        to_predicate("query", modules="some")


# --------------------------------------------------------------------------- errors

def test_no_match_lists_the_closest_paths():
    with pytest.raises(gj.TargetError, match=r"targets 'qeury' matched no parameter; closest: "
                                             r"'query' \(in params/encoder/layer_0/attention/query/"):
        select(bert_like(), "qeury")
    with pytest.raises(gj.TargetError, match=r"closest: 'classifier'"):
        gj.GPart.create(bert_like(), d=4, targets=("classifer",))
    # Nothing close (or no string): the first paths, with their shapes.
    with pytest.raises(gj.TargetError, match=r"paths look like: params/classifier/bias \(2,\)"):
        select(bert_like(), lambda path, leaf: False)


@pytest.mark.parametrize("bad,message", [
    (3, "a filter is a string"), (None, "a filter is a string"), ("", "empty string"),
    ((), "empty list"), ("(", "not a valid regular expression"),
])
def test_bad_filters(bad, message):
    with pytest.raises(gj.TargetError, match=message):
        gj.GPart.create(bert_like(), d=4, targets=bad)


def test_filter_reprs_in_messages():
    assert repr(Pattern("query")) == "'query'"
    assert repr(gj.AllLinear()) == "'all-linear'"
    assert repr(gj.All("kernel", gj.Not("bias"))) == "All('kernel', Not('bias'))"
