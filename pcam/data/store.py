"""The tile store: tiles decoded once into sharded TFRecords, plus a manifest.

Decoding 220,025 TIFFs every epoch would starve any accelerator (tifffile
decodes ~2-5k tiles/s per core; inside ``tf.py_function`` a tf.data
pipeline gets ~1.2k/s). So tiles are decoded once, in parallel, into::

    STORE/<split>/shard-<fingerprint>-00000-of-00027.tfrecord   raw uint8 tiles + id + label + index
    STORE/<split>/index.csv        id,label in store order (folds are made from it)
    STORE/<split>/bad_tiles.csv    tiles left out with --skip-bad, and why
    STORE/<split>/manifest.json    written last: its presence means "complete"

Shards are written under temporary names and renamed, the manifest last, so
an interrupted ingest is never taken for complete; a re-run keeps the
finished shards (their names carry the source fingerprint) and does the
rest. A store whose source listing changed is rebuilt.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pcam import locks
from pcam.data import images
from pcam.data.competition import Split
from pcam.data.sources import Source, read_source
from pcam.errors import SHOW, PcamError
from pcam.io import atomic_write_json, atomic_write_text, remove_stale_temporaries
from pcam.settings import DataSettings

# 2: the dataset's facts (classes, tile size, label region) in the manifest.
FORMAT = 2
FEATURES = ("image", "id", "label", "index")


@dataclass(frozen=True)
class Store:
    """A finished tile store of one split."""

    path: Path
    manifest: dict

    @property
    def shards(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]

    @property
    def n_tiles(self) -> int:
        return self.manifest["n_tiles"]

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names; label i is ``classes[i]`` (two classes: ``classes[1]`` is positive)."""
        return tuple(self.manifest["classes"])

    @property
    def tile_size(self) -> int:
        return int(self.manifest["tile_shape"][0])

    @property
    def label_region(self) -> int:
        """Side of the centre square that decides a label (PCam: 32), 0: the whole tile."""
        return int(self.manifest.get("label_region", 0))

    @property
    def mpp(self) -> float:
        """Microns per pixel of the images the tiles were made from (0: unknown)."""
        return float(self.manifest.get("mpp", 0))

    @property
    def nbytes(self) -> int:
        """Size of the raw tiles, which is what a RAM cache of the store holds."""
        return self.n_tiles * int(np.prod(self.manifest["tile_shape"]))

    @property
    def shard_starts(self) -> np.ndarray:
        """Row of ``index()`` at which each shard file starts, then ``n_tiles``."""
        return np.cumsum([0] + [s["n_tiles"] for s in self.manifest["shards"]])

    def index(self) -> pd.DataFrame:
        """Table of ``id``, ``label`` in store order: row i is the i-th tile of
        the shard files read in turn (its position)."""
        return pd.read_csv(self.path / "index.csv", dtype={"id": str, "label": int})


def open_store(path: Path) -> Store:
    """Open a finished store; a missing or unfinished one is a PcamError."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise PcamError(f"{path}: no finished tile store here; build it with "
                        f"python scripts/prepare.py --data-dir DATA_DIR") from None
    if manifest.get("format") != FORMAT:
        raise PcamError(f"{path}: store format {manifest.get('format')} is not {FORMAT}; "
                        "run scripts/prepare.py again, which rebuilds it")
    # Its full path: a store opened under a relative default (stores/...) stays
    # readable if the process changes folder.
    return Store(Path(os.path.abspath(path)), manifest)


def fingerprint(split: Split, source: Source) -> str:
    """Hash of what the store is built from: ids (file names), labels and
    order, the classes and the tile size, and each file's size and
    modification time (``listing_stats``), so that an image repaired or
    replaced in place rebuilds the store (one stat per file: ~0.3 s for
    20,000 files here, ~3 s for the competition's 220,025)."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}|{split.name}|{source.tile_size}|{source.resize}|"
                  f"{'/'.join(source.classes)}".encode())
    digest.update("\n".join(split.ids).encode())
    digest.update(np.asarray(split.labels, np.int64).tobytes())
    digest.update(listing_stats(split.path(i) for i in split.ids))
    return digest.hexdigest()[:16]


