"""Exact sharded scans: N shards and a merge give the files of a single run, byte for byte; merge
refuses parts that do not belong together."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from replicheck.config import ScanConfig
from replicheck.pipeline import merge_into, run_shard, scan_into
from replicheck.records import OptionError, ReplicheckError
from replicheck.search import QUERY_CHUNK
from replicheck.shards import Shard

TABLES = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv")


@pytest.mark.parametrize("n, count", [(0, 1), (1, 3), (64, 2), (200, 3), (1000, 7), (130, 5)])
def test_shards_cover_every_query_once_in_whole_chunks(n, count):
    slices = [Shard(i, count).positions(n, QUERY_CHUNK) for i in range(1, count + 1)]
    np.testing.assert_array_equal(np.concatenate(slices), np.arange(n))
    for part in slices:
        if len(part):
            assert part[0] % QUERY_CHUNK == 0 and (part[-1] + 1 == n or (part[-1] + 1) % QUERY_CHUNK == 0)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", ""])
def test_a_shard_that_is_not_i_of_n_is_refused(text):
    with pytest.raises(OptionError):
        Shard.parse(text)


def _config(**options) -> ScanConfig:
    return ScanConfig.from_options(subject_regex=r"^(p\d+)_", grid=(64, 64), training_sample=60, **options)


def _sharded(inputs, folder, config, count):
    parts = []
    for index in range(1, count + 1):
        parts.append(run_shard(inputs / "train", inputs / "synth", inputs / "holdout", config, Shard(index, count),
                               folder / f"part_{index}"))
    return parts


@pytest.mark.slow
@pytest.mark.parametrize("options, count", [({"levels": "voxel"}, 3),
                                            ({"levels": "voxel,feature", "adapt": "none", "dataset_tests": False}, 2)],
                         ids=["voxel", "voxel+feature"])
def test_merged_shards_write_the_files_of_a_single_run(shard_inputs, tmp_path, options, count):
    """(The feature level is used as bundled, and its runs share an embedding cache: refitting it on
    the training images costs 30 s a run here and embedding 20 s. Both are deterministic: without
    them, a 3-shard merge differed from a single run only in the refit's recorded seconds.)"""
    config = _config(**options, **({"cache": str(tmp_path / "cache")} if "feature" in options["levels"] else {}))
    single = scan_into(tmp_path / "single", shard_inputs / "train", shard_inputs / "synth", shard_inputs / "holdout",
                       config)
    parts = _sharded(shard_inputs, tmp_path, config, count)
    merged = merge_into(tmp_path / "merged", parts)
    for table in TABLES:
        assert (tmp_path / "single" / table).read_bytes() == (tmp_path / "merged" / table).read_bytes(), table
    assert merged.synthetic["replica"].sum() >= 18  # the copies are found, as in a single run
    one, joined = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("single", "merged"))
    assert joined["sharded"]["shards"] == count and len(joined["sharded"]["parts"]) == count
    for summary in (one, joined):
        for key in ("timings_s", "cpu_s", "sharded", "command", "created"):
            summary.pop(key, None)
        for statistics in summary.get("dataset", {}).values():
            statistics.pop("seconds")
        summary["levels"].get("feature", {}).get("settings", {}).pop("cache", None)  # hits and misses differ
    assert joined == one
    assert single.headline == merged.headline


@pytest.mark.slow
def test_merge_refuses_parts_that_do_not_belong_together(shard_inputs, tmp_path):
    config = _config()
    parts = _sharded(shard_inputs, tmp_path, config, 2)
    with pytest.raises(ReplicheckError, match="shard\\(s\\) 2/2 missing"):
        merge_into(tmp_path / "results", parts[:1])
    with pytest.raises(ReplicheckError, match="both shard 1/2"):
        shutil.copytree(parts[0], tmp_path / "copy_of_1")
        merge_into(tmp_path / "results", [parts[0], tmp_path / "copy_of_1", parts[1]])
    other = run_shard(shard_inputs / "train", shard_inputs / "synth", shard_inputs / "holdout", _config(k=3),
                      Shard(2, 2), tmp_path / "other_2")
    with pytest.raises(ReplicheckError, match="another run.*settings differ: k"):
        merge_into(tmp_path / "results", [parts[0], other])
    # An input changed after the shards ran: the merge reads it again and refuses.
    changed = tmp_path / "inputs"
    shutil.copytree(shard_inputs, changed)
    shards = [run_shard(changed / "train", changed / "synth", changed / "holdout", config, Shard(i, 2),
                        tmp_path / f"changed_{i}") for i in (1, 2)]
    first = sorted((changed / "train").glob("*.npy"))[0]
    np.save(first, np.load(first)[::-1].copy())
    with pytest.raises(ReplicheckError, match="training images .* are not what this shard read"):
        merge_into(tmp_path / "results", shards)
    assert not (tmp_path / "results").exists()  # nothing written by a refused merge


@pytest.mark.slow
def test_shards_and_merge_from_the_command_line_without_a_holdout(shard_inputs, tmp_path):
    """Leave-one-subject-out calibration sharded through the CLI: the same tables as a single run."""
    from typer.testing import CliRunner

    from replicheck.cli import app

    runner = CliRunner()
    common = [str(shard_inputs / "train"), str(shard_inputs / "synth"), "--subject-regex", r"^(p\d+)_",
              "--grid", "64,64", "--no-dataset-tests", "--quiet"]
    single = runner.invoke(app, ["scan", *common, "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    for index in (1, 2):
        part = runner.invoke(app, ["scan", *common, "--shard", f"{index}/2", "--out", str(tmp_path / f"part_{index}")])
        assert part.exit_code == 0 and f"Part {index}/2 written" in part.output, part.output
    merged = runner.invoke(app, ["merge", str(tmp_path / "part_1"), str(tmp_path / "part_2"), "--out",
                                 str(tmp_path / "merged"), "--quiet"])
    assert merged.exit_code == 0, merged.output
    for table in TABLES:
        assert (tmp_path / "single" / table).read_bytes() == (tmp_path / "merged" / table).read_bytes(), table
    assert merged.output.splitlines()[0] == single.output.splitlines()[0]
    refused = runner.invoke(app, ["scan", *common, "--shard", "1/2", "--out", str(tmp_path / "p"), "--fail-above", "0.1"])
    assert refused.exit_code == 2 and "--fail-above acts on the joined results" in refused.output
    refused = runner.invoke(app, ["scan", *common, "--out", str(tmp_path / "p"), "--shards", "2"])
    assert refused.exit_code == 2 and "--shards needs --backend ray" in refused.output
