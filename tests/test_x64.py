"""Group ids and gradients are the same with jax_enable_x64 on (run in a subprocess)."""

import os
import subprocess
import sys
import textwrap


def test_same_ids_and_gradient_with_x64():
    code = textwrap.dedent("""
        import json, jax, jax.numpy as jnp, numpy as np
        import gpart_jax as gj
        params = {"a": {"kernel": jnp.ones((30, 20), jnp.float32)},
                  "b": {"kernel": jnp.ones((20, 30), jnp.float32)}}
        out = {}
        for scheme in ("stateless", "balanced"):
            gp = gj.GPart.create(params, d=50, seed=2**63 + 5, targets=("kernel",), scheme=scheme)
            theta = jnp.linspace(-1, 1, 50, dtype=jnp.float32)
            loss = lambda t: sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(gp.reparam(t, params)))
            out[scheme] = {"ids": gp.global_group_ids().tolist(),
                           "grad": np.asarray(jax.jit(jax.grad(loss))(theta)).tolist()}
        print(json.dumps(out))
    """)
    results = []
    for x64 in ("0", "1"):
        env = dict(os.environ, JAX_ENABLE_X64=x64, JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True)
        results.append(proc.stdout.strip().splitlines()[-1])
    import json

    a, b = (json.loads(r) for r in results)
    for scheme in ("stateless", "balanced"):
        assert a[scheme]["ids"] == b[scheme]["ids"]
        assert a[scheme]["grad"] == b[scheme]["grad"]
