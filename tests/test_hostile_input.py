"""Bad and hostile input gets one clear line (exit status 2) before any work, never a traceback or a
silently wrong result: outputs among the inputs, impossible grids and shifts, devices that do not
exist, file names that are terminal escapes or spreadsheet formulas (issue #19)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_cli import _assert_one_line_error, run

import replicheck


def _npy_set(folder, count: int, shape: tuple[int, ...], seed: int):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.save(folder / f"img{i}.npy", rng.random(shape).astype(np.float32))
    return folder


@pytest.fixture
def tiny(tmp_path):
    return _npy_set(tmp_path / "train", 6, (32, 32), 0), _npy_set(tmp_path / "synth", 4, (32, 32), 1)


def test_results_never_go_among_the_images_a_manifest_lists(tiny, tmp_path):
    train, synth = tiny
    manifest = tmp_path / "train.csv"
    pd.DataFrame({"path": [str(p) for p in sorted(train.glob("*.npy"))], "subject": list("abcdef")}).to_csv(manifest, index=False)
    done = run("scan", manifest, synth, "--out", train / "results")
    _assert_one_line_error(done, "--out", "where images listed in", "train.csv")
    assert not (train / "results").exists()


def test_an_output_that_is_a_file_is_refused_before_any_work(tiny, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    _assert_one_line_error(run("scan", *tiny, "--out", target), "--out", "is an existing file")
    assert target.read_text() == "mine"


@pytest.mark.parametrize("options, needle", [
    (["--device", "cuda:x"], "--device must be cpu, cuda, cuda:N or mps"),
    (["--align", "shift", "--max-shift", "12"], "--max-shift 12 needs an analysis grid of at least 49 voxels"),
])
def test_options_that_cannot_work_on_these_images_fail_first(tiny, tmp_path, options, needle):
    done = run("scan", *tiny, "--out", tmp_path / "r", *options)
    _assert_one_line_error(done, needle)
    assert not (tmp_path / "r").exists()


def test_cuda_on_a_machine_without_it_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(replicheck.OptionError, match="cuda is not available"):
        replicheck.ScanConfig.from_options(device="cuda")


def test_images_too_small_for_the_automatic_grid_are_refused(tmp_path):
    train, synth = _npy_set(tmp_path / "t", 6, (4, 4), 0), _npy_set(tmp_path / "s", 3, (4, 4), 1)
    _assert_one_line_error(run("scan", train, synth, "--out", tmp_path / "r"), "analysis grid 4x4",
                           "at least 8 voxels", "--grid")
    done = run("scan", train, synth, "--out", tmp_path / "r2", "--grid", "16x16", "--quiet")  # deliberate upsampling
    assert done.returncode == 0, done.stderr


def test_a_strip_is_not_stretched_into_an_image(tmp_path):
    for name in ("t", "s"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (1, 128), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    _assert_one_line_error(run("scan", tmp_path / "t", tmp_path / "s", "--out", tmp_path / "r", "--grid", "128x128"),
                           "0.png", "is 1x128 voxels", "single voxel")
    (tmp_path / "w").mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 128), dtype=np.uint8)).save(tmp_path / "w" / f"{i}.png")
    _assert_one_line_error(run("scan", tmp_path / "w", tmp_path / "s", "--out", tmp_path / "r", "--grid", "128x128"),
                           "is 16x128 pixels", "stretched 8x more")


def test_terminal_escapes_in_file_names_are_shown_escaped(tiny, tmp_path):
    train, synth = tiny
    (train / "bad\x1b[31mred.npy").write_bytes(b"not an array")
    done = run("scan", train, synth, "--out", tmp_path / "r")
    _assert_one_line_error(done, "bad\\x1b[31mred.npy")
    assert "\x1b" not in done.stderr.replace("\x1b[31m", "", 1).replace("\x1b[0m", "")  # only our own colour codes


def test_cells_a_spreadsheet_would_run_are_defused(tiny, tmp_path):
    train, synth = tiny
    (synth / "img0.npy").rename(synth / "=1+2.npy")
    (synth / "img1.npy").rename(synth / "@SUM(A1).npy")
    result = replicheck.scan(train, synth, progress=False, report_images=False)
    result.write(tmp_path / "r")
    written = pd.read_csv(tmp_path / "r" / "synthetic.csv", dtype=str, keep_default_na=False)
    assert {"'=1+2.npy", "'@SUM(A1).npy"} <= set(written["id"])
    assert not written["id"].str.match(r"^[=+@]").any()
    assert set(result.synthetic["id"]) >= {"=1+2.npy", "@SUM(A1).npy"}  # the in-memory table is the data itself


def _png_claiming(path, width: int, height: int):
    """A PNG whose header claims width x height pixels, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_or_skipped_by_its_header(tiny, tmp_path):
    train, synth = tiny
    _png_claiming(train / "bomb.png", 30000, 30000)
    _assert_one_line_error(run("scan", train, synth, "--out", tmp_path / "r"), "bomb.png", "decompression bomb")
    done = run("scan", train, synth, "--out", tmp_path / "r2", "--skip-unreadable", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "bomb.png" not in set(pd.read_csv(tmp_path / "r2" / "training.csv", dtype=str)["id"])


def test_a_volume_header_claiming_billions_of_voxels_is_refused_before_reading(tmp_path):
    import nibabel as nib

    folder = tmp_path / "t"
    folder.mkdir()
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    (folder / "huge.nii").write_bytes(header.binaryblock + b"\0" * 68)  # 30 GiB declared, 420 bytes on disk
    done = run("scan", folder, folder, "--out", tmp_path / "r")
    _assert_one_line_error(done, "huge.nii", "declares 2000x2000x2000 voxels", "more than the 268,435,456")


def test_a_holdout_too_small_to_calibrate_is_refused_and_a_tiny_null_has_no_floor(tiny, tmp_path):
    train, synth = tiny
    holdout = _npy_set(tmp_path / "h", 1, (32, 32), 2)
    _assert_one_line_error(run("scan", train, synth, "--holdout", holdout, "--out", tmp_path / "r"),
                           "a holdout of 1 image(s) cannot calibrate", "at least 5")
    assert not (tmp_path / "r").exists()
    done = run("scan", train, synth, "--out", tmp_path / "r2", "--quiet")  # leave-one-subject-out on 6 images
    assert done.returncode == 0, done.stderr
    assert "not estimable from 6 null images (the 0.99 quantile needs at least 100)" in done.stdout
    assert "0.0% (holdout floor)" not in done.stdout
