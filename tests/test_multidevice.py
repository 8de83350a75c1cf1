"""The same loss and gradient on one device and on 8 host devices (see conftest.py).

Patterns covered: base params sharded by NamedSharding under jit (each shard contributes a
partial d-vector, XLA sums them; theta stays replicated), data parallelism with shard_map and
with pmap (replicated params, sharded batch, gradients averaged).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gpart_jax as gj

N_DEV = 8


def needs_devices():
    if jax.device_count() < N_DEV:
        pytest.skip(f"needs {N_DEV} devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")


def model_params():
    rng = np.random.default_rng(0)
    return {"l1": {"kernel": jnp.asarray(rng.normal(size=(16, 32)) / 4, jnp.float32),
                   "bias": jnp.zeros(32)},
            "l2": {"kernel": jnp.asarray(rng.normal(size=(32, 8)) / 6, jnp.float32)}}


def batch():
    rng = np.random.default_rng(1)
    return (jnp.asarray(rng.normal(size=(64, 16)), jnp.float32),
            jnp.asarray(rng.normal(size=(64, 8)), jnp.float32))


def forward(params, x):
    h = jnp.tanh(x @ params["l1"]["kernel"] + params["l1"]["bias"])
    return h @ params["l2"]["kernel"]


@pytest.fixture(params=["stateless", "balanced"])
def setup(request):
    params = model_params()
    gp = gj.GPart.create(params, d=40, seed=3, targets=("kernel",), scheme=request.param,
                         bias=True, element_order="torch")
    theta = jnp.asarray(np.random.default_rng(2).normal(size=40) * 0.1, jnp.float32)

    def loss(theta, params, x, y):
        return jnp.mean((forward(gp.reparam(theta, params), x) - y) ** 2)

    return gp, theta, params, loss


def test_sharded_base_params_named_sharding(setup):
    needs_devices()
    gp, theta, params, loss = setup
    x, y = batch()
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss))(theta, params, x, y)
    mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("model",))
    specs = {"l1": {"kernel": P(None, "model"), "bias": P("model")}, "l2": {"kernel": P("model")}}
    sharded = jax.tree_util.tree_map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)),
                                     params, specs)
    assert len(sharded["l1"]["kernel"].sharding.device_set) == N_DEV
    theta_rep = jax.device_put(theta, NamedSharding(mesh, P()))
    val, grad = jax.jit(jax.value_and_grad(loss))(theta_rep, sharded, x, y)
    np.testing.assert_allclose(val, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
    # The adapted leaves keep the base's sharding, and theta's gradient is replicated.
    out = jax.jit(gp.reparam)(theta_rep, sharded)
    assert out["l1"]["kernel"].sharding.is_equivalent_to(sharded["l1"]["kernel"].sharding, 2)
    assert grad.sharding.is_fully_replicated


def test_data_parallel_shard_map(setup):
    needs_devices()
    _, theta, params, loss = setup
    x, y = batch()
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss))(theta, params, x, y)
    mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("data",))

    def step(theta, params, x, y):
        # shard_map tracks replication: differentiating the global (pmean) loss with respect to
        # the replicated theta gives the already-reduced gradient.
        return jax.value_and_grad(lambda t: jax.lax.pmean(loss(t, params, x, y), "data"))(theta)

    sharded_step = jax.jit(jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")), out_specs=(P(), P())))
    val, grad = sharded_step(theta, params, x, y)
    np.testing.assert_allclose(val, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_data_parallel_pmap(setup):
    needs_devices()
    _, theta, params, loss = setup
    x, y = batch()
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss))(theta, params, x, y)

    def step(theta, params, x, y):
        val, grad = jax.value_and_grad(loss)(theta, params, x, y)
        return jax.lax.pmean(val, "data"), jax.lax.pmean(grad, "data")

    shard = lambda a: a.reshape(N_DEV, -1, *a.shape[1:])  # noqa: E731
    val, grad = jax.pmap(step, axis_name="data", in_axes=(None, None, 0, 0))(
        theta, params, shard(x), shard(y))
    np.testing.assert_allclose(val[0], ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad[0], ref_grad, rtol=1e-5, atol=1e-7)


def test_shard_local_base_params_inside_shard_map_are_refused(setup):
    # Inside shard_map a leaf sharded across devices is a local block whose global positions are
    # unknown; reparam must refuse it (by shape), never hash local indices as if global.
    needs_devices()
    gp, theta, params, _ = setup
    mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("model",))
    specs = {"l1": {"kernel": P(None, "model"), "bias": P("model")}, "l2": {"kernel": P("model")}}
    f = jax.shard_map(lambda t, p: gp.reparam(t, p)["l2"]["kernel"], mesh=mesh,
                      in_specs=(P(), specs), out_specs=P("model"))
    with pytest.raises(ValueError, match="base_params does not match"):
        jax.jit(f)(theta, params)
