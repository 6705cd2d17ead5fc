"""Bad data, each refused in one line before anything is cached or written.

Kinds: tarballs truncated anywhere (at every member boundary, inside the end-of-archive blocks, at
random bytes of the compressed stream, in the gzip trailer) or corrupt (CRC, length), for .tar, .tar.gz,
.tar.bz2 and .tar.xz; image folders with an empty class, train/test classes that differ, unreadable,
duplicate, oversized or differently sized images; decompression bombs in several formats (Pillow's own
limit, ``Image.MAX_IMAGE_PIXELS``); copies of a known dataset with the wrong image count; IDX files
(Fashion-MNIST) that are corrupt, truncated, too long, gzip bombs or declare a huge shape.

Every case runs the CLI in-process (``filterprune eval`` or ``train``, which load the data first) in a
sandbox and checks the exit status, the single stderr line, and that the sandbox (sources, decode cache,
working directory) is unchanged (``bad_input_helpers``). The positive controls load the same sources
intact and do write the cache, so the "nothing cached" assertions can fail.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from bad_input_helpers import Sandbox
from PIL import Image

from filterprune.data import CIFAR10_CLASSES, idx, image_folder, load
from filterprune.errors import DataError
from shared_paths import CIFAR10_DIR

EVAL = ["--model", "convnet_small", "--device", "cpu"]


def png_bytes(side: int = 8, seed: int = 0, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def write_tree(root: Path, classes=("a", "b"), train=3, test=1, side=8) -> Path:
    for split, n in (("train", train), ("test", test)):
        for ci, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / cls / f"{i:02d}.png").write_bytes(png_bytes(side, seed=100 * ci + i))
    return root


def tar_bytes(tree: Path, split: str = "") -> bytes:
    """An uncompressed tar of ``tree`` (or only its ``split`` folder; folders included, sorted), as
    ``tar cf`` would write it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for p in sorted(tree.rglob("*")):
            if p.relative_to(tree).parts[0].startswith(split):
                tf.add(p, arcname=str(p.relative_to(tree)), recursive=False)
    return buf.getvalue()


def boundaries(raw: bytes) -> tuple[list[int], int]:
    """Offsets of every member header after the first, then the end-of-archive offset."""
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        offsets = [m.offset for m in tf.getmembers()]
        return offsets[1:], tf.offset


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "": lambda b: b}


def suffix(kind: str) -> str:
    return f".tar.{kind}" if kind else ".tar"


@pytest.fixture
def box(tmp_path, monkeypatch) -> Sandbox:
    return Sandbox(tmp_path, monkeypatch)


@pytest.fixture
def tree(tmp_path) -> Path:
    return write_tree(tmp_path / "src")


@pytest.fixture
def raw_tar(tree) -> bytes:
    return tar_bytes(tree)


# ---- positive controls: the intact sources load and are cached ------------------------------------------

@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", ""])
def test_intact_tarball_loads_and_is_cached_once(box, raw_tar, kind, capsys):
    archive = box.root / f"shapes_train{suffix(kind)}"
    archive.write_bytes(COMPRESS[kind](raw_tar))
    box.accepts(["eval", *EVAL, "--data", str(archive)], capsys)
    assert len(box.cache_files()) == 1
    box.accepts(["eval", *EVAL, "--data", str(archive)], capsys)  # from the cache
    assert len(box.cache_files()) == 1


def test_intact_folder_loads(box, tree, capsys):
    box.accepts(["eval", *EVAL, "--data", str(tree)], capsys)
    assert len(box.cache_files()) == 1


# ---- truncated or corrupt archives -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["gz", ""])
@pytest.mark.parametrize("which", range(14))
def test_tarball_cut_at_a_member_boundary(box, raw_tar, kind, which, capsys):
    """The tar stream ends cleanly between members (for .gz: a valid gzip of the shortened tar)."""
    heads, end = boundaries(raw_tar)
    cuts = [*heads, end]
    assert len(cuts) == 14  # 6 folders + 8 images = 14 members: 13 heads after the first, then the end
    archive = box.root / f"shapes_train{suffix(kind)}"
    archive.write_bytes(COMPRESS[kind](raw_tar[:cuts[which]]))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "truncated", "again")


