"""The shard formats of a batch job (jobs.py): writing, reading and checksumming one shard.

Shard k of a job is named shard_{k:05d} plus the format's suffix. Every format holds, per image,
its class index (``label``), its seed, and the pixels; equal images give equal bytes (no
timestamps, owners or library-chosen orders in the files), so a job is byte-identical however
and wherever its shards were made:

    npz         shard_00000.npz: images uint8 [n, H, W, C], labels int64 [n], seeds uint64 [n];
                an uncompressed zip that np.load reads, every entry stamped 1980-01-01
    png         shard_00000/: {label}_{seed}.png per image and labels.csv (file,label,seed)
    parquet     shard_00000.parquet: one row per image, columns label int64, class_name string,
                seed uint64, steer string (the job's steering as JSON, "{}" for none),
                truncation float64 (null for none), png binary (the image as a PNG file); one
                row group, no compression (PNG is compressed already), no statistics
    webdataset  shard_00000.tar: per image, in job order, {key}.cls (the label as text),
                {key}.json (label, class_name, seed, steer, truncation) and {key}.png with
                key = {label}_{seed}; ustar entries with mtime 0, owner 0:0, mode 0644

A shard's digest is the sha256 of its file; of a png folder, the sha256 of its sorted
"name NUL sha256-of-file" lines (labels.csv included). Every shard is written atomically: a
temporary name beside it, fsync'd, renamed into place, the directory fsync'd.

The PNG bytes are Pillow's (compress level 6) and the parquet file pyarrow's: a resumed job
gives bytes equal to an uninterrupted one when both run with the same Pillow and pyarrow
(``encoders``; Ray actors refuse to write with other versions than their driver's).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ctrlgan._fs import TMP_PREFIX, fsync_path, make_readable, naming, write_atomic
from ctrlgan.errors import InvalidRequest

FORMATS = ("npz", "png", "parquet", "webdataset")
SUFFIXES = {"npz": ".npz", "png": "", "parquet": ".parquet", "webdataset": ".tar"}
LABELS_CSV = "labels.csv"
PARQUET_COLUMNS = ("label", "class_name", "seed", "steer", "truncation", "png")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp, for every entry
PNG_MIN_BYTES = 67  # the smallest possible PNG file: a lower bound per image
NPZ_SHARD_OVERHEAD = 4096  # zip and .npy headers of one shard, rounded up
TAR_IMAGE_MIN_BYTES = 6 * 512  # three entries of a header and at least one data block each
TAR_SHARD_OVERHEAD = 10240  # the end-of-archive blocks, padded to a tar record


def require_writer(fmt: str) -> None:
    """Refuse a format whose writer is not installed here (parquet needs pyarrow, which
    ctrlgan does not depend on), before a job creates anything."""
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise InvalidRequest(
                "format", "parquet needs pyarrow, which is not installed here: pip install pyarrow"
            ) from None


def encoders(fmt: str) -> dict[str, str]:
    """The libraries besides numpy whose output a shard of ``fmt`` holds, with their versions
    here (Pillow and its zlib for the PNGs, pyarrow for parquet): equal versions write equal
    bytes; a process with other versions would write other ones."""
    if fmt == "npz":
        return {}
    import PIL
    from PIL import features

    found = {"Pillow": PIL.__version__, "zlib": features.version("zlib") or "?"}
    if fmt == "parquet":
        import pyarrow

        found["pyarrow"] = pyarrow.__version__
    return found


def shard_name(k: int, fmt: str) -> str:
    return f"shard_{k:05d}{SUFFIXES[fmt]}"


def min_bytes(fmt: str, images: int, shards: int, image_shape) -> int:
    """The least disk space ``images`` images in ``shards`` shards take: exact for npz, a lower
    bound for the formats that compress."""
    h, w, c = image_shape
    if fmt == "npz":
        return images * (h * w * c + 16) + shards * NPZ_SHARD_OVERHEAD
    if fmt == "webdataset":
        return images * TAR_IMAGE_MIN_BYTES + shards * TAR_SHARD_OVERHEAD
    return images * PNG_MIN_BYTES


# Writing ------------------------------------------------------------------------------------


def write_shard(out: Path, name: str, fmt: str, images, labels, seeds, meta: dict) -> str:
    """Write one shard atomically; its digest. ``meta`` holds the job's class_names, steer and
    truncation (parquet and webdataset repeat them per image). An OSError (a full disk) names
    the shard and leaves no temporary behind."""
    target = out / name
    if fmt == "png":
        return _write_png_folder(out, target, images, labels, seeds)
    if fmt == "npz":
        data = npz_bytes({"images": images, "labels": labels, "seeds": seeds})
    elif fmt == "parquet":
        data = _parquet_bytes(images, labels, seeds, meta)
    else:
        data = _tar_bytes(images, labels, seeds, meta)
    write_atomic(target, data)
    return _sha256(data)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What np.savez writes, less the varying timestamps: an uncompressed zip of .npy files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 HWC image as a PNG file (grey for one channel)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def _records(labels, seeds, meta: dict):
    """Per image: label, class name, seed (Python ints and str)."""
    names = meta["class_names"]
    for label, seed in zip(labels.tolist(), seeds.tolist(), strict=True):
        yield label, names[label], seed


def _parquet_bytes(images, labels, seeds, meta: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    steer = json.dumps(meta["steer"], sort_keys=True)
    n = len(labels)
    table = pa.table(
        {
            "label": pa.array(labels, pa.int64()),
            "class_name": pa.array([meta["class_names"][c] for c in labels.tolist()], pa.string()),
            "seed": pa.array(seeds, pa.uint64()),
            "steer": pa.array([steer] * n, pa.string()),
            "truncation": pa.array([meta["truncation"]] * n, pa.float64()),
            "png": pa.array([png_bytes(im) for im in images], pa.binary()),
        }
    )
    buf = io.BytesIO()
    # Every setting that shapes the bytes is fixed here, not left to pyarrow's defaults.
    pq.write_table(
        table,
        buf,
        row_group_size=max(n, 1),
        version="2.6",
        compression="none",
        use_dictionary=False,
        write_statistics=False,
        data_page_version="1.0",
        store_schema=True,
    )
    return buf.getvalue()


def _tar_bytes(images, labels, seeds, meta: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        records = _records(labels, seeds, meta)
        for image, (label, class_name, seed) in zip(images, records, strict=True):
            key = f"{label}_{seed}"
            info = {"label": label, "class_name": class_name, "seed": seed,
                    "steer": meta["steer"], "truncation": meta["truncation"]}  # fmt: skip
            for ext, data in (
                ("cls", str(label).encode()),
                ("json", json.dumps(info, sort_keys=True).encode()),
                ("png", png_bytes(image)),
            ):
                entry = tarfile.TarInfo(f"{key}.{ext}")
                entry.size, entry.mtime, entry.mode = len(data), 0, 0o644
                entry.uid = entry.gid = 0
                entry.uname = entry.gname = ""
                tar.addfile(entry, io.BytesIO(data))
    return buf.getvalue()


def _write_png_folder(out: Path, target: Path, images, labels, seeds) -> str:
    with naming(target):
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
        try:
            entries = []
            rows = ["file,label,seed"]
            for image, label, seed in zip(images, labels.tolist(), seeds.tolist(), strict=True):
                file = f"{label}_{seed}.png"
                data = png_bytes(image)
                (tmp / file).write_bytes(data)
                entries.append((file, _sha256(data)))
                rows.append(f"{file},{label},{seed}")
            data = ("\n".join(rows) + "\n").encode()
            (tmp / LABELS_CSV).write_bytes(data)
            entries.append((LABELS_CSV, _sha256(data)))
            make_readable(tmp)
            for file, _ in entries:  # all written first: far faster than one fsync per write
                fsync_path(tmp / file)
            fsync_path(tmp)
            if target.is_dir() and not target.is_symlink():  # an unlisted or altered earlier try
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(out)
    return _dir_digest(entries)


# Checksums ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dir_digest(entries: list[tuple[str, str]]) -> str:
    """A png shard's digest: sha256 of its sorted 'name NUL sha256' lines."""
    return _sha256("".join(f"{n}\0{d}\n" for n, d in sorted(entries)).encode())


