"""The trainer's one step on 8 host devices: it exchanges only what trains, and agrees with one device.

The compiled HLO's collectives (``experiments.step.collective_bytes``) of the data-parallel step
are, for every method, one all-reduce of the gradient of the trainable pytree and the saved head,
plus the loss and the weight (4 (trainable + head) + 8 bytes); a plain ``jit`` of the same loss
reduces the adapted weights' gradient instead. On one device the step is the plain one, bit for
bit; on 8 its losses and parameters agree with one device's within float32 reassociation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpart_jax as gj
from experiments.config import load_config
from experiments.step import collective_bytes, make_mesh, make_train_step, put_batch, replicate
from experiments.tasks import build_task
from experiments.train import Runner

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 host devices (conftest.py)")

TINY = ["--config.model.num_layers=1", "--config.task.train_examples=64",
        "--config.task.validation_examples=32", "--config.task.test_examples=32",
        "--config.task.max_length=16", "--config.task.buckets=(16,)", "--config.train.batch_size=16",
        "--config.train.eval_batch_size=16", "--config.model.dropout=0.0"]
METHODS = {"gpart": {"d": 512}, "gpart-noniso": {"d": 512}, "unilora": {"d": 512, "r": 2},
           "lora": {"r": 4}, "vera": {"r": 16}, "full": {}, "head-only": {}}


@pytest.fixture(scope="module")
def task():
    return build_task(load_config("configs/minilm.py:task=rt,method=gpart", TINY))


def _state(task, method, optimizer, mesh):
    trainable = method.init(jax.random.key(1))
    state = {"trainable": trainable, "saved": dict(task.saved),
             "opt": optimizer.init((trainable, dict(task.saved))), "step": jnp.int32(0)}
    return replicate(state, mesh)


@pytest.mark.parametrize("name", METHODS)
def test_the_step_exchanges_the_trainable_size_for_every_method(task, name):
    method = gj.methods.build(name, task.base, targets=("query/kernel", "value/kernel"), **METHODS[name])
    t = dataclasses.replace(task, method=method)
    mesh = make_mesh(0)
    optimizer = gj.make_optimizer(total_steps=4)
    state = _state(t, method, optimizer, mesh)
    batch = put_batch(next(iter(t.splits["train"].epoch(0))), mesh, t.device_keys(), grad_accum=1)
    step = make_train_step(t, optimizer, mesh=mesh, grad_accum=1)
    ops = collective_bytes(step.lower(state, replicate(method, mesh), replicate(t.base, mesh), batch)
                           .compile().as_text())
    head = sum(int(np.prod(np.shape(v))) for v in t.saved.values())
    assert sum(op["bytes"] for op in ops) == 4 * (method.num_trainable + head) + 8, ops
    assert {op["op"] for op in ops} == {"all-reduce"}


def test_a_plain_jit_step_reduces_the_adapted_weights_instead(task):
    """What the trainer avoids: ``jit(value_and_grad)`` over a sharded batch (the README's "before")."""
    method = task.method
    mesh = make_mesh(0)

    def loss(pair, base, batch):
        total, weight = task.loss_terms(gj.full_params(method, pair[0], base, pair[1]), batch)
        return total / weight

    pair = replicate((method.init(), dict(task.saved)), mesh)
    batch = put_batch(next(iter(task.splits["train"].epoch(0))), mesh, task.device_keys())
    ops = collective_bytes(jax.jit(jax.value_and_grad(loss)).lower(pair, replicate(task.base, mesh), batch)
                           .compile().as_text())
    assert sum(op["bytes"] for op in ops) >= 4 * method.num_adapted


def _run(task, cfg, devices: int, steps: int = 3):
    runner = Runner(task, cfg, mesh=make_mesh(devices))
    state = runner.init_state(10)
    stream = task.splits["train"].stream()
    losses = []
    for _ in range(steps):
        _, batch = next(stream)
        state, out = runner.train_step(state, batch)
        losses.append(float(out["loss"]))
    state = jax.device_get(state)
    return np.asarray(losses), state


def test_eight_devices_agree_with_one(task):
    cfg = task.cfg
    losses_1, state_1 = _run(task, cfg, 1)
    losses_8, state_8 = _run(task, cfg, 8)
    np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(state_8["trainable"]),
                    jax.tree_util.tree_leaves(state_1["trainable"]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for path in state_1["saved"]:
        np.testing.assert_allclose(state_8["saved"][path], state_1["saved"][path], atol=1e-6)


def test_one_device_is_the_plain_step_bit_for_bit(task):
    """The one-device step is ``jit`` of the same function, without ``shard_map``: the results of
    the committed single-device runs stay unchanged to the last bit."""
    from experiments import step as step

    cfg = task.cfg
    runner = Runner(task, cfg, mesh=make_mesh(1))
    state = runner.init_state(10)
    optimizer = runner.optimizer

    def plain(state, method, base, batch):
        rng = jax.random.fold_in(runner.dropout_key, state["step"])
        g, loss, weight = step.gradients(task, state["trainable"], state["saved"], method, base, batch,
                                      rng, 1)
        scale = 1.0 / jnp.maximum(weight, 1.0)
        grads = jax.tree_util.tree_map(lambda x: x * scale, g)
        pair = (state["trainable"], state["saved"])
        updates, opt = optimizer.update(grads, state["opt"], pair)
        trainable, saved = optax.apply_updates(pair, updates)
        return {"trainable": trainable, "saved": saved, "opt": opt, "step": state["step"] + 1}

    reference = jax.jit(plain)
    other = state
    stream = task.splits["train"].stream()
    for _ in range(2):
        _, batch = next(stream)
        state, _ = runner.train_step(state, batch)
        other = reference(other, runner.method, runner.base, runner.put_train_batch(batch))
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state)),
                    jax.tree_util.tree_leaves(jax.device_get(other)), strict=True):
        np.testing.assert_array_equal(a, b)