@pytest.mark.parametrize("extra", [0, 512, 1000])
def test_tarball_cut_inside_the_end_of_archive_blocks(box, raw_tar, extra, capsys):
    _, end = boundaries(raw_tar)
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gzip.compress(raw_tar[:end + extra]))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "truncated")


@pytest.mark.parametrize("command", ["train", "prune"])
def test_run_commands_leave_no_run_folder(box, raw_tar, command, capsys):
    """train and prune claim --out before loading the data; refused data must not leave it behind."""
    import torch

    import filterprune as fp

    weights = fp.save(fp.create_model("convnet_small", in_chans=3), box.root / "small.safetensors",
                      example_inputs=torch.randn(1, 3, 8, 8))
    heads, _ = boundaries(raw_tar)
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gzip.compress(raw_tar[:heads[-1]]))
    argv = {"train": ["train", "--epochs", "1", "--device", "cpu"],
            "prune": ["prune", "--weights", str(weights), "--target-macs", "0.5", "--finetune-device", "cpu"]}[command]
    box.refuses([*argv, "--data", str(archive), "--out", "run"], capsys, str(archive), "truncated")


@pytest.mark.parametrize("seed", range(6))
def test_gzip_cut_at_a_random_byte(box, raw_tar, seed, capsys):
    gz = gzip.compress(raw_tar)
    cut = random.Random(seed).randrange(20, len(gz))
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gz[:cut])
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "truncated")


@pytest.mark.parametrize("lost", [1, 4, 7, 8])
def test_gzip_trailer_cut(box, raw_tar, lost, capsys):
    """The tar is complete; only the gzip trailer (CRC-32, length) is missing some bytes."""
    gz = gzip.compress(raw_tar)
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gz[:-lost])
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "truncated")


@pytest.mark.parametrize("at,word", [(-8, "CRC"), (-1, "length")])
def test_gzip_trailer_corrupt(box, raw_tar, at, word, capsys):
    gz = bytearray(gzip.compress(raw_tar))
    gz[at] ^= 0xFF
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(bytes(gz))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "corrupt", word)


@pytest.mark.parametrize("kind", ["bz2", "xz"])
def test_other_compressions_cut(box, raw_tar, kind, capsys):
    data = COMPRESS[kind](raw_tar)
    archive = box.root / f"shapes_train{suffix(kind)}"
    archive.write_bytes(data[:len(data) * 2 // 3])
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "truncated")


def test_gzip_bomb_after_the_archive(box, raw_tar, capsys):
    """A valid archive followed by a second gzip member inflating to 64 MiB: refused after 1 MiB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(z.compress(bytes(1 << 20)) for _ in range(64)) + z.flush()
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gzip.compress(raw_tar) + bomb)
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "after the end of the tar archive")


def test_garbage_inside_the_archive(box, raw_tar, capsys):
    heads, _ = boundaries(raw_tar)
    bad = bytearray(raw_tar)
    bad[heads[3]:heads[3] + 512] = b"\x7f" * 512  # a member header overwritten: tarfile would stop there
    archive = box.root / "shapes_train.tar"
    archive.write_bytes(bytes(bad))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "damaged")


def test_test_sibling_tarball_cut(box, tree, capsys):
    """The training tarball is intact; its test sibling lost its last member."""
    (box.root / "shapes_train.tar.gz").write_bytes(gzip.compress(tar_bytes(tree, "train")))
    test_raw = tar_bytes(tree, "test")
    heads, _ = boundaries(test_raw)
    sibling = box.root / "shapes_test.tar.gz"
    sibling.write_bytes(gzip.compress(test_raw[:heads[-1]]))
    box.refuses(["eval", *EVAL, "--data", str(box.root / "shapes_train.tar.gz")], capsys, str(sibling), "truncated")


def test_official_cifar_archive_cut_at_a_member_boundary(box, tmp_path, capsys):
    """The official python format read from its .tar.gz: a batch boundary cut is refused too."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = 600
            tf.addfile(info, io.BytesIO(bytes(600)))
    heads, _ = boundaries(buf.getvalue())
    archive = box.root / "cifar-10-python.tar.gz"
    archive.write_bytes(gzip.compress(buf.getvalue()[:heads[-1]]))  # the test batch lost
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "truncated")


