"""GPart as a ``Method``: the adapter is ``theta`` itself.

``w = w0 + P theta`` with ``(P theta)_i = theta_{g(i)} / sqrt(n_{g(i)})`` (isometric) or
``theta_{g(i)}`` (``isometric=False``, the paper's ablation, named ``"gpart-noniso"``); see
``gpart_jax.core``. Trainable numbers: ``d``; stored: ``theta`` plus the seed.
"""

from __future__ import annotations

from gpart_jax.core import GPart
from gpart_jax.methods.base import Method


class GPartMethod(Method):
    """Wraps a built ``GPart``. ``init_bound`` > 0 draws theta uniform in ``[-b, b]``."""

    name = "gpart"
    tree_fields = ("gpart",)

    def __init__(self, gpart: GPart, init_bound: float = 0.0):
        self.gpart = gpart
        self.init_bound = float(init_bound)
        self.name = "gpart" if gpart.isometric else "gpart-noniso"
        self.target_paths = tuple(e.path for e in gpart.layout)
        self.target_shapes = {e.path: e.shape for e in gpart.layout}

    @classmethod
    def create(cls, base_params, *, d: int, seed: int = 42, init_bound: float = 0.0,
               **options) -> GPartMethod:
        """``GPart.create(base_params, d=d, seed=seed, **options)`` wrapped as a method."""
        return cls(GPart.create(base_params, d=d, seed=seed, **options), init_bound)

    def __repr__(self) -> str:
        return f"GPartMethod({self.gpart!r})"

    @property
    def num_adapted(self) -> int:
        return self.gpart.num_adapted

    def init(self, key=None):
        return self.gpart.init_theta(key, self.init_bound)

    def apply(self, adapter, base_params):
        return self.gpart.reparam(adapter, base_params)

    def metadata(self) -> dict:
        gp = self.gpart
        return {"method": self.name, "d": gp.d, "seed": gp.seed, "scheme": gp.scheme,
                "isometric": gp.isometric, "scope": gp.scope, "fingerprint": gp.fingerprint,
                "init_bound": self.init_bound}