def shard_digest(path: Path, fmt: str) -> str | None:
    """The digest of a shard on disk, or None when it is missing or unreadable."""
    try:
        if fmt != "png":
            return _sha256(path.read_bytes()) if path.is_file() else None
        if not path.is_dir():
            return None
        return _dir_digest([(p.name, _sha256(p.read_bytes())) for p in path.iterdir()])
    except OSError:
        return None


# Reading ------------------------------------------------------------------------------------


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A shard's images (uint8 NHWC), labels (int64) and seeds (uint64), from any format."""
    path = Path(path)
    if path.is_dir():
        lines = (path / LABELS_CSV).read_text().splitlines()[1:]
        entries = [line.split(",") for line in lines]
        return _arrays(
            [(path / file).read_bytes() for file, _, _ in entries],
            [int(e[1]) for e in entries],
            [int(e[2]) for e in entries],
        )
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["label", "seed", "png"]).to_pydict()
        return _arrays(t["png"], t["label"], t["seed"])
    if path.suffix == ".tar":
        pngs, labels, seeds = [], [], []
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    info = json.loads(tar.extractfile(member).read())
                    labels.append(info["label"])
                    seeds.append(info["seed"])
                elif member.name.endswith(".png"):
                    pngs.append(tar.extractfile(member).read())
        return _arrays(pngs, labels, seeds)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in ("images", "labels", "seeds")}


def decode_png(data: bytes) -> np.ndarray:
    """A PNG file's pixels as uint8 HWC (grey images get one channel)."""
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(data)))
    return im[:, :, None] if im.ndim == 2 else im


def _arrays(pngs, labels, seeds) -> dict[str, np.ndarray]:
    return {
        "images": np.stack([decode_png(p) for p in pngs]),
        "labels": np.array(labels, np.int64),
        "seeds": np.array(seeds, np.uint64),
    }