def listing_stats(paths) -> bytes:
    """Size and modification time (ns) of each file, in the order given, as bytes
    for a fingerprint: one ``os.stat`` per file, and nothing read. A file that
    cannot be stat'ed counts as size and time -1.
    """
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((-1, -1))
    return np.asarray(stats, np.int64).reshape(-1, 2).tobytes()


def shard_problems(store: Store) -> list[str]:
    """Shard files of a finished store that are missing or not the size the
    manifest records."""
    problems = []
    for shard in store.manifest["shards"]:
        path = store.path / shard["file"]
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{shard['file']} missing")
            continue
        if "bytes" in shard and size != shard["bytes"]:
            problems.append(f"{shard['file']} has {size:,} bytes, {shard['bytes']:,} expected")
    return problems


def check_shards(store: Store) -> Store:
    """``store``, once its shard files are all there at their recorded sizes;
    else a PcamError saying to rebuild it."""
    problems = shard_problems(store)
    if problems:
        raise PcamError(f"the tile store {store.path} is damaged ({'; '.join(problems[:3])}"
                        f"{' ...' if len(problems) > 3 else ''}); run python scripts/prepare.py "
                        "again to rebuild what is wrong")
    return store


def _repaired(split: Split, out: Path) -> list[str]:
    """Ids of images listed in the store's bad_tiles.csv that now decode well."""
    bad = out / "bad_tiles.csv"
    if not bad.is_file() or not bad.stat().st_size:
        return []
    ids = pd.read_csv(bad, dtype=str)["id"]
    return [i for i in ids if split.path(i).is_file() and not images.decode_image(split.path(i))[1]]


def is_current(split: Split, source: Source, out: Path) -> bool:
    """True when a finished store at ``out`` was built from exactly these files."""
    return _current(split, source, out) is not None


def prepare(settings: DataSettings, *, splits=("train", "test"), quiet=False,
            source: Source | None = None) -> dict[str, Store]:
    """Scan the source (``pcam.data.sources``), then build (or reuse) one store per split.

    Args:
        source: the scanned source, when the caller has it already.

    Returns:
        ``{"train": Store, "test": Store}``: the splits asked for that the
        source has (class folders may have no test split).
    """
    source = source or read_source(settings)
    if not quiet:
        print(source.summary, flush=True)
    found = {"train": source.train, "test": source.test}
    for split in found.values():
        if split is not None:
            refuse_tile_folder(settings.store_path, split.tile_dir)
    return {name: build_store(found[name], source, settings.store_path / name, settings,
                              quiet=quiet)
            for name in splits if found[name] is not None}


def build_store(split: Split, source: Source, out: Path, settings: DataSettings,
                quiet=False) -> Store:
    """Ingest ``split`` into a store at ``out``, reusing or resuming what is there.

    One process at a time builds a store folder (``pcam.locks``): a second
    one would delete the first one's temporary shards. Finding it up to date
    needs no lock.
    """
    refuse_tile_folder(out, split.tile_dir)
    current = _current(split, source, out)  # without the lock: it only reads
    if current is not None:
        if not quiet:
            print(f"{split.name} store up to date: {out} ({current.n_tiles:,} tiles)", flush=True)
        return current
    with locks.exclusive(out, f"tile store {out}"):
        return _build_store(split, source, out, settings, quiet)


def _current(split: Split, source: Source, out: Path) -> Store | None:
    """The store at ``out`` when it is finished and up to date, else None."""
    manifest = Path(out) / "manifest.json"
    if not manifest.is_file():
        return None
    found = json.loads(manifest.read_text())
    if found.get("format") != FORMAT or found.get("fingerprint") != fingerprint(split, source):
        return None
    store = open_store(out)
    return store if _stale_parts(split, out, store, lambda *a: None) is None else None


