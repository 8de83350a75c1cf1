"""merge folds an adapter into plain params; unmerge takes it out again, back to the base."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpart_jax as gj
from gpart_jax.paths import leaves_with_paths
from tests.gpart_jax.tiny_model import ADDITIVE, build, random_like, tiny_setup, trained_head


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def trained(method, seed=0):
    """A trainable far from init, so that every adapted weight moves."""
    init = method.init(jax.random.key(0))
    return jax.tree_util.tree_map(lambda a, b: a + b, init, random_like(init, seed=seed, scale=0.3))


def flat(tree):
    return dict(leaves_with_paths(tree)[0])


@pytest.mark.parametrize("name", ADDITIVE)
def test_merged_outputs_equal_the_adapted_model(tiny, name):
    model, x, _, base = tiny
    method = build(name, base)
    trainable, head = trained(method), trained_head(base)
    merged = gj.merge(method, trainable, base, saved=head)
    for path, leaf in flat(merged).items():
        assert leaf.dtype == flat(base)[path].dtype, path
    adapted = model.apply(gj.full_params(method, trainable, base, head), x)
    np.testing.assert_allclose(model.apply(merged, x), adapted, rtol=1e-6, atol=1e-6)
    assert not np.allclose(adapted, model.apply(gj.join(head, base), x), atol=1e-3)  # it did move
    np.testing.assert_array_equal(merged["params"]["classifier"]["kernel"], head["params/classifier/kernel"])


def assert_within_rounding(restored, base, delta):
    """``|restored - w0| <= eps (|w0| + |delta|)``: two float32 roundings (the add, the subtract)."""
    restored, base, delta = (np.asarray(a, np.float64) for a in (restored, base, delta))
    bound = np.finfo(np.float32).eps * (np.abs(base) + np.abs(delta)) + 1e-30
    assert np.all(np.abs(restored - base) <= bound), float(np.max(np.abs(restored - base) / bound))


@pytest.mark.parametrize("name", ADDITIVE)
def test_unmerge_with_the_base_head_restores_the_base(tiny, name):
    base = tiny[3]
    method = build(name, base)
    trainable, head = trained(method), trained_head(base)
    merged = gj.merge(method, trainable, base, saved=head)
    restored = gj.unmerge(method, trainable, merged, saved=gj.saved_modules(base, "classifier"))
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(base)
    deltas = flat(method.apply(trainable, jax.tree_util.tree_map(jnp.zeros_like, base)))
    for path, leaf in flat(restored).items():
        if path in method.target_paths:
            assert not np.array_equal(flat(merged)[path], flat(base)[path]), path
            assert_within_rounding(leaf, flat(base)[path], deltas[path])
        else:  # the head put back and every other leaf untouched: bit for bit
            np.testing.assert_array_equal(leaf, flat(base)[path], err_msg=path)


def test_unmerge_without_the_base_head_keeps_the_trained_one(tiny):
    base = tiny[3]
    method = build("gpart", base)
    trainable, head = trained(method), trained_head(base)
    restored = gj.unmerge(method, trainable, gj.merge(method, trainable, base, saved=head))
    np.testing.assert_array_equal(restored["params"]["classifier"]["kernel"],
                                  head["params/classifier/kernel"])


def test_unmerge_refuses_full_fine_tuning(tiny):
    base = tiny[3]
    method = build("full", base)
    trainable = method.init()
    merged = gj.merge(method, trainable, base)
    with pytest.raises(ValueError, match="cannot be recovered"):
        gj.unmerge(method, trainable, merged)


def test_merge_of_head_only_is_the_base_with_the_head(tiny):
    base = tiny[3]
    method = build("head-only", base)
    head = trained_head(base)
    merged = gj.merge(method, {}, base, saved=head)
    for path, leaf in flat(merged).items():
        np.testing.assert_array_equal(leaf, head.get(path, flat(base)[path]))
    restored = gj.unmerge(method, {}, merged, saved=gj.saved_modules(base, "classifier"))
    for path, leaf in flat(restored).items():
        np.testing.assert_array_equal(leaf, flat(base)[path])


def test_merge_keeps_the_base_dtype_or_float32(tiny):
    base16 = jax.tree_util.tree_map(lambda v: v.astype(jnp.bfloat16), tiny[3])
    gp = gj.GPart.create(base16, d=8, targets=("layer_0/kernel", "layer_1/kernel"), scheme="balanced")
    theta = jnp.ones(8, jnp.float32)
    merged = gj.merge(gp, theta, base16)
    assert {np.dtype(leaf.dtype) for leaf in flat(merged).values()} == {np.dtype(jnp.bfloat16)}
    as_f32 = gj.merge(gp, theta, base16, dtype="float32")
    assert as_f32["params"]["layer_0"]["kernel"].dtype == jnp.float32
    assert as_f32["params"]["classifier"]["kernel"].dtype == jnp.bfloat16  # not adapted: as it was
    np.testing.assert_array_equal(merged["params"]["layer_0"]["kernel"],
                                  as_f32["params"]["layer_0"]["kernel"].astype(jnp.bfloat16))


def test_bad_arguments(tiny):
    base = tiny[3]
    method = build("gpart", base)
    theta = method.init()
    with pytest.raises(TypeError, match="gpart_jax method"):
        gj.merge("gpart", theta, base)
    with pytest.raises(TypeError, match="gpart_jax method"):
        gj.unmerge(None, theta, base)
    with pytest.raises(ValueError, match="dtype must be one of"):
        gj.merge(method, theta, base, dtype="float16")
    with pytest.raises(gj.TargetError, match="overlap"):
        gj.merge(method, theta, base, saved={"params/layer_1/kernel": np.zeros((16, 16), np.float32)})
    five = trained_head(tiny_setup(num_classes=5)[3])
    with pytest.raises(gj.LayoutMismatchError, match=r"params/classifier/kernel: shape \(16, 5\)"):
        gj.merge(method, theta, base, saved=five)
    with pytest.raises(gj.LayoutMismatchError, match=r"params/classifier/kernel: shape \(16, 5\)"):
        gj.unmerge(method, theta, base, saved=five)
