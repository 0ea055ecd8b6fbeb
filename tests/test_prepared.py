"""Read once: inputs prepared in slices (scan --prepare I/N) and joined by scans, shards and the
merge (--prepared) give the files of a single run, byte for byte; joining refuses slices that do
not belong to the run."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replicheck.config import ScanConfig
from replicheck.levels import make_level
from replicheck.pipeline import merge_into, prepare_slice, run_shard, scan_into
from replicheck.records import OptionError, ReplicheckError
from replicheck.search import build_side
from replicheck.shards import Shard
from replicheck.store import ArrayStore, StoreChain

TABLES = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv")


def _config(**options) -> ScanConfig:
    return ScanConfig.from_options(subject_regex=r"^(p\d+)_", grid=(64, 64), training_sample=60, **options)


def _prepare(inputs: Path, folder: Path, config: ScanConfig, count: int) -> Path:
    for index in range(1, count + 1):
        prepare_slice(inputs / "train", inputs / "synth", inputs / "holdout", config, Shard(index, count), folder)
    return folder


def _same_tables(first: Path, second: Path) -> None:
    for table in TABLES:
        assert (first / table).read_bytes() == (second / table).read_bytes(), table


@pytest.mark.slow
def test_prepared_slices_give_the_files_of_a_single_run(shard_inputs, tmp_path):
    config = _config()
    train, synth, holdout = shard_inputs / "train", shard_inputs / "synth", shard_inputs / "holdout"
    single = scan_into(tmp_path / "single", train, synth, holdout, config)
    prepared = _prepare(shard_inputs, tmp_path / "prep", config, 3)
    record = json.loads((prepared / "slice-1-of-3" / "slice.json").read_text())
    assert sorted(record["levels"]) == ["voxel"] and record["roles"]["synthetic"]["stored"] == 130 // 3
    first = prepared / "slice-1-of-3"  # copies of patients' images: the owner's alone
    assert all(path.stat().st_mode & 0o077 == 0 for path in [first, *first.iterdir()])
    parts = [run_shard(train, synth, holdout, config, Shard(i, 2), tmp_path / f"part_{i}", prepared=prepared)
             for i in (1, 2)]
    merged = merge_into(tmp_path / "merged", parts, prepared=prepared)
    _same_tables(tmp_path / "single", tmp_path / "merged")
    assert merged.synthetic["replica"].sum() >= 18 and merged.headline == single.headline
    assert merged.summary["prepared"]["slices"] == 3
    assert "read_and_preprocess" not in merged.summary["timings_s"]  # joined, not read
    # A scan on one machine can join them too.
    joined = scan_into(tmp_path / "joined", train, synth, holdout, config, prepared=prepared)
    _same_tables(tmp_path / "single", tmp_path / "joined")
    assert joined.summary["inputs"]["synthetic"]["analysed"] == 130


@pytest.mark.slow
def test_a_level_that_is_not_sliceable_is_represented_from_the_joined_images(shard_inputs, tmp_path):
    """The feature level embeds the joined images itself; the voxel level's vectors come from the
    slices; the tables are a single run's."""
    config = _config(levels="voxel,feature", adapt="none", dataset_tests=False, cache=str(tmp_path / "cache"))
    train, synth, holdout = shard_inputs / "train", shard_inputs / "synth", shard_inputs / "holdout"
    scan_into(tmp_path / "single", train, synth, holdout, config)
    prepared = _prepare(shard_inputs, tmp_path / "prep", config, 2)
    assert sorted(json.loads((prepared / "slice-2-of-2" / "slice.json").read_text())["levels"]) == ["voxel"]
    scan_into(tmp_path / "joined", train, synth, holdout, config, prepared=prepared)
    _same_tables(tmp_path / "single", tmp_path / "joined")


