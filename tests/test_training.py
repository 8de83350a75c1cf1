"""Trainable/frozen split, the optax helper, and the two meanings of regularization."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gpart_jax as gj
from gpart_jax import trainable as T
from gpart_jax.methods import GPartMethod
from gpart_jax.optim import l2_penalty, linear_warmup_decay, make_optimizer


class TinyClassifier(nn.Module):
    """A two-layer encoder with a fresh classifier head."""

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            h = nn.Dense(16, name=f"layer_{i}")(x)
            x = x + jnp.tanh(h) if x.shape[-1] == 16 else jnp.tanh(h)
        return nn.Dense(3, name="classifier")(x)


def tiny_setup(seed=0):
    model = TinyClassifier()
    x = jax.random.normal(jax.random.key(seed), (128, 8))
    labels = jnp.argmax(x[:, :3] + 0.3 * x[:, 3:6], axis=-1)
    base = model.init(jax.random.key(1), x)
    return model, x, labels, base


def test_split_and_join_linen():
    _, _, _, base = tiny_setup()
    saved, frozen = T.split(base, ("classifier",))
    assert sorted(saved) == ["params/classifier/bias", "params/classifier/kernel"]
    assert frozen is base
    new = {p: v + 1 for p, v in saved.items()}
    joined = T.join(new, frozen)
    np.testing.assert_array_equal(joined["params"]["classifier"]["kernel"],
                                  base["params"]["classifier"]["kernel"] + 1)
    np.testing.assert_array_equal(joined["params"]["layer_0"]["kernel"],
                                  base["params"]["layer_0"]["kernel"])
    with pytest.raises(ValueError, match=r"\['head'\] matched no parameter"):
        T.split(base, ("head",))
    with pytest.raises(ValueError, match="not in params"):
        T.join({"params/nothing": jnp.ones(1)}, base)


def test_split_and_join_nnx_state():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
            self.classifier = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            for layer in self.layers:
                x = jnp.tanh(layer(x))
            return self.classifier(x)

    graphdef, state = nnx.split(Model(nnx.Rngs(0)))
    method = GPartMethod.create(state, d=5, targets="all-linear")  # excludes the classifier
    assert method.target_paths == ("layers/0/kernel", "layers/1/kernel")
    trainable = T.init_trainable(method, state, ("classifier",))
    assert sorted(trainable["saved"]) == ["classifier/bias", "classifier/kernel"]
    trainable["saved"] = {p: v * 0 for p, v in trainable["saved"].items()}
    model = nnx.merge(graphdef, T.full_params(method, trainable, state))
    np.testing.assert_array_equal(model(jnp.ones((2, 4))), 0.0)


def test_saved_modules_may_not_overlap_targets():
    _, _, _, base = tiny_setup()
    method = GPartMethod.create(base, d=8, targets=("kernel",), exclude=())
    with pytest.raises(ValueError, match="overlaps the adapted targets"):
        T.init_trainable(method, base, ("classifier",))


def test_schedule_is_linear_warmup_then_linear_decay():
    sched = linear_warmup_decay(1.0, 100, 0.06)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(3)), 0.5)
    np.testing.assert_allclose(float(sched(6)), 1.0)
    np.testing.assert_allclose(float(sched(53)), 0.5)
    np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-7)


def test_optimizer_has_separate_learning_rates_and_no_bias_decay():
    trainable = {"adapter": jnp.ones(4), "saved": {"params/classifier/kernel": jnp.ones((3, 2)),
                                                   "params/classifier/bias": jnp.ones(2)}}
    opt = make_optimizer(trainable, total_steps=10, warmup_frac=0.0, adapter_lr=0.1, saved_lr=0.01,
                         adapter_weight_decay=0.5, saved_weight_decay=0.5)
    state = opt.init(trainable)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    updates, _ = opt.update(zeros, state, trainable)
    # Zero gradient: only decoupled decay moves the parameters, by -lr * wd * p.
    np.testing.assert_allclose(updates["adapter"], -0.1 * 0.5)
    np.testing.assert_allclose(updates["saved"]["params/classifier/kernel"], -0.01 * 0.5)
    np.testing.assert_array_equal(updates["saved"]["params/classifier/bias"], 0.0)
    with pytest.raises(ValueError, match="regularization"):
        make_optimizer(trainable, total_steps=10, regularization="l1")


def test_l2_penalty_transform_equals_penalty_in_the_loss():
    params = jnp.asarray([1.0, -2.0, 0.5])
    grads = jnp.asarray([0.1, 0.2, -0.3])
    coeff = 0.05
    via_transform, _ = l2_penalty(coeff).update(grads, optax.EmptyState(), params)
    via_loss = grads + jax.grad(lambda p: coeff * jnp.sum(p**2))(params)
    np.testing.assert_allclose(via_transform, via_loss, rtol=1e-6)


@pytest.mark.parametrize("isometric", [True, False])
def test_l2_penalty_on_theta_vs_on_delta_w(isometric):
    _, _, _, base = tiny_setup()
    gp = gj.GPart.create(base, d=40, targets=("layer_0/kernel", "layer_1/kernel"), scheme="balanced",
                         isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(0).normal(size=40), jnp.float32)
    delta_sq = sum(float(np.sum(np.asarray(d, np.float64) ** 2)) for d in gp.deltas(theta))
    theta_sq = float(np.sum(np.asarray(theta, np.float64) ** 2))
    if isometric:
        np.testing.assert_allclose(delta_sq, theta_sq, rtol=1e-6)
    else:
        # Off by the group sizes, about N / d.
        np.testing.assert_allclose(delta_sq / theta_sq, gp.num_adapted / gp.d, rtol=0.2)


@pytest.mark.parametrize("isometric", [True, False])
def test_decoupled_decay_shrinks_delta_w_by_the_same_factor(isometric):
    _, _, _, base = tiny_setup()
    gp = gj.GPart.create(base, d=40, targets=("layer_0/kernel",), isometric=isometric,
                         warn_empty=False)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=40), jnp.float32)
    opt = optax.adamw(0.1, weight_decay=0.3)
    updates, _ = opt.update(jnp.zeros_like(theta), opt.init(theta), theta)
    new_theta = optax.apply_updates(theta, updates)
    before, after = gp.deltas(theta)[0], gp.deltas(new_theta)[0]
    np.testing.assert_allclose(after, (1 - 0.1 * 0.3) * before, rtol=1e-5, atol=1e-7)


def test_tiny_model_trains_with_gpart_and_the_optax_helper():
    model, x, labels, base = tiny_setup()
    method = GPartMethod.create(base, d=64, targets="all-linear")  # every kernel but the head
    trainable = T.init_trainable(method, base, ("classifier",))
    opt = make_optimizer(trainable, total_steps=150, adapter_lr=5e-2, saved_lr=5e-2)
    state = opt.init(trainable)

    def loss_fn(trainable):
        logits = model.apply(T.full_params(method, trainable, base), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(trainable, state):
        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, state = opt.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state, loss

    first = float(loss_fn(trainable))
    for _ in range(150):
        trainable, state, loss = step(trainable, state)
    assert float(loss) < 0.7 * first
    assert float(jnp.abs(trainable["adapter"]).max()) > 0  # theta moved, not only the head
