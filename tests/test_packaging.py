"""The wheel holds the library alone (typed, with its own dependencies), and a library-only
install works without the checkout: ``import gpart_jax`` and the ``gpart-jax`` command, which
sends experiment commands to a checkout."""

from __future__ import annotations

import email.parser
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = {"jax", "jaxlib", "flax", "optax", "numpy", "safetensors"}
TEST_EXTRA = {"pytest", "chex", "hypothesis"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel built from a copy of the checkout's files, experiments/ and tests/ included (a
    build writes into its source tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the checkout's file list needs git and a git checkout ({e})")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, source / name)
    assert (source / "experiments" / "__init__.py").is_file()
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source),
                          "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    (built,) = (tmp / "dist").glob("gpart_jax-*.whl")
    return built


def requirement_names(lines: list[str]) -> tuple[set[str], dict[str, set[str]]]:
    """(unconditional requirement names, {extra: names}) of ``Requires-Dist`` lines."""
    plain, extras = set(), {}
    for line in lines:
        name = re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower()
        extra = re.search(r'extra == "([^"]+)"', line)
        if extra:
            extras.setdefault(extra.group(1), set()).add(name)
        else:
            plain.add(name)
    return plain, extras


def test_the_wheel_holds_the_library_alone(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = email.parser.Parser().parsestr(
            z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"gpart_jax", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "gpart_jax/py.typed" in names
    modules = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gpart_jax").rglob("*.py"))
    assert sorted(n for n in names if n.endswith(".py")) == modules
    plain, extras = requirement_names(metadata.get_all("Requires-Dist"))
    assert plain == LIBRARY
    assert extras["test"] == TEST_EXTRA
    assert "gpart-jax = gpart_jax.cli:main" in entry_points


def test_a_library_only_install_works_outside_a_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    env = dict(os.environ, PYTHONPATH=str(site))
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=outside, env=env,
                              capture_output=True, text=True, timeout=300)

    imported = python("import gpart_jax as gj; print(gj.__file__, gj.__version__)")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith(str(site / "gpart_jax")), imported.stdout
    missing = python("import experiments")
    assert missing.returncode != 0 and "No module named 'experiments'" in missing.stderr
    command = subprocess.run([str(site / "bin" / "gpart-jax"), "train"], cwd=outside, env=env,
                             capture_output=True, text=True, timeout=300)
    assert command.returncode == 2
    assert "run it from a checkout of the repository: python -m experiments train" in command.stderr
