"""Small ViT: shapes, parameter paths for GPart, a training step, the cache round trip, IDX reading."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpart_jax as gj
from experiments import pretrain_vit
from experiments.models import vit

TINY = vit.ViTConfig(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)


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
    assert not any("head" in e.path for e in gj.GPart.create(variables, d=128, targets="all-linear").layout)


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


def test_cache_round_trip_and_new_head(tmp_path, capsys):
    model = vit.ViT(TINY)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    params = jax.tree_util.tree_map(lambda x: x + 0.01, params)
    vit.save_vit(tmp_path, TINY, params, {"test_accuracy": 0.5})
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] == 0.5
    loaded_model, loaded = vit.load_pretrained_vit(directory=tmp_path)
    assert loaded_model.config == TINY
    assert "pretraining" not in capsys.readouterr().out
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    np.testing.assert_array_equal(np.asarray(loaded_model.apply(loaded, x)),
                                  np.asarray(model.apply({"params": params}, x)))
    model3, params3 = vit.load_pretrained_vit(num_classes=3, directory=tmp_path)
    assert model3.apply(params3, x).shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(params3["params"]["encoder"]["layer"]["1"]["mlp"]["fc1"]["kernel"]),
                                  np.asarray(params["encoder"]["layer"]["1"]["mlp"]["fc1"]["kernel"]))


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPART_JAX_CACHE", str(tmp_path))
    assert vit.cache_dir() == tmp_path / "vit_fmnist"


def test_missing_cache_runs_pretraining(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_pretrain(directory, **kw):
        calls.append(directory)
        params = vit.ViT(TINY).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        vit.save_vit(directory, TINY, params, {"test_accuracy": 0.0})

    monkeypatch.setattr(pretrain_vit, "pretrain", fake_pretrain)
    model, _ = vit.load_pretrained_vit(directory=tmp_path / "fresh")
    assert calls == [tmp_path / "fresh"] and model.config == TINY
    assert "No pretrained ViT" in capsys.readouterr().out


def test_idx_reader_and_missing_dataset_error(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.asarray([2, 3, 4], ">u4").tobytes()
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(pretrain_vit.read_idx(tmp_path / "x.gz"), images)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        pretrain_vit.load_fashion_mnist("train", tmp_path)


@pytest.mark.slow
def test_pretrained_vit_accuracy():
    """The cached pretrained ViT (made by experiments/pretrain_vit.py; not pretrained here)."""
    if not (vit.cache_dir() / "params.safetensors").exists():
        pytest.skip("no pretrained ViT in the cache: python -m experiments.pretrain_vit")
    if not pretrain_vit.FASHION_MNIST_DIR.exists():
        pytest.skip("apt-get install -y dataset-fashion-mnist")
    model, variables = vit.load_pretrained_vit()
    images, labels = pretrain_vit.load_fashion_mnist("test")
    accuracy = pretrain_vit.evaluate(model, variables["params"], images, labels)
    recorded = json.loads((vit.cache_dir() / "metrics.json").read_text())["test_accuracy"]
    assert accuracy > 0.85 and abs(accuracy - recorded) < 1e-3
