"""Group ids, deltas and gradients are the same with jax_enable_x64 on and off (each run in a
subprocess, since the flag is read when jax starts)."""

import json
import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    import gpart_jax as gj
    params = {"a": {"kernel": jnp.ones((30, 20), jnp.float32)},
              "b": {"kernel": jnp.ones((20, 30), jnp.float32)}}
    out = {"x64": bool(jax.config.jax_enable_x64)}
    for scheme in ("stateless", "balanced"):
        gp = gj.GPart.create(params, d=50, seed=2**63 + 5, targets="kernel", scheme=scheme)
        theta = jnp.linspace(-1, 1, 50, dtype=jnp.float32)

        def loss(t):
            full = gp.apply(t, params)
            return sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(full)), full

        grad, full = jax.jit(jax.grad(loss, has_aux=True))(theta)
        out[scheme] = {"ids": gp.global_group_ids().tolist(),
                       "dtype": str(full["a"]["kernel"].dtype),
                       "w": np.asarray(full["a"]["kernel"]).ravel().tolist(),
                       "grad": np.asarray(grad).tolist()}
    print(json.dumps(out))
""")


def run(x64: str) -> dict:
    env = dict(os.environ, JAX_ENABLE_X64=x64, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_same_ids_deltas_and_gradient_with_x64():
    off, on = run("0"), run("1")
    assert (off["x64"], on["x64"]) == (False, True)
    for scheme in ("stateless", "balanced"):
        assert off[scheme]["ids"] == on[scheme]["ids"]
        assert off[scheme]["dtype"] == on[scheme]["dtype"] == "float32"
        assert off[scheme]["w"] == on[scheme]["w"]
        assert off[scheme]["grad"] == on[scheme]["grad"]
        assert len(set(off[scheme]["ids"])) == 50
