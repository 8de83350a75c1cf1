"""What some tests read from outside the repository, and how they react when it is missing."""

import os
import pathlib

import pytest

FASHION_MNIST = pathlib.Path(os.environ.get("GPART_JAX_FASHION_MNIST_DIR",
                                            "/usr/share/datasets/fashion-mnist"))


def require_fashion_mnist() -> None:
    """Skip, or fail on CI, when Debian's Fashion-MNIST is not installed.

    ``bash tests/run.sh`` installs it when it runs as root (as CI does); elsewhere the tests that
    read it are skipped with the install step. On CI (``CI=true``) a missing copy is a failure, so
    that no test passes there only because of something installed by hand.
    """
    if (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        return
    why = (f"Debian's Fashion-MNIST is not in {FASHION_MNIST}: run `bash tests/run.sh` as root (it "
           f"installs it) or `apt-get install -y dataset-fashion-mnist`")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)
