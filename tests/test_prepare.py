"""Validation and ingest of the competition's files, on real tiles.

Each bad input is made by the test from a real layout; the command must name
the file or row, exit non-zero without a traceback, and leave no store that
looks complete.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import REPO

from pcam.data.competition import read_competition
from pcam.data.store import open_store, prepare
from pcam.errors import PcamError
from pcam.settings import DataSettings


def first_train_id(layout):
    return pd.read_csv(layout / "train_labels.csv")["id"].iloc[0]


def truncated(layout):
    path = layout / "train" / f"{first_train_id(layout)}.tif"
    path.write_bytes(path.read_bytes()[:2000])
    return path.name


def small_tile(layout):
    path = layout / "train" / f"{first_train_id(layout)}.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    return "is 64x64, expected 96x96"


def rgba_tile(layout):
    path = layout / "train" / f"{first_train_id(layout)}.tif"
    # Alpha 0 everywhere: a transparent tile, not an opaque one with a spare channel.
    tifffile.imwrite(path, np.zeros((96, 96, 4), np.uint8), photometric="rgb", extrasamples=[2])
    return "transparent pixels"


def text_as_tif(layout):
    path = layout / "train" / f"{first_train_id(layout)}.tif"
    path.write_text("this is not an image\n")
    return path.stem


def duplicate_id(layout):
    csv = layout / "train_labels.csv"
    table = pd.read_csv(csv, dtype=str)
    pd.concat([table, table.iloc[[3]]]).to_csv(csv, index=False)
    return table["id"].iloc[3]


def label_two(layout):
    csv = layout / "train_labels.csv"
    table = pd.read_csv(csv, dtype=str)
    table.loc[5, "label"] = "2"
    table.to_csv(csv, index=False)
    return "row 7 label '2'"


def missing_tile(layout):
    tile_id = first_train_id(layout)
    (layout / "train" / f"{tile_id}.tif").unlink()
    return tile_id


def extra_tile(layout):
    src = layout / "train" / f"{first_train_id(layout)}.tif"
    (layout / "train" / "extra0000.tif").write_bytes(src.read_bytes())
    return "extra0000.tif"


def empty_csv(layout):
    (layout / "train_labels.csv").write_text("")
    return "train_labels.csv: empty file"


def wrong_header(layout):
    csv = layout / "train_labels.csv"
    csv.write_text(csv.read_text().replace("id,label", "image,target", 1))
    return "header is 'image,target'"


BAD_INPUTS = [truncated, small_tile, rgba_tile, text_as_tif, duplicate_id, label_two,
              missing_tile, extra_tile, empty_csv, wrong_header]


def run_prepare(layout, *extra):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "prepare.py"),
                           "--data-dir", str(layout), *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("damage", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_is_named_and_nothing_half_written(layout, damage):
    expected = damage(layout)
    result = run_prepare(layout)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr
    assert any(line.startswith("error: ") for line in result.stderr.splitlines())
    assert not (store_of(layout) / "train" / "manifest.json").exists()
    leftovers = list((store_of(layout)).rglob(".*tmp*")) if (store_of(layout)).exists() else []
    assert leftovers == []


def test_problems_are_reported_together(layout):
    duplicate_id(layout)
    label_two(layout)
    extra_tile(layout)
    with pytest.raises(PcamError) as err:
        read_competition(layout)
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "more than once" in message and "not 0 or 1" in message and "extra0000.tif" in message


def test_store_holds_every_tile_exactly(layout):
    stores = prepare(DataSettings(data_dir=str(layout), shard_tiles=128, workers=2), quiet=True)
    train, test = stores["train"], stores["test"]
    labels = pd.read_csv(layout / "train_labels.csv", dtype={"id": str})
    assert train.n_tiles == 300 and len(train.shards) == 3
    assert train.manifest["label_counts"] == {
        str(k): int(v) for k, v in labels["label"].value_counts().sort_index().items()}
    assert list(test.index()["id"]) == list(pd.read_csv(layout / "sample_submission.csv")["id"])

    import tensorflow as tf

    from pcam.data.pipeline import parse

    raw = next(iter(tf.data.TFRecordDataset([str(p) for p in train.shards]).batch(300)))
    records = parse(raw, (96, 96, 3))
    assert list(records["index"].numpy()) == list(range(300))
    for k in (0, 137, 299):
        tile_id = records["id"][k].numpy().decode()
        assert tile_id == labels["id"][k]
        assert records["label"][k] == labels["label"][k]
        original = tifffile.imread(layout / "train" / f"{tile_id}.tif")
        np.testing.assert_array_equal(records["image"][k].numpy(), original)


def test_up_to_date_store_is_reused_fast(layout, capsys):
    settings = DataSettings(data_dir=str(layout), workers=1)
    first = prepare(settings, splits=("train",))["train"]
    import time
    start = time.perf_counter()
    again = prepare(settings, splits=("train",))["train"]
    assert time.perf_counter() - start < 1.0
    assert again.manifest == first.manifest
    assert "up to date" in capsys.readouterr().out


def test_changed_source_is_rebuilt(layout, capsys):
    settings = DataSettings(data_dir=str(layout), workers=1)
    before = prepare(settings, splits=("train",))["train"]
    missing_tile(layout)
    csv = layout / "train_labels.csv"
    table = pd.read_csv(csv, dtype=str)
    table.iloc[1:].to_csv(csv, index=False)   # the tile and its row both gone
    after = prepare(settings, splits=("train",))["train"]
    assert "changed" in capsys.readouterr().out
    assert after.n_tiles == before.n_tiles - 1
    assert after.manifest["fingerprint"] != before.manifest["fingerprint"]
    assert sorted(p.name for p in after.path.glob("*.tfrecord")) == \
        sorted(p.name for p in after.shards)


def test_interrupted_ingest_resumes_with_finished_shards(layout, capsys):
    settings = DataSettings(data_dir=str(layout), shard_tiles=100, workers=1)
    truncated(layout)                                   # shard 0 cannot be finished...
    with pytest.raises(PcamError):
        prepare(settings, splits=("train",))
    out = store_of(layout) / "train"
    done = sorted(p.name for p in out.glob("*.tfrecord"))
    assert len(done) == 2 and not (out / "manifest.json").exists()
    mtimes = {name: (out / name).stat().st_mtime_ns for name in done}
    # ... a re-run that may skip it keeps the two finished shards and writes only the third.
    store = prepare(DataSettings(**{**settings.__dict__, "skip_bad": True}), splits=("train",))["train"]
    assert "resuming, 2 of 3 shards" in capsys.readouterr().out
    assert {name: (out / name).stat().st_mtime_ns for name in done} == mtimes
    assert store.n_tiles == 299 and store.manifest["bad_tiles"] == 1
    bad = pd.read_csv(out / "bad_tiles.csv")
    assert bad["id"].tolist() == [first_train_id(layout)]
    assert first_train_id(layout) not in set(store.index()["id"])


def test_skip_bad_leaves_tiles_out(layout):
    expected = rgba_tile(layout)
    result = run_prepare(layout, "--skip-bad")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((store_of(layout) / "train" / "manifest.json").read_text())
    assert manifest["n_tiles"] == 299 and manifest["bad_tiles"] == 1
    assert expected in (store_of(layout) / "train" / "bad_tiles.csv").read_text()


def test_open_store_without_manifest_says_what_to_do(tmp_path):
    with pytest.raises(PcamError, match="scripts/prepare.py"):
        open_store(tmp_path)


@pytest.mark.parametrize("where", ["data", "train"])
def test_store_in_a_tile_folder_is_refused_and_touches_nothing(layout, where):
    store = layout if where == "data" else layout / "train"
    (layout / "train" / ".user-notes").write_text("mine")
    before = sorted(p.name for p in (layout / "train").iterdir())
    with pytest.raises(PcamError, match="is or contains the image folder"):
        prepare(DataSettings(data_dir=str(layout), store_dir=str(store), workers=1))
    assert sorted(p.name for p in (layout / "train").iterdir()) == before
    assert (layout / "train" / ".user-notes").read_text() == "mine"


def store_of(data) -> Path:
    """Where the stores of ``data`` go by default (outside it: pcam.places)."""
    return DataSettings(data_dir=str(data)).store_path


def dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                             capture_output=True, text=True, check=True)
    return int(process.stdout)


def test_clean_up_deletes_only_dead_processes_temporaries(layout):
    out = store_of(layout) / "train"
    out.mkdir(parents=True)
    keep = {".user-notes": "mine", ".index.csv.tmp-1": "pid 1 is alive",
            "notes.txt": "mine too"}
    gone = {f".shard-x-00000-of-00001.tfrecord.tmp-{dead_pid()}": "half a shard",
            f".index.csv.tmp-{dead_pid()}": "half an index",
            "shard-0123456789abcdef-00000-of-00001.tfrecord": "another fingerprint's"}
    for name, text in {**keep, **gone}.items():
        (out / name).write_text(text)
    prepare(DataSettings(data_dir=str(layout), workers=1), splits=("train",), quiet=True)
    for name, text in keep.items():
        assert (out / name).read_text() == text
    for name in gone:
        assert not (out / name).exists(), name


def test_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(PcamError, match="a file, not a folder"):
        prepare(DataSettings(data_dir=str(tmp_path / "data")))


# --- the store checks itself (issue 15, item 3) ---------------------------------------------

def built(layout, **changes):
    settings = DataSettings(data_dir=str(layout), shard_tiles=100, workers=1, **changes)
    return settings, prepare(settings, splits=("train",), quiet=True)["train"]


@pytest.mark.parametrize("damage", ["deleted", "cut mid-record", "cut at a record boundary"])
def test_a_damaged_shard_is_rebuilt_and_said(layout, capsys, damage):
    settings, store = built(layout)
    assert all(s["bytes"] == (store.path / s["file"]).stat().st_size
               for s in store.manifest["shards"])
    shard = store.shards[1]
    kept = {p.name: p.stat().st_mtime_ns for p in store.shards if p != shard}
    if damage == "deleted":
        shard.unlink()
    elif damage == "cut mid-record":
        shard.write_bytes(shard.read_bytes()[:5000])
    else:
        import tensorflow as tf
        records = list(tf.data.TFRecordDataset(str(shard)).take(60).as_numpy_iterator())
        with tf.io.TFRecordWriter(str(shard)) as writer:
            for record in records:
                writer.write(record)
    again = prepare(settings, splits=("train",))["train"]
    out = capsys.readouterr().out
    assert "1 shard file(s)" in out and "rebuilding them" in out and "up to date" not in out
    assert again.manifest["shards"] == store.manifest["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in again.shards if p.name in kept} == kept


def test_a_tile_changed_in_place_rebuilds_the_store(layout, capsys):
    settings, store = built(layout)
    tile = layout / "train" / f"{store.index()['id'][0]}.tif"
    image = tifffile.imread(tile)
    tifffile.imwrite(tile, 255 - image, photometric="rgb")  # same size, new pixels
    again = prepare(settings, splits=("train",))["train"]
    assert "source files changed" in capsys.readouterr().out
    assert again.manifest["fingerprint"] != store.manifest["fingerprint"]
    from pcam.data.pipeline import read_tiles
    np.testing.assert_array_equal(read_tiles(again, [store.index()["id"][0]])[0], 255 - image)


def test_a_repaired_bad_tile_comes_back(layout):
    path = layout / "train" / f"{first_train_id(layout)}.tif"
    original = path.read_bytes()
    truncated(layout)
    settings, store = built(layout, skip_bad=True)
    assert store.n_tiles == 299
    path.write_bytes(original)
    _, again = built(layout, skip_bad=True)
    assert again.n_tiles == 300 and again.manifest["bad_tiles"] == 0


def test_records_that_do_not_match_the_index_are_refused_when_filling_ram(layout):
    """A store from before shard sizes were recorded, with a shard cut at a record
    boundary: it used to train on shifted labels and black tiles."""
    import tensorflow as tf

    from pcam.data.pipeline import ram_tiles
    from pcam.data.store import open_store

    _, store = built(layout)
    manifest = json.loads((store.path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        del shard["bytes"]
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    shard = store.shards[0]
    records = list(tf.data.TFRecordDataset(str(shard)).take(60).as_numpy_iterator())
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record)
    with pytest.raises(PcamError, match="does not hold what its manifest says .260 records for 300 tiles"):
        ram_tiles(open_store(store.path))
