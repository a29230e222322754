"""The paper-scale sources and benchmarks on tiny fake copies in the real file formats."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from retain.data import DataError, get_benchmark, split
from retain.data import download as dl
from retain.data.fakes import fake_coarse, write_fake_datasets
from retain.data.lazy_images import LazyImages
from retain.data.sources import clear_cache
from retain.data.vision_sources import (
    load_cifar100,
    load_mnist,
    load_omniglot,
    load_svhn,
    load_tinyimagenet,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fake_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def _env(root, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(root))
    monkeypatch.setenv("RETAIN_FASHION_MNIST", str(root / "fashion-mnist"))
    monkeypatch.setattr(dl, "_torchvision_download", lambda name, root: False)


def test_cifar100_fine_and_coarse_labels_and_superclass_tasks(root):
    c = load_cifar100(root)
    assert c.data.x_train.shape == (300, 3, 32, 32) and c.data.x_train.dtype == torch.uint8
    assert torch.equal(c.coarse_train, torch.from_numpy(fake_coarse(c.data.y_train.numpy())))
    bench = get_benchmark("cifar100-superclass")
    assert bench.n_tasks == 20 and bench.classes_per_task == [5] * 20
    for k, task in enumerate(bench):
        assert task.classes == sorted(f for f in range(100) if (7 * f) % 20 == k)
        assert len(task.x_train) == 15 and len(task.x_test) == 10
    # 5 / 10 / 20 task splits of the fine classes
    for n in (5, 10, 20):
        assert get_benchmark("split-cifar100", n_tasks=n).classes_per_task == [100 // n] * n


def test_mnist_svhn_tinyimagenet_labels(root):
    m = load_mnist()
    assert m.x_train.shape == (60, 1, 28, 28) and m.y_train.bincount().tolist() == [6] * 10
    s = load_svhn()
    assert s.x_train.shape == (40, 3, 32, 32) and sorted(s.y_train.unique().tolist()) == list(
        range(10)
    )  # the .mat label 10 is digit 0
    t = load_tinyimagenet()
    assert t.x_train.shape == (400, 3, 64, 64) and t.y_test.bincount().tolist() == [1] * 200
    assert load_tinyimagenet(size=32).x_train.shape == (400, 3, 32, 32)


def test_svhn_keeps_pixels_in_image_order(root):
    from scipy.io import loadmat

    mat = loadmat(root / "svhn" / "train_32x32.mat")
    s = load_svhn()
    assert torch.equal(s.x_train[3].permute(1, 2, 0), torch.from_numpy(mat["X"][..., 3]))


def test_omniglot_rotation_adds_exact_rotations(root):
    data, names = load_omniglot(test_per_class=2)
    assert len(names) == 24 and data.x_train.shape[1:] == (1, 32, 32)
    bench = get_benchmark("omniglot-rotation", n_tasks=2, n_classes=24, test_per_class=2)
    t0 = bench[0]
    n = len(t0.x_train) // 4
    assert torch.equal(t0.x_train[n : 2 * n], torch.rot90(t0.x_train[:n], 1, dims=(-2, -1)))
    assert bench.classes_per_task == [12, 12]


def test_five_datasets_pads_gray_and_normalizes_per_task():
    bench = get_benchmark("five-datasets", normalize=True)
    assert bench.input_shape == (3, 32, 32) and bench.n_tasks == 5
    mnist = bench[1].x_train
    assert torch.equal(mnist[:, 0], mnist[:, 2])  # gray repeated to 3 channels
    assert torch.allclose(mnist[:, :, :2, :], mnist[:, :, :1, :1].expand(-1, -1, 2, 32))


def test_lazy_split_matches_in_memory_split():
    lazy = get_benchmark("split-tinyimagenet", n_tasks=40, lazy=True, normalize=True)
    eager = get_benchmark("split-tinyimagenet", n_tasks=40, normalize=True)
    t_l, t_e = lazy[2], eager[2]
    assert isinstance(t_l.x_train, LazyImages) and t_l.x_train.shape == t_e.x_train.shape
    idx = torch.tensor([4, 0, 3, 9])
    assert torch.allclose(t_l.x_train[idx], t_e.x_train[idx], atol=1e-6)
    assert torch.allclose(t_l.x_test[1:4], t_e.x_test[1:4], atol=1e-6)
    assert torch.equal(t_l.y_train, t_e.y_train)
    assert torch.allclose(t_l.x_train.sum(), t_e.x_train.sum(), atol=1e-3)  # any other op


def test_image_cache_is_reused_and_rebuilt_when_files_change(root):
    cache = root / "tiny-imagenet-200" / ".retain-cache" / "tinyimagenet-train-48.npy"
    load_tinyimagenet(size=48)
    first = cache.stat().st_mtime_ns
    load_tinyimagenet(size=48)
    assert cache.stat().st_mtime_ns == first
    img = next((root / "tiny-imagenet-200" / "train").rglob("*.JPEG"))
    img.write_bytes(img.read_bytes())  # same bytes, newer mtime
    load_tinyimagenet(size=48)
    assert cache.stat().st_mtime_ns != first


def test_truncated_files_give_one_line_errors(tmp_path, monkeypatch):
    bad = write_fake_datasets(tmp_path / "bad")
    monkeypatch.setenv("RETAIN_DATA", str(bad))
    clear_cache()
    p = bad / "cifar-100-python" / "train"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match=r"train: not a readable CIFAR pickle") as e:
        load_cifar100()
    assert "\n" not in str(e.value)
    p = bad / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist()
    p = bad / "svhn" / "test_32x32.mat"
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match=r"test_32x32.mat: not a readable SVHN .mat file"):
        load_svhn()
    p = next((bad / "tiny-imagenet-200" / "val" / "images").iterdir())
    p.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=rf"{p.name}: not a readable image"):
        load_tinyimagenet(size=40)


def test_missing_data_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError) as e:
        get_benchmark("split-cifar100")
    msg = str(e.value)
    assert str(tmp_path / "empty" / "cifar-100-python") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg and "download=true" in msg
    with pytest.raises(DataError, match=r"TinyImageNet not found.*tiny-imagenet-200\.zip"):
        get_benchmark("split-tinyimagenet")


def test_download_failure_names_url_and_folder(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # nothing listens on the discard port
    src = dl.SOURCES["cifar10"]
    monkeypatch.setitem(dl.SOURCES, "cifar10", dl.Source(src.title, src.folder, (url,), src.hint))
    with pytest.raises(DataError, match=rf"download of {url} failed.*cifar-10-batches-py"):
        get_benchmark("split-cifar10", root=tmp_path / "dl", download=True)
    assert not list((tmp_path / "dl").glob("*.part"))


def test_download_fetches_and_unpacks_the_archive(root, tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    src = dl.SOURCES["cifar10"]
    new = dl.Source(src.title, src.folder, (archive.as_uri(),), src.hint)
    monkeypatch.setitem(dl.SOURCES, "cifar10", new)
    bench = get_benchmark("split-cifar10", root=tmp_path / "fresh", download=True)
    assert bench.n_tasks == 5 and (tmp_path / "fresh" / "cifar-10-batches-py").is_dir()


def test_shuffled_split_is_the_scenario_split():
    bench = get_benchmark("split-cifar10", shuffle_classes=True, seed=3)
    from retain.data.vision_sources import load_cifar10

    ref = split(load_cifar10(), 5, shuffle_classes=True, seed=3)
    assert [t.classes for t in bench] == [t.classes for t in ref]
    assert np.allclose(bench[0].x_train.numpy(), ref[0].x_train.numpy())


def test_clear_cache_also_forgets_the_paper_scale_loaders(root, tmp_path, monkeypatch):
    import os
    import shutil

    from retain.data import vision_sources as vs

    copy = tmp_path / "data"
    shutil.copytree(root / "MNIST", copy / "MNIST")
    monkeypatch.setenv("RETAIN_DATA", str(copy))
    clear_cache()
    load_mnist(), load_cifar100(root), load_svhn(root)
    caches = (vs._mnist_cached, vs._cifar100_cached, vs._svhn_cached)
    assert all(c.cache_info().currsize >= 1 for c in caches)
    # rewrite the last training pixel with the same size and mtime: the cache key is unchanged,
    # so only clearing the cache shows the new contents
    images = copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    stat = images.stat()
    raw = bytearray(images.read_bytes())
    before = load_mnist().x_train[-1, 0, -1, -1].item()
    raw[-1] = (before + 1) % 256
    images.write_bytes(bytes(raw))
    os.utime(images, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_mnist().x_train[-1, 0, -1, -1].item() == before  # stale, from the cache
    clear_cache()
    assert all(c.cache_info().currsize == 0 for c in caches)
    assert load_mnist().x_train[-1, 0, -1, -1].item() == (before + 1) % 256