@pytest.mark.slow
def test_joining_refuses_slices_that_do_not_belong_to_the_run(shard_inputs, tmp_path):
    config = _config(dataset_tests=False)
    copy = tmp_path / "inputs"
    shutil.copytree(shard_inputs, copy)
    train, synth, holdout = copy / "train", copy / "synth", copy / "holdout"
    prepared = tmp_path / "prep"
    prepare_slice(train, synth, holdout, config, Shard(1, 2), prepared)
    with pytest.raises(ReplicheckError, match="slice\\(s\\) 2/2 missing"):
        scan_into(tmp_path / "out", train, synth, holdout, config, prepared=prepared)
    prepare_slice(train, synth, holdout, config, Shard(2, 2), prepared)
    with pytest.raises(ReplicheckError, match="prepared for another run \\(settings differ: k\\)"):
        scan_into(tmp_path / "out", train, synth, holdout, _config(dataset_tests=False, k=3), prepared=prepared)
    with pytest.raises(ReplicheckError, match="prepared for another run .*inputs"):
        scan_into(tmp_path / "out", train, synth, shard_inputs / "holdout", config, prepared=prepared)
    first = sorted(synth.glob("*.npy"))[-1]  # in slice 2
    np.save(first, np.load(first)[::-1].copy())
    with pytest.raises(ReplicheckError, match="slice-2-of-2: the synthetic images .* changed since"):
        scan_into(tmp_path / "out", train, synth, holdout, config, prepared=prepared)
    prepare_slice(train, synth, holdout, config, Shard(2, 2), prepared)  # prepared again: joins
    shutil.copytree(prepared / "slice-1-of-2", prepared / "slice-1-of-2.old")
    with pytest.raises(ReplicheckError, match="slice-1-of-2.old holds slice 1/2 but is named otherwise"):
        scan_into(tmp_path / "out", train, synth, holdout, config, prepared=prepared)
    shutil.rmtree(prepared / "slice-1-of-2.old")
    (prepared / "slice-1-of-2" / "voxel.training.vectors.npy").write_bytes(b"not an array")
    with pytest.raises(ReplicheckError, match="voxel.training.vectors.npy: cannot read it"):
        scan_into(tmp_path / "out", train, synth, holdout, config, prepared=prepared)
    prepare_slice(train, synth, holdout, config, Shard(1, 3), prepared)
    with pytest.raises(ReplicheckError, match="mixes slices of 2 and 3"):
        scan_into(tmp_path / "out", train, synth, holdout, config, prepared=prepared)
    with pytest.raises(OptionError, match="no prepared slice"):
        scan_into(tmp_path / "out", train, synth, holdout, config, prepared=tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, dim", [({}, 2), ({"align": "shift"}, 2),
                                          ({"align": "shift", "voxel_measure": "ssim"}, 2), ({}, 3), ({"align": "shift"}, 3)],
                         ids=["aligned", "shift-ncc", "shift-ssim", "aligned-3d", "shift-3d"])
def test_a_sliceable_level_represents_slices_as_one_batch(ct_slices_32px, options, dim):
    """What ``sliceable`` promises: vectors, views and coarse rows of images computed in other
    batches, a batch of one image among them, are the same bytes (a lone 3D image pooled by
    torch's threads rounded otherwise until build_side paired it)."""
    images = ct_slices_32px[0][:90] if dim == 2 else np.random.default_rng(0).random((6, 32, 48, 48), dtype=np.float32)
    level = make_level("voxel", ScanConfig.from_options(**options))
    assert level.sliceable
    rows = pd.DataFrame({"id": [str(i) for i in range(len(images))], "subject": "s"})
    cuts = ((0, 37), (37, 38), (38, 90)) if dim == 2 else ((0, 1), (1, 4), (4, 6))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        whole = _side(level, images, rows, folder, "whole")
        pieces = [_side(level, images[a:b], rows.iloc[a:b], folder, f"piece{a}") for a, b in cuts]
        np.testing.assert_array_equal(whole.vectors, np.concatenate([p.vectors for p in pieces]))
        if whole.query_vectors is not None:
            np.testing.assert_array_equal(whole.query_vectors, np.concatenate([p.query_vectors for p in pieces]))
        if whole.coarse is not None:
            for name in ("coarse", "coarse_queries"):
                joined = ArrayStore.joined(folder / f"{name}.f32", getattr(whole, name).shape,
                                           [getattr(p, name).path for p in pieces])
                every = np.arange(len(images))
                np.testing.assert_array_equal(getattr(whole, name).read(every), joined.read(every))