def test_truncated_copy_of_a_cached_archive_is_not_read_from_the_cache(box, raw_tar):
    """Issue 10 item 5: the short copy must neither load nor be cached under the normal name."""
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gzip.compress(raw_tar))
    intact = load.load_data(str(archive))
    assert len(intact.train) + len(intact.val) == 6
    cached = box.cache_files()
    heads, _ = boundaries(raw_tar)
    archive.write_bytes(gzip.compress(raw_tar[:heads[-1]]))
    with pytest.raises(DataError, match="truncated"):
        load.load_data(str(archive))
    assert box.cache_files() == cached


# ---- image folders ------------------------------------------------------------------------------------------

def _empty_train_class(tree: Path) -> str:
    (tree / "train" / "c").mkdir()
    return "train/c"


def _empty_test_class(tree: Path) -> str:
    for p in (tree / "test" / "b").iterdir():
        p.unlink()
    return "test/b"


def _test_lacks_class(tree: Path) -> str:
    for p in (tree / "test" / "b").iterdir():
        p.unlink()
    (tree / "test" / "b").rmdir()
    return "only in train: ['b']"


def _test_extra_class(tree: Path) -> str:
    (tree / "test" / "z").mkdir()
    (tree / "test" / "z" / "00.png").write_bytes(png_bytes())
    return "only in test: ['z']"


def _unreadable_image(tree: Path) -> str:
    (tree / "train" / "a" / "01.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return "train/a/01.png"


def _other_size(tree: Path) -> str:
    (tree / "train" / "b" / "01.png").write_bytes(png_bytes(side=9))
    return "train/b/01.png"


FOLDER_DAMAGE = {
    "empty train class": (_empty_train_class, "hold no images"),
    "empty test class": (_empty_test_class, "hold no images"),
    "test lacks a class": (_test_lacks_class, "different classes"),
    "test has an extra class": (_test_extra_class, "different classes"),
    "unreadable image": (_unreadable_image, "not a readable image"),
    "image of another size": (_other_size, "resize the images"),
}


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
@pytest.mark.parametrize("damage", FOLDER_DAMAGE)
def test_damaged_image_folder(box, tree, damage, form, capsys):
    make, problem = FOLDER_DAMAGE[damage]
    detail = make(tree)
    data = tree
    if form == "tar.gz":
        data = box.root / "shapes_train.tar.gz"
        data.write_bytes(gzip.compress(tar_bytes(tree)))
    box.refuses(["eval", *EVAL, "--data", str(data)], capsys, str(data), problem, detail)


def test_duplicate_member_in_tarball(box, tree, capsys):
    raw = tar_bytes(tree)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        with tarfile.open(fileobj=io.BytesIO(raw)) as src:
            for m in src.getmembers():
                tf.addfile(m, src.extractfile(m) if m.isfile() else None)
        info = tarfile.TarInfo("train/a/00.png")
        data = png_bytes(seed=7)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gzip.compress(buf.getvalue()))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, "train/a/00.png", "appears twice")


def test_oversized_member_is_not_read(box, raw_tar, monkeypatch, capsys):
    monkeypatch.setattr(image_folder, "MAX_IMAGE_FILE_BYTES", 100)
    archive = box.root / "shapes_train.tar.gz"
    archive.write_bytes(gzip.compress(raw_tar))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), "over the limit")


