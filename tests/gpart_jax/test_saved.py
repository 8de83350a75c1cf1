"""Saved modules: leaves trained in full, taken out of params and put back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gpart_jax as gj
from gpart_jax.paths import leaves_with_paths
from tests.gpart_jax.tiny_model import build, tiny_setup, trained_head


@pytest.fixture(scope="module")
def base():
    return tiny_setup()[3]


def test_saved_modules_takes_every_leaf_of_a_module(base):
    saved = gj.saved_modules(base, "classifier")
    assert sorted(saved) == ["params/classifier/bias", "params/classifier/kernel"]
    assert saved["params/classifier/kernel"] is base["params"]["classifier"]["kernel"]
    assert sorted(gj.saved_modules(base, ["classifier", "layer_0"])) == [
        "params/classifier/bias", "params/classifier/kernel", "params/layer_0/bias",
        "params/layer_0/kernel"]
    assert gj.saved_modules(base, ()) == {} and gj.saved_modules(base, []) == {}


def test_saved_modules_that_match_nothing_name_the_closest(base):
    with pytest.raises(gj.TargetError, match=r"saved modules 'clasifier' matched no parameter.*classifier"):
        gj.saved_modules(base, "clasifier")


def test_join_replaces_only_the_saved_leaves(base):
    head = trained_head(base)
    joined = gj.join(head, base)
    assert jax.tree_util.tree_structure(joined) == jax.tree_util.tree_structure(base)
    np.testing.assert_array_equal(joined["params"]["classifier"]["kernel"],
                                  head["params/classifier/kernel"])
    np.testing.assert_array_equal(joined["params"]["classifier"]["bias"], head["params/classifier/bias"])
    assert joined["params"]["layer_0"]["kernel"] is base["params"]["layer_0"]["kernel"]
    assert gj.join({}, base) is base
    # taking the head out of the joined params gives it back
    again = gj.saved_modules(joined, "classifier")
    for path, value in head.items():
        np.testing.assert_array_equal(again[path], value)


def test_a_head_of_another_size_is_a_layout_mismatch(base):
    five = tiny_setup(num_classes=5)[3]
    head = trained_head(base)  # 3 classes
    with pytest.raises(gj.LayoutMismatchError,
                       match=r"params/classifier/bias: shape \(3,\), the params have \(5,\); "
                             r"params/classifier/kernel: shape \(16, 3\), the params have "
                             r"\(16, 5\).*classes"):
        gj.join(head, five)
    with pytest.raises(gj.LayoutMismatchError, match="params/head/kernel: not in the params"):
        gj.join({"params/head/kernel": np.zeros((16, 3), np.float32)}, base)
    # nothing is replaced when one leaf does not fit
    with pytest.raises(gj.LayoutMismatchError):
        gj.join({"params/classifier/bias": np.zeros(3, np.float32),
                 "params/classifier/kernel": np.zeros((16, 4), np.float32)}, base)


def test_full_params_is_the_method_then_the_saved_modules(base):
    method = build("gpart", base)
    theta = jnp.linspace(-1, 1, method.d, dtype=jnp.float32)
    head = trained_head(base)
    got = gj.full_params(method, theta, base, head)
    want = gj.join(head, method.apply(theta, base))
    for (path, a), (_, b) in zip(leaves_with_paths(got)[0], leaves_with_paths(want)[0], strict=True):
        np.testing.assert_array_equal(a, b, err_msg=path)
    assert not np.array_equal(got["params"]["layer_0"]["kernel"], base["params"]["layer_0"]["kernel"])
    without = gj.full_params(method, theta, base)
    np.testing.assert_array_equal(without["params"]["classifier"]["kernel"],
                                  base["params"]["classifier"]["kernel"])


def test_full_params_is_differentiable_in_the_pair(base):
    model, x, labels, _ = tiny_setup()
    method = build("gpart", base)
    head = gj.saved_modules(base, "classifier")

    def loss(pair):
        theta, saved = pair
        logits = model.apply(gj.full_params(method, theta, base, saved), x)
        return jnp.mean((logits - jax.nn.one_hot(labels, 3)) ** 2)
    g_theta, g_saved = jax.jit(jax.grad(loss))((method.init(), head))
    assert g_theta.shape == (method.d,) and float(jnp.abs(g_theta).sum()) > 0
    assert sorted(g_saved) == sorted(head) and float(jnp.abs(g_saved["params/classifier/kernel"]).sum()) > 0


class NnxModel(nnx.Module):
    def __init__(self, rngs, classes=2):
        self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
        self.classifier = nnx.Linear(4, classes, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return self.classifier(x)


def test_nnx_state_and_module():
    model = NnxModel(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    saved = gj.saved_modules(state, "classifier")
    assert sorted(saved) == ["classifier/bias", "classifier/kernel"]
    moved = {p: jnp.asarray(v) + 1 for p, v in saved.items()}
    joined = gj.join(moved, state)
    np.testing.assert_array_equal(joined["classifier"]["kernel"][...], moved["classifier/kernel"])
    np.testing.assert_array_equal(joined["layers"][0]["kernel"][...], state["layers"][0]["kernel"][...])
    assert sorted(gj.saved_modules(model, "classifier")) == sorted(saved)  # the Module itself
    three = nnx.state(NnxModel(nnx.Rngs(0), classes=3), nnx.Param)
    with pytest.raises(gj.LayoutMismatchError, match=r"classifier/kernel: shape \(4, 2\)"):
        gj.join(moved, three)


def test_saved_leaves_may_not_be_adapted(tmp_path, base):
    method = build("gpart", base)
    overlap = gj.saved_modules(base, "layer_0")
    with pytest.raises(gj.TargetError, match=r"overlap the adapted leaves: \['params/layer_0/kernel'\]"):
        gj.merge(method, method.init(), base, saved=overlap)


def test_an_nnx_model_with_gpart_and_a_saved_head():
    graphdef, state = nnx.split(NnxModel(nnx.Rngs(0)))
    method = gj.GPart.create(state, d=5, targets="all-linear", scheme="balanced")  # not the classifier
    assert method.target_paths == ("layers/0/kernel", "layers/1/kernel")
    saved = {p: jnp.zeros_like(v) for p, v in gj.saved_modules(state, "classifier").items()}
    model = nnx.merge(graphdef, gj.full_params(method, jnp.ones(5), state, saved))
    np.testing.assert_array_equal(model(jnp.ones((2, 4))), 0.0)  # the zero head is in place
    moved = nnx.merge(graphdef, gj.full_params(method, jnp.ones(5), state))
    assert not np.allclose(moved.layers[0].kernel[...], state["layers"][0]["kernel"][...])
