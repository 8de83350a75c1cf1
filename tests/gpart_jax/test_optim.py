"""The optax helper over the pair (trainable, saved): learning rates, schedules, decay masks, and
the two meanings of regularization."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpart_jax as gj
from gpart_jax.optim import warmup_steps_of
from tests.gpart_jax.tiny_model import build, tiny_setup


def pair():
    """``(theta, saved)`` with a 2-D kernel, a bias and another 1-D leaf in the saved modules."""
    theta = jnp.asarray([1.0, -2.0, 0.5, 4.0], jnp.float32)
    saved = {"params/classifier/kernel": jnp.full((3, 2), 2.0), "params/classifier/bias": jnp.ones(2),
             "params/norm/scale": jnp.ones(3)}
    return theta, saved


def first_update(opt, params, grads=None):
    grads = jax.tree_util.tree_map(jnp.zeros_like, params) if grads is None else grads
    updates, _ = opt.update(grads, opt.init(params), params)
    return updates


# --------------------------------------------------------------------------- schedules

def test_linear_warmup_then_linear_decay():
    sched = gj.linear_warmup_decay(1.0, 100, 6)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(3)), 0.5)
    np.testing.assert_allclose(float(sched(6)), 1.0)
    np.testing.assert_allclose(float(sched(53)), 0.5)
    np.testing.assert_allclose(float(sched(100)), 0.0, atol=1e-7)
    no_warmup = gj.linear_warmup_decay(2.0, 10, 0)
    np.testing.assert_allclose([float(no_warmup(s)) for s in (0, 5, 10)], [2.0, 1.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match=r"warmup_steps must be in \[0, 99\]"):
        gj.linear_warmup_decay(1.0, 100, 100)
    with pytest.raises(ValueError, match="total_steps"):
        gj.linear_warmup_decay(1.0, 0, 0)


def test_warmup_in_steps_or_as_a_fraction():
    assert warmup_steps_of(1000) == 60  # the paper's 6%
    assert warmup_steps_of(1000, warmup_frac=0.1) == 100
    assert warmup_steps_of(1000, warmup_frac=0.1, warmup_steps=7) == 7  # steps win
    assert warmup_steps_of(10, warmup_frac=0.25) == 2  # rounded (2.5 -> 2, banker's rounding)
    assert warmup_steps_of(10, warmup_frac=0.0) == 0
    for bad in ({"warmup_frac": 1.0}, {"warmup_frac": -0.1}, {"warmup_steps": 10}, {"warmup_steps": -1}):
        with pytest.raises(ValueError):
            warmup_steps_of(10, **bad)


def learning_rates(opt, params, steps):
    """The learning rate of each leaf group at each step, read off Adam's normalized first moves.

    With a constant gradient of 1, Adam's update is ``-lr_t * m_hat / (sqrt(v_hat) + eps)``
    = ``-lr_t`` (up to eps) at every step: the schedule itself.
    """
    state = opt.init(params)
    ones = jax.tree_util.tree_map(jnp.ones_like, params)
    update = jax.jit(opt.update)
    rates = []
    for _ in range(steps):
        updates, state = update(ones, state, params)
        rates.append((-float(updates[0][0]), -float(updates[1]["params/classifier/bias"][0])))
    return np.asarray(rates)


def test_warmup_steps_and_fraction_give_the_same_schedules():
    theta, saved = pair()
    kw = {"total_steps": 20, "trainable_lr": 0.1, "saved_lr": 0.01, "trainable_weight_decay": 0.0}
    by_steps = learning_rates(gj.make_optimizer(warmup_steps=5, **kw), (theta, saved), 20)
    by_frac = learning_rates(gj.make_optimizer(warmup_frac=0.25, **kw), (theta, saved), 20)
    np.testing.assert_allclose(by_steps, by_frac, rtol=1e-5)
    sched_t, sched_s = gj.linear_warmup_decay(0.1, 20, 5), gj.linear_warmup_decay(0.01, 20, 5)
    want = np.asarray([(float(sched_t(s)), float(sched_s(s))) for s in range(20)])
    np.testing.assert_allclose(by_steps, want, rtol=1e-4, atol=1e-9)
    assert by_steps[0].tolist() == [0.0, 0.0] and by_steps[5, 0] == pytest.approx(0.1, rel=1e-4)
    other = learning_rates(gj.make_optimizer(warmup_steps=2, **kw), (theta, saved), 20)
    assert not np.allclose(other, by_steps)


# --------------------------------------------------------------------------- rates and decay masks

def test_separate_learning_rates():
    theta, saved = pair()
    opt = gj.make_optimizer(total_steps=10, warmup_steps=0, trainable_lr=0.1, saved_lr=0.01,
                            trainable_weight_decay=0.0)
    grads = (jnp.full(4, 3.0), jax.tree_util.tree_map(lambda v: -jnp.ones_like(v), saved))
    updates = first_update(opt, (theta, saved), grads)
    np.testing.assert_allclose(updates[0], -0.1, rtol=1e-5)  # Adam's first step: -lr * sign(g)
    for value in updates[1].values():
        np.testing.assert_allclose(value, 0.01, rtol=1e-5)


def test_decoupled_decay_masks():
    """Zero gradient: only decoupled decay moves the params, by ``-lr * wd * p``; theta is decayed
    whole, saved biases and 1-D leaves not at all."""
    theta, saved = pair()
    opt = gj.make_optimizer(total_steps=10, warmup_steps=0, trainable_lr=0.1, saved_lr=0.01,
                            trainable_weight_decay=0.5, saved_weight_decay=0.25)
    updates_t, updates_s = first_update(opt, (theta, saved))
    np.testing.assert_allclose(updates_t, -0.1 * 0.5 * theta, rtol=1e-6)
    np.testing.assert_allclose(updates_s["params/classifier/kernel"], -0.01 * 0.25 * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(updates_s["params/classifier/bias"], 0.0)
    np.testing.assert_array_equal(updates_s["params/norm/scale"], 0.0)
    # the defaults: decay 0.1 on theta, none on the saved modules
    updates_t, updates_s = first_update(gj.make_optimizer(total_steps=10, warmup_steps=0), (theta, saved))
    np.testing.assert_allclose(updates_t, -5e-3 * 0.1 * theta, rtol=1e-6)
    np.testing.assert_array_equal(updates_s["params/classifier/kernel"], 0.0)


def test_l2_regularization_is_a_gradient_added_before_adam():
    """``"l2"``: the gradient ``2 wd p`` of ``wd ||p||^2`` goes through Adam, so with no other
    gradient the first step is ``-lr * sign(p)`` where decayed and 0 where masked."""
    theta, saved = pair()
    opt = gj.make_optimizer(total_steps=10, warmup_steps=0, trainable_lr=0.1, saved_lr=0.01,
                            trainable_weight_decay=0.5, saved_weight_decay=0.25, regularization="l2")
    updates_t, updates_s = first_update(opt, (theta, saved))
    np.testing.assert_allclose(updates_t, -0.1 * np.sign(theta), rtol=1e-5)
    np.testing.assert_allclose(updates_s["params/classifier/kernel"], -0.01, rtol=1e-5)
    np.testing.assert_array_equal(updates_s["params/classifier/bias"], 0.0)
    # the same as adding the penalty to the loss
    chain = optax.chain(optax.add_decayed_weights(2 * 0.5), optax.adam(gj.linear_warmup_decay(0.1, 10, 0)))
    grads = jnp.asarray([0.3, -0.1, 0.2, 0.0])
    want, _ = chain.update(grads, chain.init(theta), theta)
    via_loss = grads + jax.grad(lambda p: 0.5 * jnp.sum(p ** 2))(theta)
    np.testing.assert_allclose(via_loss, grads + 2 * 0.5 * theta)
    got = first_update(opt, (theta, saved), (grads, jax.tree_util.tree_map(jnp.zeros_like, saved)))[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gradient_clipping_acts_on_the_global_norm():
    theta, saved = pair()
    kw = {"total_steps": 10, "warmup_steps": 0, "trainable_weight_decay": 0.0}
    clipped, free = gj.make_optimizer(max_grad_norm=1.0, **kw), gj.make_optimizer(**kw)
    params = (theta, saved)
    big = jax.tree_util.tree_map(lambda v: 100.0 * jnp.ones_like(v), params)
    small = jax.tree_util.tree_map(lambda v: jnp.ones_like(v), params)

    def two_steps(opt):  # Adam's first step is scale-free; the second shows the clipping
        state = opt.init(params)
        _, state = opt.update(big, state, params)
        updates, _ = opt.update(small, state, params)
        return updates[0]
    assert not np.allclose(two_steps(clipped), two_steps(free))
    with pytest.raises(ValueError, match="max_grad_norm"):
        gj.make_optimizer(max_grad_norm=0.0, **kw)


def test_empty_trainable_or_empty_saved():
    _, saved = pair()
    opt = gj.make_optimizer(total_steps=5, warmup_steps=0, saved_weight_decay=0.5)
    updates = first_update(opt, ({}, saved))
    assert updates[0] == {}
    np.testing.assert_allclose(updates[1]["params/classifier/kernel"], -1e-3 * 0.5 * 2.0, rtol=1e-6)
    theta, _ = pair()
    updates = first_update(opt, (theta, {}))
    assert updates[1] == {}


def test_bad_arguments():
    for bad, what in (({"regularization": "l1"}, "regularization"), ({"trainable_lr": -1.0}, "trainable_lr"),
                      ({"saved_weight_decay": -0.1}, "saved_weight_decay"),
                      ({"total_steps": 0}, "total_steps"), ({"warmup_frac": 1.0}, "warmup_frac")):
        with pytest.raises(ValueError, match=what):
            gj.make_optimizer(**({"total_steps": 10} | bad))
    with pytest.raises(TypeError):
        gj.make_optimizer(10)  # keyword-only


# --------------------------------------------------------------------------- regularization and P

@pytest.mark.parametrize("isometric", [True, False])
def test_l2_on_theta_is_l2_on_delta_w_only_when_isometric(isometric):
    base = tiny_setup()[3]
    gp = gj.GPart.create(base, d=40, targets=("layer_0/kernel", "layer_1/kernel"), scheme="balanced",
                         isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(0).normal(size=40), jnp.float32)
    delta_sq = sum(float(np.sum(np.asarray(d, np.float64) ** 2)) for d in gp.deltas(theta))
    theta_sq = float(np.sum(np.asarray(theta, np.float64) ** 2))
    if isometric:
        np.testing.assert_allclose(delta_sq, theta_sq, rtol=1e-6)
    else:  # off by the group sizes, about N / d
        np.testing.assert_allclose(delta_sq / theta_sq, gp.num_adapted / gp.d, rtol=0.2)


@pytest.mark.parametrize("isometric", [True, False])
def test_decoupled_decay_shrinks_delta_w_by_the_same_factor(isometric):
    base = tiny_setup()[3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty groups
        gp = gj.GPart.create(base, d=40, targets=("layer_0/kernel",), isometric=isometric)
    theta = jnp.asarray(np.random.default_rng(1).normal(size=40), jnp.float32)
    opt = gj.make_optimizer(total_steps=10, warmup_steps=0, trainable_lr=0.1, trainable_weight_decay=0.3)
    updates = first_update(opt, (theta, {}))[0]
    before, after = gp.deltas(theta)[0], gp.deltas(theta + updates)[0]
    np.testing.assert_allclose(after, (1 - 0.1 * 0.3) * before, rtol=1e-5, atol=1e-7)


def test_tiny_model_trains_with_gpart_and_a_new_head():
    model, x, labels, base = tiny_setup()
    method = build("gpart", base, d=64)
    params = (method.init(), gj.saved_modules(base, "classifier"))
    opt = gj.make_optimizer(total_steps=150, trainable_lr=5e-2, saved_lr=5e-2)

    def loss_fn(pair):
        theta, saved = pair
        logits = model.apply(gj.full_params(method, theta, base, saved), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = opt.init(params)
    first = float(loss_fn(params))
    for _ in range(150):
        params, state, loss = step(params, state)
    assert float(loss) < 0.7 * first
    assert float(jnp.abs(params[0]).max()) > 0  # theta moved, not only the head