# ---- decompression bombs --------------------------------------------------------------------------------------

def _png_claiming(w: int, h: int) -> bytes:
    data = bytearray(png_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _gif_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", w, h)  # logical screen descriptor
    return bytes(data)


def _bmp_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", w, h)  # BITMAPINFOHEADER width, height
    return bytes(data)


def _jpeg_claiming(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)  # SOF0: precision, height, width
    return bytes(data)


def _png_with_text_bomb() -> bytes:
    """A valid 8x8 PNG carrying a zTXt chunk that inflates to 100 MiB (Pillow's MAX_TEXT_CHUNK guards it)."""
    png = png_bytes()
    data = b"Comment\x00\x00" + zlib.compress(bytes(100 << 20), 9)
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data))
    return png[:33] + chunk + png[33:]  # after the IHDR chunk (8 + 25 bytes)


def test_png_text_chunk_bomb(box, tree, capsys):
    (tree / "train" / "b" / "text.png").write_bytes(_png_with_text_bomb())
    box.refuses(["eval", *EVAL, "--data", str(tree)], capsys, "text.png", "not a readable image", "too large")


BOMBS = {
    "png 20000x20000 (over 2x the limit)": ("png", lambda: _png_claiming(20000, 20000)),
    "png 10000x10000 (Pillow only warns)": ("png", lambda: _png_claiming(10000, 10000)),
    "gif 65535x65535": ("gif", lambda: _gif_claiming(65535, 65535)),
    "bmp 30000x30000": ("bmp", lambda: _bmp_claiming(30000, 30000)),
    "jpeg 60000x60000": ("jpg", lambda: _jpeg_claiming(60000, 60000)),
    "ppm 100000x100000": ("ppm", lambda: b"P6\n100000 100000\n255\n" + bytes(192)),
    "pgm 12000x12000 (Pillow only warns)": ("pgm", lambda: b"P5\n12000 12000\n255\n" + bytes(64)),
}


@pytest.mark.parametrize("form", ["folder", "tar.gz"])
@pytest.mark.parametrize("bomb", BOMBS)
def test_decompression_bomb(box, tree, bomb, form, capsys):
    ext, make = BOMBS[bomb]
    (tree / "train" / "a" / f"bomb.{ext}").write_bytes(make())
    data = tree
    if form == "tar.gz":
        data = box.root / "shapes_train.tar.gz"
        data.write_bytes(gzip.compress(tar_bytes(tree)))
    box.refuses(["eval", *EVAL, "--data", str(data)], capsys, f"bomb.{ext}", "decompression bomb",
                "MAX_IMAGE_PIXELS")


