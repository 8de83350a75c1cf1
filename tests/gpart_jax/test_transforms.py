"""Every method (GPart's ``apply`` included) gives the same params, loss and gradient under every
transformation: without jit, under jit, vmapped over several trainables, and over 8 host devices
(pmap with one trainable per device; jit with the trainables, the batch and the base params
sharded by NamedSharding). tests/conftest.py makes the 8 CPU devices."""

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
import gpart_jax.methods as methods

N_DEV = 8  # also the number of trainables: one per device under pmap
TOL = dict(rtol=1e-5, atol=1e-5)
OPTIONS = {
    "gpart": dict(d=12), "gpart-noniso": dict(d=12), "lora": dict(r=2), "unilora": dict(d=12, r=2),
    "vera": dict(r=4), "full": {}, "head-only": {}, "fastfood": dict(d=12),
}


def base_params():
    rng = np.random.default_rng(0)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    return {"params": {
        "layer_0": {m: {"kernel": arr(8, 8), "bias": arr(8)} for m in ("query", "value")},
        "head": {"kernel": arr(8, 2), "bias": jnp.zeros(2)},
    }}


def forward(params, x):
    p = params["params"]
    layer = p["layer_0"]
    x = jnp.tanh(x @ layer["query"]["kernel"] + layer["query"]["bias"])
    x = x + jnp.tanh(x @ layer["value"]["kernel"] + layer["value"]["bias"])
    return x @ p["head"]["kernel"] + p["head"]["bias"]


@functools.cache
def setup(name):
    """The method, its step function, ``N_DEV`` stacked (trainable, saved) pairs, the data and the
    reference: ``jit(step)`` applied to each pair in turn."""
    base = base_params()
    method = methods.build(name, base, targets=("query", "value"), seed=3, **OPTIONS[name])
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


def spread_over_devices(pairs, base, x, y):
    """The inputs on a 2 x 4 mesh: pairs and batch over "data", the base kernels' output
    dimension over "model"."""
    mesh = Mesh(np.array(jax.devices()[:N_DEV]).reshape(2, 4), ("data", "model"))

    def put(tree, spec):
        return jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(mesh, spec(a))), tree)

    def by_model(a):
        return P(*([None] * (a.ndim - 1)), "model") if a.shape[-1] % 4 == 0 else P()

    sharded_base = put(base, by_model)
    assert len(sharded_base["params"]["layer_0"]["query"]["kernel"].sharding.device_set) == N_DEV
    by_data = lambda a: P("data")  # noqa: E731
    return put(pairs, by_data), sharded_base, put(x, by_data), put(y, by_data)


class TransformsTest(chex.TestCase):

    @chex.variants(without_jit=True, with_jit=True, with_pmap=True)
    @parameterized.parameters(*methods.METHODS)
    def test_apply_and_gradient_agree_under_every_transformation(self, name):
        if jax.device_count() < N_DEV:
            self.skipTest(f"needs {N_DEV} devices (conftest sets XLA_FLAGS)")
        method, step, pairs, base, x, y, expected = setup(name)
        if method.num_trainable:  # the loss reaches the method's trainable numbers
            assert np.abs(ravel_pytree(expected[2][0])[0]).max() > 0
        variant = self.variant.type
        if variant is chex.ChexVariantType.WITHOUT_JIT:  # op by op (jit(step) is the reference)
            for k in (0, N_DEV - 1):
                chex.assert_trees_all_close(self.variant(step)(index(pairs, k), base, x, y),
                                            index(expected, k), **TOL)
        elif variant is chex.ChexVariantType.WITH_JIT:  # vmap over the pairs, then on 8 devices
            batched = self.variant(jax.vmap(step, in_axes=(0, None, None, None)))
            chex.assert_trees_all_close(batched(pairs, base, x, y), expected, **TOL)
            chex.assert_trees_all_close(batched(*spread_over_devices(pairs, base, x, y)), expected,
                                        **TOL)
        else:  # pmap: one pair per device
            pmapped = self.variant(step, broadcast_args_to_devices=False, reduce_fn=None,
                                   in_axes=(0, None, None, None))
            chex.assert_trees_all_close(pmapped(pairs, base, x, y), expected, **TOL)


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