def _stale_parts(split: Split, out: Path, store: Store, say) -> list[Path] | None:
    """What of a store with the right fingerprint must be rebuilt, said: None
    when nothing; else the files to delete (shards missing or of the wrong
    size; every shard when images once left out as bad now read well)."""
    repaired = _repaired(split, out)
    if repaired:
        say(f"{split.name}: {len(repaired)} image(s) left out as bad now read well "
            f"(e.g. {repaired[0]}); rebuilding {out}")
        return [p for s in store.manifest["shards"]
                for p in (out / s["file"], out / f"{s['file']}.bad.csv")]
    problems = shard_problems(store)
    if problems:
        say(f"{split.name}: {len(problems)} shard file(s) of {out} missing or damaged "
            f"({problems[0]}); rebuilding them")
        return [out / s["file"] for s in store.manifest["shards"]
                if any(p.startswith(s["file"]) for p in problems)]
    return None


def refuse_tile_folder(store: Path, tile_dir: Path) -> None:
    """Refuse a store folder that is, or contains, a folder of source images:
    the store would write its shards among the user's images and clean up there."""
    store, tiles = Path(store).resolve(), Path(tile_dir).resolve()
    if store == tiles or store in tiles.parents:
        raise PcamError(f"--store-dir {store} is or contains the image folder {tiles}; "
                        "choose a folder of its own for the tile store (default: one "
                        "under stores/ in the working folder)")


def _remove_leftovers(out: Path, fp: str) -> None:
    """Delete what a store folder holds that no build of fingerprint ``fp`` uses:
    pcam's temporary files of processes that are gone, and other fingerprints'
    shards and their lists of bad tiles. Nothing else: a hidden file that is
    not pcam's own temporary file is left alone."""
    remove_stale_temporaries(out)
    for stale in out.glob("shard-*.tfrecord*"):
        if fp not in stale.name and (stale.suffix == ".tfrecord" or stale.name.endswith(".bad.csv")):
            stale.unlink()


def _build_store(split: Split, source: Source, out: Path, settings: DataSettings,
                 quiet=False) -> Store:
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    fp = fingerprint(split, source)
    manifest = out / "manifest.json"
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found.get("format") == FORMAT and found.get("fingerprint") == fp:
            store = open_store(out)
            stale = _stale_parts(split, out, store, say)
            if stale is None:
                say(f"{split.name} store up to date: {out} ({store.n_tiles:,} tiles)")
                return store
            manifest.unlink()  # first, so that an interrupted rebuild is never taken for complete
            for path in stale:
                path.unlink(missing_ok=True)
        else:
            say(f"{split.name}: the source files changed since {out} was built; rebuilding it")
            manifest.unlink()  # first, so that an interrupted rebuild is never taken for complete
    out.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, fp)

    chunks = [split.ids[i:i + settings.shard_tiles]
              for i in range(0, len(split.ids), settings.shard_tiles)] or [()]
    names = [f"shard-{fp}-{i:05d}-of-{len(chunks):05d}.tfrecord" for i in range(len(chunks))]
    todo = [i for i, name in enumerate(names) if not (out / name).is_file()]
    if len(todo) < len(chunks):
        say(f"{split.name}: resuming, {len(chunks) - len(todo)} of {len(chunks)} shards already done")
    _check_space(out, sum(len(chunks[i]) for i in todo), source.tile_size, split.name)
    bad = _ingest(split, source, out, chunks, names, todo, settings)
    # Tiles of finished shards were checked when those shards were written; what
    # they left out is recorded in their sidecar lists.
    bad = _bad_tiles(out, names, bad)
    if bad and not settings.skip_bad:
        _write_bad(out / "bad_tiles.csv", bad)
        raise PcamError(
            f"{len(bad)} {split.name} tile(s) cannot be used: "
            + "; ".join(f"{split.path(p)} {why}" for p, why in bad[:SHOW])
            + (" ..." if len(bad) > SHOW else "")
            + f". Replace or remove them, or pass --skip-bad to leave them out "
            f"(full list: {out / 'bad_tiles.csv'})")
    return _finish(split, source, out, chunks, names, fp, bad, say)


