"""Every method (GPart's ``apply`` included) gives the same params, loss and gradient under every
transformation: without jit, under jit, vmapped over several trainables, and over 8 host devices
(pmap and shard_map with one trainable per device; jit with the trainables, the batch and the
base params sharded by NamedSharding). conftest.py makes the 8 CPU devices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import gpart_jax as gj
import gpart_jax.methods as M

N_DEV = 8  # also the number of trainables: one per device under pmap and shard_map
TOL = dict(rtol=1e-5, atol=1e-5)
OPTIONS = {
    "gpart": dict(d=24), "gpart-noniso": dict(d=24), "lora": dict(r=2), "unilora": dict(d=24, r=2),
    "vera": dict(r=4), "full": {}, "head-only": {}, "fastfood": dict(d=24),
}


def base_params():
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    return {"params": {
        **{f"layer_{i}": {m: {"kernel": arr(8, 8), "bias": arr(8)} for m in ("query", "value")}
           for i in range(2)},
        "head": {"kernel": arr(8, 2), "bias": jnp.zeros(2)},
    }}


def forward(params, x):
    p = params["params"]
    for i in range(2):
        x = jnp.tanh(x @ p[f"layer_{i}"]["query"]["kernel"] + p[f"layer_{i}"]["query"]["bias"])
        x = x + jnp.tanh(x @ p[f"layer_{i}"]["value"]["kernel"] + p[f"layer_{i}"]["value"]["bias"])
    return x @ p["head"]["kernel"] + p["head"]["bias"]


@functools.cache
def setup(name):
    """The method, its step function, ``N_DEV`` stacked (trainable, saved) pairs, the data and the
    reference: ``jit(step)`` applied to each pair in turn."""
    base = base_params()
    method = M.build(name, base, targets=("query", "value"), seed=3, **OPTIONS[name])
    saved = gj.saved_modules(base, "head")
    pair0 = (method.init(jax.random.key(0)), saved)
    flat0, unravel = ravel_pytree(pair0)
    noise = np.random.default_rng(1).normal(size=(N_DEV, flat0.size)).astype(np.float32)
    pairs = [unravel(flat0 + 0.1 * jnp.asarray(n)) for n in noise]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *pairs)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)

    def step(pair, base, x, y):
        """(adapted params, loss, gradient with respect to the pair)."""
        def loss(pair):
            params = gj.full_params(method, pair[0], base, pair[1])
            return jnp.mean((forward(params, x) - y) ** 2), params

        (value, params), grad = jax.value_and_grad(loss, has_aux=True)(pair)
        return params, value, grad

    reference = jax.jit(step)
    expected = [reference(pair, base, x, y) for pair in pairs]
    expected = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *expected)
    return method, step, stacked, base, x, y, expected


def index(tree, k):
    return jax.tree_util.tree_map(lambda a: a[k], tree)


class TransformsTest(chex.TestCase):

    @chex.variants(without_jit=True, with_jit=True, with_pmap=True)
    @parameterized.parameters(*M.METHODS)
    def test_apply_and_gradient_agree_under_every_transformation(self, name):
        if jax.device_count() < N_DEV:
            self.skipTest(f"needs {N_DEV} devices (conftest sets XLA_FLAGS)")
        method, step, pairs, base, x, y, expected = setup(name)
        variant = self.variant.type
        # The gradient reaches every trainable number of the method (not all zero).
        grad_method = expected[2][0]
        if method.num_trainable:
            assert np.abs(ravel_pytree(grad_method)[0]).max() > 0
        if variant is chex.ChexVariantType.WITH_PMAP:
            # One pair per device.
            got = self.variant(step, broadcast_args_to_devices=False, reduce_fn=None,
                               in_axes=(0, None, None, None))(pairs, base, x, y)
            chex.assert_trees_all_close(got, expected, **TOL)
            mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("devices",))
            sharded = jax.jit(jax.shard_map(
                jax.vmap(step, in_axes=(0, None, None, None)), mesh=mesh,
                in_specs=(P("devices"), P(), P(), P()), out_specs=P("devices")))
            chex.assert_trees_all_close(sharded(pairs, base, x, y), expected, **TOL)
            return
        if variant is chex.ChexVariantType.WITHOUT_JIT:  # under jit this is the reference itself
            chex.assert_trees_all_close(self.variant(step)(index(pairs, 3), base, x, y),
                                        index(expected, 3), **TOL)
        batched = self.variant(jax.vmap(step, in_axes=(0, None, None, None)))
        chex.assert_trees_all_close(batched(pairs, base, x, y), expected, **TOL)
        if variant is chex.ChexVariantType.WITH_JIT:
            # The same jitted function on sharded inputs: pairs and batch over "data", the base
            # kernels' output dimension over "model".
            mesh = Mesh(np.array(jax.devices()[:N_DEV]).reshape(2, 4), ("data", "model"))

            def put(tree, spec):
                return jax.tree_util.tree_map(
                    lambda a: jax.device_put(a, NamedSharding(mesh, spec(a))), tree)

            sharded_base = put(base, lambda a: P(*([None] * (a.ndim - 1)), "model")
                               if a.shape[-1] % 4 == 0 else P())
            assert len(sharded_base["params"]["layer_0"]["query"]["kernel"].sharding.device_set) == 8
            got = batched(put(pairs, lambda a: P("data")), sharded_base,
                          put(x, lambda a: P("data")), put(y, lambda a: P("data")))
            chex.assert_trees_all_close(got, expected, **TOL)


def test_shard_local_base_params_inside_shard_map_are_refused():
    # Inside shard_map a leaf sharded across devices is a local block whose global positions are
    # unknown; apply must refuse it (by shape), never hash local indices as if they were global.
    if jax.device_count() < N_DEV:
        pytest.skip(f"needs {N_DEV} devices")
    method, _, pairs, base, _, _, _ = setup("gpart")
    mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("model",))
    specs = jax.tree_util.tree_map(lambda a: P(*([None] * (a.ndim - 1)), "model")
                                   if a.shape[-1] % N_DEV == 0 else P(), base)
    f = jax.shard_map(lambda t, p: method.apply(t, p)["params"]["layer_0"]["query"]["kernel"],
                      mesh=mesh, in_specs=(P(), specs), out_specs=P(None, "model"))
    with pytest.raises(gj.LayoutMismatchError, match=r"query/kernel: shape \(8, 1\), expected \(8, 8\)"):
        jax.jit(f)(index(pairs, 0)[0], base)