@pytest.mark.parametrize("limit", [20, 40, 64])
def test_the_limit_is_pillows_own(box, tree, limit, monkeypatch, capsys):
    """8x8 images (64 pixels) against a lowered Image.MAX_IMAGE_PIXELS: over 2x the limit (Pillow raises),
    over the limit (Pillow only warns: refused here too), at the limit (loads)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    if limit >= 64:
        box.accepts(["eval", *EVAL, "--data", str(tree)], capsys)
    else:
        box.refuses(["eval", *EVAL, "--data", str(tree)], capsys, "decompression bomb", "(64 pixels) exceeds limit")


# ---- known datasets: image counts ---------------------------------------------------------------------------

@pytest.fixture
def cifar_like(tmp_path, monkeypatch) -> Path:
    """A CIFAR-10 image folder with 2 train / 1 test image per class; counts expected to match it."""
    monkeypatch.setitem(load.EXPECTED_COUNTS, "cifar10", {"train": 20, "test": 10})
    return write_tree(tmp_path / "cifar", classes=CIFAR10_CLASSES, train=2, test=1, side=32)


def test_cifar_like_complete_copy_loads(box, cifar_like, capsys):
    box.accepts(["eval", *EVAL, "--data", str(cifar_like)], capsys)
    assert len(box.cache_files()) == 1
    assert load.load_data(str(cifar_like)).name == "cifar10"  # recognised, so its counts were checked


@pytest.mark.parametrize("change,needle", [
    (lambda r: (r / "train" / "cat" / "01.png").unlink(), "train split holds 19 images, CIFAR-10 has 20"),
    (lambda r: (r / "test" / "dog" / "01.png").write_bytes(png_bytes(32, 5)), "test split holds 11 images"),
])
def test_cifar_copy_with_the_wrong_count(box, cifar_like, change, needle, capsys):
    change(cifar_like)
    box.refuses(["eval", *EVAL, "--data", str(cifar_like)], capsys, str(cifar_like), needle, "fetch it again")


def test_cifar_wrong_count_in_a_tarball(box, cifar_like, capsys):
    (cifar_like / "train" / "frog" / "00.png").unlink()
    archive = box.root / "cifar_train.tar.gz"
    archive.write_bytes(gzip.compress(tar_bytes(cifar_like)))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, "19 images", "frog 1")


def test_cifar_wrong_count_in_the_test_sibling_names_it(box, cifar_like, capsys):
    (cifar_like / "test" / "ship" / "01.png").write_bytes(png_bytes(32, 9))  # an extra image
    (box.root / "cifar_train.tar.gz").write_bytes(gzip.compress(tar_bytes(cifar_like, "train")))
    sibling = box.root / "cifar_test.tar.gz"
    sibling.write_bytes(gzip.compress(tar_bytes(cifar_like, "test")))
    box.refuses(["eval", *EVAL, "--data", str(box.root / "cifar_train.tar.gz")], capsys, str(sibling),
                "test split holds 11 images", "ship 2")


# ---- IDX (Fashion-MNIST) ---------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    return b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture
def fashion(tmp_path, monkeypatch) -> Path:
    """The four IDX files, gzipped, 6 train / 3 test images of 28x28; counts expected to match."""
    monkeypatch.setitem(load.EXPECTED_COUNTS, "fashion-mnist", {"train": 6, "test": 3})
    folder = tmp_path / "fm"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for key, n in (("train", 6), ("t10k", 3)):
        (folder / f"{key}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(rng.integers(0, 256, (n, 28, 28)))))
        (folder / f"{key}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.arange(n) % 10)))
    return folder


def test_fashion_mnist_intact_loads(box, fashion, capsys):
    box.accepts(["eval", *EVAL, "--data", f"fashion-mnist:{fashion}"], capsys)


def _gz_bomb(n_zero_mib: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = idx_bytes(np.zeros((6, 28, 28), np.uint8))
    return z.compress(head) + b"".join(z.compress(bytes(1 << 20)) for _ in range(n_zero_mib)) + z.flush()


IDX_DAMAGE = {
    "bad magic": (lambda b: gzip.compress(b"\0\0\x0d\x03" + gzip.decompress(b)[4:]), "not a uint8 IDX file"),
    "gzip cut": (lambda b: b[: len(b) // 2], "truncated"),
    "gzip trailer cut": (lambda b: b[:-4], "truncated"),
    "gzip CRC flipped": (lambda b: b[:-8] + bytes([b[-8] ^ 1]) + b[-7:], "CRC"),
    "data shorter than the header": (lambda b: gzip.compress(gzip.decompress(b)[:-100]), "truncated"),
    "data longer than the header": (lambda b: gzip.compress(gzip.decompress(b) + b"x"), "more data than"),
    "header declares 100 GB": (lambda b: gzip.compress(b"\0\0\x08\x03" + struct.pack(">3i", 100000, 1000, 1000)),
                               "over the"),
    "gzip bomb (64 MiB of zeros)": (lambda b: _gz_bomb(64), "more data than"),
    "not gzipped, cut": (lambda b: gzip.decompress(b)[:1000], "truncated"),
}


@pytest.mark.parametrize("damage", IDX_DAMAGE)
def test_damaged_idx(box, fashion, damage, capsys):
    make, needle = IDX_DAMAGE[damage]
    target = fashion / "train-images-idx3-ubyte.gz"
    target.write_bytes(make(target.read_bytes()))
    box.refuses(["eval", *EVAL, "--data", f"fashion-mnist:{fashion}"], capsys, str(target), needle)


def test_fashion_mnist_wrong_count(box, fashion, monkeypatch, capsys):
    monkeypatch.setitem(load.EXPECTED_COUNTS, "fashion-mnist", {"train": 60000, "test": 10000})
    box.refuses(["eval", *EVAL, "--data", f"fashion-mnist:{fashion}"], capsys, "holds 6 images",
                "Fashion-MNIST has 60,000")


def test_idx_gzip_bomb_is_never_inflated(tmp_path):
    """Peak Python memory while refusing a 48 MiB bomb stays near the 6x28x28 the header declares."""
    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    bomb.write_bytes(_gz_bomb(48))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="more data than"):
            idx.read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


# ---- the real CIFAR-10 JPEG copy (slow: each case decodes 50,000 JPEGs) ---------------------------------------

REAL_TRAIN = CIFAR10_DIR / "cifar10_jpeg_q75_train.tar.gz"


@pytest.fixture(scope="module")
def real_train_raw() -> bytes:
    return gzip.decompress(REAL_TRAIN.read_bytes())  # about 80 MB of tar


@pytest.mark.slow
@pytest.mark.skipif(not REAL_TRAIN.is_file(), reason="shared/data/cifar10 JPEG copy not present")
@pytest.mark.parametrize("damage", ["cut at the last member boundary", "one image fewer, properly ended"])
def test_real_cifar_train_tarball(box, real_train_raw, damage, capsys):
    """Issue 10 item 5 on the real data: both copies used to load with 49,999 images (and be cached)."""
    heads, end = boundaries(real_train_raw)
    if damage.startswith("cut"):
        raw, needle = real_train_raw[:heads[-1]], "truncated"
    else:  # drop the last member (the tarball is otherwise whole): only the count can tell
        raw, needle = real_train_raw[:heads[-1]] + bytes(1024), "train split holds 49,999 images, CIFAR-10 has 50,000"
    archive = box.root / "cifar10_jpeg_q75_train.tar.gz"
    archive.write_bytes(gzip.compress(raw, 1))
    box.refuses(["eval", *EVAL, "--data", str(archive)], capsys, str(archive), needle)


# ---- the streaming reader (big unpacked folders) refuses the same things ------------------------------------

@pytest.mark.parametrize("damage", ["empty train class", "empty test class", "test lacks a class",
                                    "test has an extra class"])
def test_streamed_folder_refuses_like_the_in_memory_reader(box, tree, damage):
    make, problem = FOLDER_DAMAGE[damage]
    detail = make(tree)
    with pytest.raises(DataError) as e:
        load.load_data(str(tree), stream=True)
    line = str(e.value)
    assert "\n" not in line and problem in line and detail in line and str(tree) in line
    assert box.cache_files() == []


@pytest.mark.parametrize("side", [10, 12])  # 100 pixels: over the limit (Pillow warns); 144: over 2x (raises)
def test_streamed_image_over_pillows_limit(box, tree, side, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 70)
    (tree / "train" / "a" / "00.png").write_bytes(png_bytes(side))
    splits = load.load_data(str(tree), stream=True, val_fraction=0.5)
    ds = splits.train if "00.png" in " ".join(splits.train.files) else splits.val
    index = next(i for i, f in enumerate(ds.files) if f.endswith("a/00.png"))
    with pytest.raises(DataError, match="decompression bomb"):
        ds[(index, 0)]