def _check_space(out: Path, tiles: int, tile_size: int, split: str) -> None:
    """Refuse, before any work, a store that the disk cannot hold: raw uint8 tiles
    plus ~160 bytes of id, label and framing each (the competition's train
    store: 6.1 GB, in a Kaggle notebook's 20 GB /kaggle/working)."""
    need = tiles * (tile_size * tile_size * 3 + 160)
    free = shutil.disk_usage(out).free
    if need > free:
        raise PcamError(f"the {split} tile store needs about {_size(need)} in {out}, which "
                        f"has {_size(free)} free; free space there or choose --store-dir "
                        "on a larger disk")


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _ingest(split, source, out, chunks, names, todo, settings) -> dict[int, list]:
    """Decode and write the shards in ``todo`` in parallel, one shard per job."""
    import tensorflow as tf  # noqa: F401 -- loaded once here, before workers fork

    offsets = np.cumsum([0] + [len(c) for c in chunks])
    jobs = [_ShardJob(split.tile_dir, split.suffix, chunks[c],
                      split.labels[offsets[c]:offsets[c + 1]], int(offsets[c]), out, names[c],
                      settings.skip_bad, source.tile_size, source.resize) for c in todo]
    workers = min(settings.workers or os.cpu_count() or 1, len(jobs))
    bad: dict[int, list] = {}
    with _pool(workers) as pool, tqdm(total=sum(len(j.ids) for j in jobs), unit="tile",
                                      desc=f"ingest {split.name}", smoothing=0.1) as progress:
        done = pool.imap_unordered(_write_shard, jobs) if pool else map(_write_shard, jobs)
        for name, n, problems in done:
            if problems:
                bad[names.index(name)] = problems
            progress.update(n)
    return bad


@dataclass(frozen=True)
class _ShardJob:
    tile_dir: Path
    suffix: str
    ids: tuple[str, ...]
    labels: tuple[int, ...]
    first_index: int
    out: Path
    name: str
    skip_bad: bool
    tile_size: int
    resize: bool


def _write_shard(job: _ShardJob) -> tuple[str, int, list]:
    """Decode one shard's tiles and write it (runs in a worker process).

    A shard with a bad tile is kept only with ``skip_bad`` (its bad tiles are
    listed in ``<shard>.bad.csv``); otherwise it is dropped, so no store ever
    holds it, and the next run redoes it.
    """
    import tensorflow as tf

    tmp = job.out / f".{job.name}.tmp-{os.getpid()}"
    bad = []
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for k, (tile_id, label) in enumerate(zip(job.ids, job.labels)):
                image, problem = _tile(job.tile_dir / f"{tile_id}{job.suffix}", job.tile_size,
                                       job.resize)
                if problem:
                    bad.append((tile_id, problem))
                else:
                    writer.write(_example(image.tobytes(), tile_id, label, job.first_index + k))
    except (OSError, tf.errors.OpError) as err:  # a full disk: ResourceExhaustedError
        raise _unwritable_shard(job, tmp, err) from None
    if bad and not job.skip_bad:
        tmp.unlink()
    else:
        if bad:
            _write_bad(job.out / f"{job.name}.bad.csv", bad)
        os.replace(tmp, job.out / job.name)
    return job.name, len(job.ids), bad


def _tile(path: Path, size: int, resize: bool) -> tuple[np.ndarray | None, str]:
    """One image as a size x size tile: decoded (``pcam.data.images``), then, with
    ``resize``, centre-cropped to a square and resized; without, refused when
    it is not that size already (Kaggle's tiles are all 96x96)."""
    image, problem = images.decode_image(path)
    if problem or image.shape[:2] == (size, size):
        return image, problem
    if not resize:
        return None, f"is {image.shape[1]}x{image.shape[0]}, expected {size}x{size}"
    return images.to_tile(image, size), ""


def _unwritable_shard(job: _ShardJob, tmp: Path, err: Exception) -> PcamError:
    """The one-line error of a shard that cannot be written; its half is deleted."""
    tmp.unlink(missing_ok=True)
    why = getattr(err, "strerror", None) or str(getattr(err, "message", err)).split("; ")[-1]
    return PcamError(f"cannot write the tile store shard {job.out / job.name}: {why}; free "
                     f"space there or choose another --store-dir (finished shards are kept, "
                     "run the same command again to resume)")


