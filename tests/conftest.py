"""Test setup: 8 host CPU devices, so multi-device tests run on a 1-CPU machine too.

The flag must be set before jax is imported anywhere.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

