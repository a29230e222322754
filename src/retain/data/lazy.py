"""The on-disk path for datasets that do not fit in memory.

:func:`cached_images` decodes an image folder (TinyImageNet, Imagenette, Omniglot) once into a
uint8 ``.npy`` array beside the files (``<dataset folder>/.retain-cache/``, or
``~/.cache/retain/arrays`` when that folder is read-only) and returns it memory-mapped: the
next run opens it in milliseconds and the operating system pages in only what is read. A small
JSON sidecar records the files it was made from (count, total bytes, newest mtime, a hash of the
names); a cache that no longer matches is rebuilt. The array is written to a temporary file and
renamed, so a killed decode never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from retain.data.benchmark import DataError

CACHE_DIR = ".retain-cache"
FALLBACK_CACHE = "~/.cache/retain/arrays"


def _signature(paths: list[Path], size: int, mode: str, fit: str) -> dict:
    h = hashlib.sha256()
    total, newest = 0, 0
    for p in paths:
        st = p.stat()
        total += st.st_size
        newest = max(newest, st.st_mtime_ns)
        h.update(str(p).encode())
        h.update(b"\0")
    return {
        "files": len(paths),
        "bytes": total,
        "newest_mtime_ns": newest,
        "names_sha256": h.hexdigest(),
        "size": size,
        "mode": mode,
        "fit": fit,
    }


def _cache_dir(folder: Path) -> Path:
    preferred = folder / CACHE_DIR
    try:
        preferred.mkdir(exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    fallback = Path(FALLBACK_CACHE).expanduser() / digest
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def decode_image(path: Path, size: int, mode: str = "RGB", fit: str = "resize") -> np.ndarray:
    """One image as uint8 ``(C, size, size)``: ``fit="resize"`` scales it to ``size x size``
    (bicubic), ``"center"`` scales its short side to ``size`` and cuts the centre square.

    Raises:
        DataError: the file is not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            if fit == "center" and (w, h) != (size, size):
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                im = im.resize((nw, nh), Image.BICUBIC)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            elif (w, h) != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            a = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        first = (str(e) or type(e).__name__).splitlines()[0]
        raise DataError(f"{path}: not a readable image ({first})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def cached_images(
    folder: Path, key: str, paths: list[Path], size: int, mode: str = "RGB", fit: str = "resize"
) -> np.ndarray:
    """The images at ``paths`` as one read-only memory-mapped uint8 array ``(N, C, size,
    size)``, decoded on the first call (see :func:`decode_image`) and reused while the files are
    unchanged.

    Raises:
        DataError: an unreadable image (the cache is not written).
    """
    cache = _cache_dir(folder)
    array_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    signature = _signature(paths, size, mode, fit)
    if array_path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()) == signature:
                return np.load(array_path, mmap_mode="r")
        except (ValueError, OSError):
            pass  # a broken cache is rebuilt
    channels = 1 if mode == "L" else 3
    tmp = array_path.with_name(array_path.name + ".tmp.npy")
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.uint8, shape=(len(paths), channels, size, size)
    )
    try:
        for i, p in enumerate(paths):
            out[i] = decode_image(p, size, mode, fit)
        out.flush()
    except BaseException:
        del out
        tmp.unlink(missing_ok=True)
        raise
    del out
    os.replace(tmp, array_path)
    meta_path.write_text(json.dumps(signature))
    return np.load(array_path, mmap_mode="r")