@contextlib.contextmanager
def _pool(workers: int):
    """A process pool for decoding, or None for in-process work.

    'fork' starts workers in milliseconds without re-importing TensorFlow;
    they only run numpy and tifffile, never TensorFlow, so the parent's TF
    threads cannot deadlock them. Elsewhere (macOS, Windows) 'spawn'.
    """
    if workers <= 1:
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # Leaving the block terminates the workers, on Ctrl-C too (they ignore it).
    with multiprocessing.get_context(method).Pool(workers, initializer=_worker_init) as pool:
        yield pool


def _worker_init() -> None:
    """Set up a decoding worker: Ctrl-C is the parent's to handle.

    A terminal's Ctrl-C reaches every process of the group. A worker that got
    KeyboardInterrupt itself could die inside multiprocessing's result queue
    with its lock held, and the parent then waited for it forever (2 of 12
    tries); ignoring SIGINT here leaves the parent to terminate the pool.
    A forked worker also closes its copy of the store's lock, which would
    otherwise outlive the parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    locks.close_inherited()


def _example(image: bytes, tile_id: str, label: int, index: int) -> bytes:
    import tensorflow as tf

    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(bytes_list=tf.train.BytesList(value=[image])),
        "id": feature(bytes_list=tf.train.BytesList(value=[tile_id.encode()])),
        "label": feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "index": feature(int64_list=tf.train.Int64List(value=[int(index)])),
    })).SerializeToString()


def _write_bad(path: Path, bad: list) -> None:
    atomic_write_text(path, pd.DataFrame(bad, columns=["id", "problem"]).to_csv(index=False))


def _bad_tiles(out: Path, names: list[str], fresh: dict[int, list]) -> list:
    """All bad tiles: found now, or recorded beside shards finished earlier."""
    bad = []
    for c, name in enumerate(names):
        if c in fresh:
            bad += fresh[c]
        elif (out / f"{name}.bad.csv").is_file():
            bad += pd.read_csv(out / f"{name}.bad.csv", dtype=str).itertuples(index=False, name=None)
    return bad


def _finish(split, source, out, chunks, names, fp, bad, say) -> Store:
    """Write index.csv, bad_tiles.csv and, last, manifest.json."""
    left_out = {tile_id for tile_id, _ in bad}
    index = pd.DataFrame({"id": split.ids, "label": split.labels})
    index = index[~index["id"].isin(left_out)]
    atomic_write_text(out / "index.csv", index.to_csv(index=False))
    _write_bad(out / "bad_tiles.csv", bad)
    counts = index["label"].value_counts().sort_index()
    manifest = {
        "format": FORMAT,
        "split": split.name,
        "source": str(split.tile_dir.resolve()),
        "kind": source.kind,
        "classes": list(source.classes),
        "positive": source.positive,
        "label_region": source.label_region,
        "fingerprint": fp,
        "n_tiles": len(index),
        "label_counts": {str(k): int(v) for k, v in counts.items()},
        "class_counts": {(source.classes[k] if k >= 0 else "unlabelled"): int(v)
                         for k, v in counts.items()},
        "tile_shape": [source.tile_size, source.tile_size, 3],
        "source_side": source.source_side,
        "mpp": source.mpp,
        # Sizes let a re-run see a shard deleted or cut short (shard_problems).
        "shards": [{"file": name, "n_tiles": sum(t not in left_out for t in chunk),
                    "bytes": (out / name).stat().st_size}
                   for name, chunk in zip(names, chunks)],
        "bad_tiles": len(bad),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    atomic_write_json(out / "manifest.json", manifest)
    say(f"{split.name} store ready: {out} ({len(index):,} tiles in {len(names)} shard(s)"
        + (f", {len(bad)} bad tile(s) left out, listed in {out / 'bad_tiles.csv'}" if bad else "")
        + ")")
    return Store(Path(os.path.abspath(out)), manifest)