def _side(level, images, rows, folder, name):
    store = ArrayStore(folder / f"{name}.f32", images.shape[1:])
    for image in images:
        store.append(image)
    return build_side(level, store, rows.reset_index(drop=True), folder, name)


def test_the_feature_level_is_not_sliceable():
    """Its whitening is refitted on all training images, and a network's output may change with the batch."""
    assert not make_level("feature", ScanConfig.from_options(levels="voxel,feature")).sliceable


@pytest.mark.slow
def test_prepare_shards_and_merge_from_the_command_line(shard_inputs, tmp_path, monkeypatch):
    """Prepared and sharded with the inputs named relative to the working folder, merged from the
    full paths the parts record: the same files are recognised, and the tables are a single run's."""
    from typer.testing import CliRunner

    from replicheck.cli import app

    runner = CliRunner()
    options = ["--subject-regex", r"^(p\d+)_", "--grid", "64,64", "--no-dataset-tests", "--quiet"]
    single = runner.invoke(app, ["scan", str(shard_inputs / "train"), str(shard_inputs / "synth"), *options,
                                 "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    monkeypatch.chdir(shard_inputs)
    common = ["train", "synth", *options]
    prep = tmp_path / "prep"
    for index in (1, 2):
        made = runner.invoke(app, ["scan", *common, "--prepare", f"{index}/2", "--out", str(prep)])
        assert made.exit_code == 0 and f"Slice {index}/2 prepared in {prep / f'slice-{index}-of-2'}" in made.output, \
            made.output
    for index in (1, 2):
        part = runner.invoke(app, ["scan", *common, "--prepared", str(prep), "--shard", f"{index}/2", "--out",
                                   str(tmp_path / f"part_{index}")])
        assert part.exit_code == 0, part.output
    merged = runner.invoke(app, ["merge", str(tmp_path / "part_1"), str(tmp_path / "part_2"), "--prepared", str(prep),
                                 "--out", str(tmp_path / "merged"), "--quiet"])
    assert merged.exit_code == 0, merged.output
    _same_tables(tmp_path / "single", tmp_path / "merged")
    refused = runner.invoke(app, ["scan", *common, "--prepare", "1/2", "--shard", "1/2", "--out", str(prep)])
    assert refused.exit_code == 2 and "--shard does not combine with --prepare" in refused.output
    refused = runner.invoke(app, ["scan", *common, "--prepare", "3/2", "--out", str(prep)])
    assert refused.exit_code == 2 and "--prepare must be I/N" in refused.output
    refused = runner.invoke(app, ["scan", *common, "--prepared", str(prep), "--backend", "ray", "--out", str(tmp_path / "r")])
    assert refused.exit_code == 2 and "--prepared is for --backend local" in refused.output


def test_a_chain_of_store_files_reads_as_one_store(tmp_path):
    """The prepared slices' images are read in place: rows across file boundaries, in any order,
    equal those of one store; empty files are passed over; a torn file is refused."""
    rng = np.random.default_rng(0)
    arrays = rng.random((11, 3, 4), dtype=np.float32)
    one = ArrayStore(tmp_path / "one.f32", (3, 4))
    paths = []
    for index, (a, b) in enumerate(((0, 4), (4, 4), (4, 9), (9, 11))):
        piece = ArrayStore(tmp_path / f"piece{index}.f32", (3, 4))
        for array in arrays[a:b]:
            piece.append(array)
        paths.append(piece.path)
    for array in arrays:
        one.append(array)
    chain = StoreChain(paths, (3, 4))
    rows = np.array([10, 0, 3, 4, 8, 9, 3])
    assert len(chain) == 11
    np.testing.assert_array_equal(chain.read(rows), one.read(rows))
    np.testing.assert_array_equal(np.concatenate([batch for _, batch in chain.batches(5)]), arrays)
    with pytest.raises(IndexError):
        chain.read([11])
    with pytest.raises(TypeError):
        chain.append(arrays[0])
    with open(paths[0], "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(ValueError, match="not a whole number"):
        StoreChain(paths, (3, 4))
