"""The ``gpart-jax`` command.

    gpart-jax info ADAPTER                 d, seed, scheme, fingerprint, size, trainable count
    gpart-jax peft merge|import|export ... the reference's PEFT adapters (gpart_jax.interop.cli)
    gpart-jax train|eval|merge|params ...  experiments (the repository's experiments/ package)

The library stays free of experiment code: ``train``, ``eval``, ``merge`` and ``params`` are
dispatched to ``experiments.cli``, which exists in a checkout of the repository.
"""

from __future__ import annotations

import json
import sys

EXPERIMENT_COMMANDS = ("train", "eval", "merge", "params")


def info(path: str) -> int:
    from gpart_jax.checkpoint import AdapterError, directory_size, read_adapter_metadata

    try:
        md = read_adapter_metadata(path)
    except AdapterError as e:
        print(f"gpart-jax info: {e}", file=sys.stderr)
        return 2
    trainable = sum(int(_prod(e["shape"])) for e in md["adapter"])
    saved = sum(int(_prod(e["shape"])) for e in md["saved"])
    out = {"method": md["method"].get("method"), "trainable_adapter": trainable,
           "trainable_saved_modules": saved, "size_on_disk_bytes": directory_size(path),
           "package_version": md["package_version"], "format_version": md["format_version"]}
    spec = md.get("gpart")
    if spec:
        out.update({k: spec[k] for k in ("d", "seed", "scheme", "isometric", "scope", "fingerprint")})
        out["num_adapted"] = sum(int(_prod(e[1])) for e in spec["layout"])
        out["adapted_leaves"] = len(spec["layout"])
    print(json.dumps(out, indent=1))
    return 0


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0 if argv else 2
    command = argv[0]
    if command == "info":
        if len(argv) != 2:
            print("usage: gpart-jax info ADAPTER_DIR", file=sys.stderr)
            return 2
        return info(argv[1])
    if command == "peft":
        from gpart_jax.interop import cli as peft_cli

        return peft_cli.main(argv)
    if command in EXPERIMENT_COMMANDS:
        try:
            from experiments import cli as experiments_cli
        except ImportError as e:
            print(f"gpart-jax {command}: the experiment commands live in the repository's "
                  f"experiments/ package, which is not importable here ({e}); run from a checkout "
                  f"installed with pip install -e .", file=sys.stderr)
            return 2
        return experiments_cli.main(argv)
    print(f"gpart-jax: unknown command {command!r}\nusage:\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
