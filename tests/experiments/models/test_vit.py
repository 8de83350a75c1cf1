"""The small ViT (experiments/models/vit.py): shapes, parameter paths for GPart, a training step,
the pretrained cache (``python -m experiments pretrain-vit``) and the model interface."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpart_jax as gj
from experiments import cli, pretrain_vit
from experiments.config import load_config
from experiments.data import sources
from experiments.models import vit
from tests.installed import require_fashion_mnist

TINY = vit.ViTConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """``$GPART_JAX_CACHE`` at an empty folder: ``vit.cache_dir()`` is ``<it>/vit_fmnist``."""
    monkeypatch.setenv("GPART_JAX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "vit_fmnist"


def _save_tiny(directory, shift: float = 0.01) -> dict:
    params = vit.ViT(TINY).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    params = jax.tree_util.tree_map(lambda x: x + shift, params)
    vit.save_vit(directory, TINY, params, {"test_accuracy": 0.5})
    return params


def test_forward_shapes_and_patches():
    model = vit.ViT(vit.ViTConfig())
    images = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    variables = model.init(jax.random.key(1), images)
    assert model.apply(variables, images).shape == (3, 10)
    assert model.apply(variables, images[..., 0]).shape == (3, 10)
    assert model.apply(variables, images, features=True).shape == (3, 96)
    p = variables["params"]
    assert p["embeddings"]["position"].shape == (1, 17, 96)
    assert p["embeddings"]["patch"]["kernel"].shape == (49, 96)
    # patch k is the k-th 7x7 block in row-major order
    x = np.arange(28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    patches = np.asarray(vit.patchify(jnp.asarray(x), 7))
    np.testing.assert_array_equal(patches[0, 5], x[0, 7:14, 7:14, 0].reshape(-1))


def test_gpart_targets_query_value_in_layer_order():
    variables = vit.ViT(vit.ViTConfig()).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    gp = gj.GPart.create(variables, d=128, targets=("query/kernel", "value/kernel"))
    assert [e.path for e in gp.layout] == [f"params/encoder/layer/{i}/attention/{m}/kernel"
                                           for i in range(4) for m in ("query", "value")]
    assert gp.num_adapted == 8 * 96 * 96
    # "all-linear" leaves the classifier out by default
    assert not any("head" in e.path for e in gj.layout.build(variables, "all-linear"))


def test_train_step_decreases_loss():
    model = vit.ViT(TINY)
    key_x, key_y, key_p = jax.random.split(jax.random.key(0), 3)
    images = jax.random.normal(key_x, (32, 28, 28, 1))
    labels = jax.random.randint(key_y, (32,), 0, 10)
    params = model.init(key_p, images)["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(15):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert abs(losses[0] - np.log(10)) < 1e-3  # zero-initialised head: uniform predictions at start
    assert losses[-1] < 0.7 * losses[0]


# --------------------------------------------------------------------------- the cache

def test_cache_round_trip_and_new_head(tmp_path):
    model = vit.ViT(TINY)
    params = _save_tiny(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == 0.5
    assert not (tmp_path / "params.safetensors.tmp").exists()
    loaded_model, loaded = vit.load_pretrained_vit(directory=tmp_path)
    assert loaded_model.config == TINY
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    np.testing.assert_array_equal(np.asarray(loaded_model.apply(loaded, x)),
                                  np.asarray(model.apply({"params": params}, x)))
    model3, params3 = vit.load_pretrained_vit(num_classes=3, directory=tmp_path)
    assert model3.apply(params3, x).shape == (2, 3) and not np.any(params3["params"]["head"]["kernel"])
    np.testing.assert_array_equal(np.asarray(params3["params"]["encoder"]["layer"]["1"]["mlp"]["fc1"]["kernel"]),
                                  np.asarray(params["encoder"]["layer"]["1"]["mlp"]["fc1"]["kernel"]))


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPART_JAX_CACHE", str(tmp_path))
    assert vit.cache_dir() == tmp_path / "vit_fmnist"
    monkeypatch.delenv("GPART_JAX_CACHE")
    assert vit.cache_dir().parts[-3:] == (".cache", "gpart-jax", "vit_fmnist")


def test_missing_pretrained_vit_names_the_command(cache):
    """No weights in the cache: an error naming ``python -m experiments pretrain-vit``, and nothing
    is trained behind the user's back."""
    with pytest.raises(vit.MissingPretrainedError, match=r"`python -m experiments pretrain-vit`"):
        vit.load_pretrained_vit()
    cfg = load_config("configs/vit.py:task=digits,method=gpart")
    with pytest.raises(vit.MissingPretrainedError, match=str(cache)):
        vit.load(cfg, 10)
    assert not cache.exists()
    assert issubclass(vit.MissingPretrainedError, FileNotFoundError)
    # a half-written cache (no weights file yet) counts as missing
    cache.mkdir(parents=True)
    (cache / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(vit.MissingPretrainedError):
        vit.load_pretrained_vit()


def test_pretrain_vit_command_writes_the_cache_that_load_reads(monkeypatch, tmp_path, capsys):
    """``python -m experiments pretrain-vit`` without Fashion-MNIST is one line on stderr naming the
    install command (exit code 2); ``pretrain`` (here a tiny ViT on 256 synthetic images, one
    epoch of 4 steps) writes the weights, config and metrics that ``load_pretrained_vit`` reads."""
    monkeypatch.setenv("GPART_JAX_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    assert cli.main(["pretrain-vit", "--out", str(tmp_path / "vit"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install -y dataset-fashion-mnist" in err
    assert not (tmp_path / "vit").exists()

    rng = np.random.default_rng(0)

    def fake(split):
        n = 256 if split == "train" else 64
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)

    monkeypatch.setattr(pretrain_vit, "load_fashion_mnist", fake)
    returned = pretrain_vit.pretrain(tmp_path / "vit", config=TINY, epochs=1, batch_size=64)
    metrics = json.loads((tmp_path / "vit" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["epochs"] == 1 and len(metrics["history"]) == 1 and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["warmup_steps"] == 2  # 4 steps: the warm-up is cut to half of them
    model, variables = vit.load_pretrained_vit(directory=tmp_path / "vit")
    assert model.config == TINY
    assert metrics["num_params"] == sum(x.size for x in jax.tree_util.tree_leaves(variables))


def test_fashion_mnist_reader(monkeypatch, tmp_path):
    """``load_fashion_mnist`` reads the IDX files through ``sources.read_fashion_mnist``."""
    import gzip

    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.asarray([7, 0, 9], np.uint8)
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + np.asarray([3, 28, 28], ">u4").tobytes() + images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + np.asarray([3], ">u4").tobytes() + labels.tobytes())
    monkeypatch.setenv("GPART_JAX_FASHION_MNIST_DIR", str(tmp_path))
    x, y = pretrain_vit.load_fashion_mnist("test")
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [7, 0, 9] and y.dtype == np.int32
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(sources.DataUnavailableError, match="apt-get install -y dataset-fashion-mnist"):
        pretrain_vit.load_fashion_mnist("test")


@pytest.mark.slow
def test_pretrained_vit_accuracy():
    """The cached pretrained ViT (made by ``python -m experiments pretrain-vit``; not here)."""
    if not (vit.cache_dir() / "params.safetensors").exists():
        pytest.skip("no pretrained ViT in the cache: python -m experiments pretrain-vit")
    require_fashion_mnist()
    model, variables = vit.load_pretrained_vit()
    images, labels = pretrain_vit.load_fashion_mnist("test")
    accuracy = pretrain_vit.evaluate(model, variables["params"], images, labels)
    recorded = json.loads((vit.cache_dir() / "metrics.json").read_text())["test_accuracy"]
    assert accuracy > 0.85 and abs(accuracy - recorded) < 1e-3


# --------------------------------------------------------------------------- the model interface

def test_abstract_follows_the_cache_without_reading_weights(cache):
    cfg = load_config("configs/vit.py:task=mnist5k,method=lora")
    _, shapes = vit.abstract(cfg, 7)  # no cache: the default config
    assert shapes["params"]["head"]["kernel"].shape == (96, 7)
    _save_tiny(cache)
    (cache / "params.safetensors").write_bytes(b"not read")  # shapes come from config.json alone
    _, shapes = vit.abstract(cfg, 7)
    assert shapes["params"]["head"]["kernel"].shape == (32, 7)
    assert sorted(shapes["params"]["encoder"]["layer"]) == ["0", "1"]


def test_load_gives_a_zero_head_and_the_pretrained_encoder(cache):
    params = _save_tiny(cache)
    cfg = load_config("configs/vit.py:task=digits,method=gpart")
    for classes in (10, 4):  # a new head even with the pretrained 10 classes
        model, variables = vit.load(cfg, classes)
        assert variables["params"]["head"]["kernel"].shape == (32, classes)
        assert not any(np.any(x) for x in jax.tree_util.tree_leaves(variables["params"]["head"]))
        np.testing.assert_array_equal(variables["params"]["embeddings"]["patch"]["kernel"],
                                      params["embeddings"]["patch"]["kernel"])
    with pytest.raises(ValueError, match="float32 only"):
        vit.load(load_config("configs/vit.py", ["--config.compute_dtype=bfloat16"]), 10)
    assert vit.HEAD == ("head",) and vit.KIND == "classification" and vit.DATA == "image"


def test_image_arrays_resize_and_normalize_like_pretraining():
    small = [{"image": np.full((8, 8, 1), 255, np.uint8), "label": 3},
             {"image": np.zeros((8, 8, 1), np.uint8), "label": 1}]
    arrays = vit.image_arrays(small, 28)
    assert arrays["image"].shape == (2, 28, 28, 1) and arrays["image"].dtype == np.float32
    assert arrays["label"].tolist() == [3, 1] and arrays["label"].dtype == np.int32
    np.testing.assert_allclose(arrays["image"][0], (1 - vit.FMNIST_MEAN) / vit.FMNIST_STD, rtol=1e-5)
    np.testing.assert_allclose(arrays["image"][1], -vit.FMNIST_MEAN / vit.FMNIST_STD, rtol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    same = vit.image_arrays([{"image": image, "label": 0}], 28)["image"][0]
    np.testing.assert_allclose(same, np.asarray(vit.normalize(image[None]))[0], rtol=1e-6)


def test_batches_and_logits(cache):
    _save_tiny(cache)
    cfg = load_config("configs/vit.py:task=digits,method=gpart", ["--config.seed=2"])
    model, variables = vit.load(cfg, 10)
    rows = [{"image": np.full((8, 8, 1), 16 * i, np.uint8), "label": i % 10} for i in range(10)]
    stream = vit.batches(cfg, rows, batch_size=4, shuffle=True)
    assert len(stream) == 3 and stream.seed == 2
    batch = next(iter(stream.epoch(0)))
    assert batch["image"].shape == (4, 28, 28, 1)
    logits = vit.logits(model, variables, batch)
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    assert not np.any(np.asarray(logits))  # the new head is zero
    # no dropout in the pretrained config: an rng changes nothing
    np.testing.assert_array_equal(np.asarray(logits),
                                  np.asarray(vit.logits(model, variables, batch, rng=jax.random.key(0))))
