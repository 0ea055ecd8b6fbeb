"""The segmentation level: masks from built-in segmenters, manifests, folders and commands, compared
by Dice; replicas of training masks are found, other subjects' masks are not."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import perturb, shared, split_patients, write_set
from scipy import ndimage
from typer.testing import CliRunner

from replicheck import scan
from replicheck.cli import app
from replicheck.levels.segmentation import SegmentationLevel
from replicheck.mask_measures import component_dice, dice, hausdorff95
from replicheck.records import InputError, OptionError
from replicheck.search import Side, nearest
from replicheck.segmenters import ct_parameters, parse_masks
from replicheck.store import ArrayStore


@pytest.fixture(scope="module")
def adrenal():
    with np.load(shared("adrenalmnist3d", "adrenalmnist3d_64.npz")) as data:
        return {key: data[key] > 0 for key in ("train_images", "test_images")}


def _boundary_noise(mask: np.ndarray, rng: np.random.Generator, share: float = 0.15) -> np.ndarray:
    """``mask`` with a random ``share`` of its boundary voxels flipped (in or out)."""
    boundary = mask ^ ndimage.binary_erosion(mask) | ndimage.binary_dilation(mask) & ~mask
    flip = boundary & (rng.random(mask.shape) < share)
    return mask ^ flip


def _manifest(folder, masks: dict[str, np.ndarray], *, images: dict[str, np.ndarray] | None = None):
    folder.mkdir(parents=True)
    rows = []
    for name, mask in masks.items():
        image = (images or {}).get(name, mask.astype(np.uint8) * 255)
        np.save(folder / f"{name}.npy", image)
        np.save(folder / f"{name}.mask.npy", mask.astype(np.uint8))
        rows.append({"path": f"{name}.npy", "mask": f"{name}.mask.npy", "subject": name})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_replicas_of_3d_masks_are_found_and_other_subjects_are_not(adrenal, tmp_path):
    rng = np.random.default_rng(0)
    train, test = adrenal["train_images"][:80], adrenal["test_images"]
    sources = [3, 17, 42, 58, 71]
    replicas = {f"copy{i:02d}": _boundary_noise(train[i], rng) for i in sources}
    others = {f"other{i:03d}": test[i] for i in range(200, 206)}
    result = scan(_manifest(tmp_path / "train", {f"t{i:02d}": m for i, m in enumerate(train)}),
                  _manifest(tmp_path / "synth", {**replicas, **others}),
                  holdout=_manifest(tmp_path / "holdout", {f"h{i:03d}": test[i] for i in range(200)}),
                  levels="segmentation", masks="manifest", image_ndim=3, grid=(32, 32, 32), report_images=False)
    table = result.synthetic.set_index("id")
    for i, name in zip(sources, replicas):
        row = table.loc[f"{name}.npy"]
        assert row["segmentation_nearest"] == f"t{i:02d}.npy"
        # masks sampled to the 32^3 analysis grid at the centres of 2x2x2 cells (nearest neighbour)
        a, b = replicas[name][1::2, 1::2, 1::2], train[i][1::2, 1::2, 1::2]
        np.testing.assert_allclose(row["segmentation_score"], dice(a, b), atol=1e-12)
        assert 0.85 < row["segmentation_score"] < 1.0 and row["segmentation_flag"]
        # boundary noise leaves specks outside the gland: each counts as an unmatched component
        np.testing.assert_allclose(row["segmentation_component_dice"], component_dice(a, b)["mean_dice"], atol=1e-12)
        np.testing.assert_allclose(row["segmentation_hd95"], hausdorff95(a, b), atol=1e-12)
    assert not table.loc[[f"{name}.npy" for name in others], "segmentation_flag"].any()
    summary = result.summary["levels"]["segmentation"]
    assert summary["threshold"] < 0.85 and summary["settings"]["masks"] == "manifest"


def test_a_mask_of_the_wrong_shape_names_the_file(ctich, tmp_path):
    slices = ctich["flat_brain"][:6]
    masks = {f"s{i}": s > 100 for i, s in enumerate(slices)}
    train = _manifest(tmp_path / "train", dict(list(masks.items())[:4]), images={f"s{i}": s for i, s in enumerate(slices)})
    np.save(tmp_path / "train" / "s2.mask.npy", np.zeros((64, 64), dtype=np.uint8))
    synth = _manifest(tmp_path / "synth", dict(list(masks.items())[4:]), images={f"s{i}": s for i, s in enumerate(slices)})
    with pytest.raises(InputError, match=r"s2\.mask\.npy.*\(64, 64\).*s2\.npy has shape \(128, 128\)"):
        scan(train, synth, levels="segmentation", masks="manifest", report_images=False)


def test_builtin_foreground_on_ct_slices_with_candidates_from_the_voxel_level(ctich, tmp_path):
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, hold_p, other_p = split_patients(patients, 3, (6, 4))
    pick = {name: np.flatnonzero(np.isin(patients, group))[::2] for name, group in
            (("train", train_p), ("holdout", hold_p), ("other", other_p[:2]))}
    rng = np.random.default_rng(1)
    copies = pick["train"][[5, 20, 40]]
    write_set(tmp_path / "train", {f"{patients[i]:03d}_{i:04d}": images[i] for i in pick["train"]})
    write_set(tmp_path / "holdout", {f"{patients[i]:03d}_{i:04d}": images[i] for i in pick["holdout"]})
    write_set(tmp_path / "synth", {**{f"copy_{i:04d}": perturb(images[i], rng, max_shift=0) for i in copies},
                                   **{f"other_{i:04d}": images[i] for i in pick["other"][:6]}})
    result = scan(tmp_path / "train", tmp_path / "synth", holdout=tmp_path / "holdout", levels="segmentation,voxel",
                  subject_regex=r"^(\d+)_", report_images=False)
    levels = result.summary["levels"]
    assert list(levels) == ["voxel", "segmentation"]  # the union level runs last
    assert levels["segmentation"]["candidates_from_levels"] == ["voxel"]
    assert levels["segmentation"]["settings"]["mask_source"].startswith("built-in segmenter foreground")
    table = result.synthetic.set_index("id")
    for i in copies:
        row = table.loc[f"copy_{i:04d}.npy"]
        # foreground masks of a shifted noisy copy: Dice near 1 against the source, found by the union
        assert row["segmentation_nearest"] == f"{patients[i]:03d}_{i:04d}.npy" == row["voxel_nearest"]
        assert row["segmentation_score"] > 0.9  # noise and gamma move the Otsu threshold a little
    # Head outlines of different patients overlap about as much: a foreground mask alone does not
    # separate copies from other patients on CT slices (the threshold is set by the holdout).
    assert levels["segmentation"]["threshold"] > 0.9
    # the verdict is max-z by default; every rule's verdict and each level's likelihood are reported
    synthetic = result.synthetic
    combined = result.summary["combined"]
    assert combined["rule"] == "max-z"
    assert set(combined["rules"]) == {"any", "bonferroni", "min-p", "fisher", "max-z", "max-robust-z", "lead-z"}
    assert synthetic["replica"].tolist() == synthetic["combined_max_z_flag"].tolist()
    assert synthetic.loc[synthetic["replica"], "reason"].str.len().gt(0).all()  # every replica says why
    assert synthetic.set_index("id").loc[[f"copy_{i:04d}.npy" for i in copies], "replica"].all()
    union = synthetic["voxel_flag"].to_numpy(bool) | synthetic["segmentation_flag"].to_numpy(bool)
    assert synthetic["combined_any_flag"].tolist() == union.tolist()
    assert combined["rules"]["any"]["n_copies"]["count"] == union.sum()
    likelihood = result.summary["likelihood"]
    assert likelihood["voxel"] == levels["voxel"]["n_copies"] and likelihood["combined"] == combined["n_copies"]
    assert result.training["replica_copies"].sum() == synthetic["replica"].sum()


def test_ct_segmenters_need_hounsfield_units_and_empty_masks_are_never_replicas(ctich, tmp_path):
    slices = ctich["flat_brain"][::100][:20]
    with pytest.raises(InputError, match="needs CT images in Hounsfield units.*--intensity ct"):
        write_set(tmp_path / "t8", {f"{i:02d}": s for i, s in enumerate(slices[:10])})
        write_set(tmp_path / "s8", {f"{i:02d}": s for i, s in enumerate(slices[10:])})
        scan(tmp_path / "t8", tmp_path / "s8", levels="segmentation", masks="ct-haemorrhage", report_images=False)
    hu = -20.0 + 120.0 * slices.astype(np.float32) / 255  # brain window inverted: the skull is clipped at 100 HU
    write_set(tmp_path / "train", {f"{i:02d}": s for i, s in enumerate(hu[:10])})
    write_set(tmp_path / "synth", {f"{i:02d}": s for i, s in enumerate(hu[:10])})  # exact copies
    result = scan(tmp_path / "train", tmp_path / "synth", levels="segmentation", masks="ct-haemorrhage",
                  intensity="ct", report_images=False)
    settings = result.summary["levels"]["segmentation"]["settings"]
    assert settings["segmenter_parameters"] == {"skull": 200.0, "head": -120.0}
    assert settings["empty_masks"] == 20  # no closed skull above 200 HU: nothing enclosed, every mask empty
    np.testing.assert_array_equal(result.synthetic["segmentation_score"], 0.0)
    assert not result.synthetic["segmentation_flag"].any()


def test_8bit_exports_of_a_ct_window_segment_like_hounsfield_units(ctich, tmp_path):
    """--intensity ct8 --ct-window 40,120 on the 8-bit brain-window slices gives the masks that
    --intensity ct gives on the same slices in HU (the window inverted by hand)."""
    slices = ctich["flat_brain"][::100]  # 26 slices of many patients; the segmenter marks something in a few
    runs = {}
    for name, images, intensity in (("ct8", slices, "ct8"), ("hu", -20.0 + 120.0 * slices.astype(np.float32) / 255, "ct")):
        write_set(tmp_path / name / "train", {f"{i:02d}": s for i, s in enumerate(images[::2])})
        write_set(tmp_path / name / "synth", {f"{i:02d}": s for i, s in enumerate(images[1::2])})
        runs[name] = scan(tmp_path / name / "train", tmp_path / name / "synth", levels="segmentation",
                          masks="ct-haemorrhage", intensity=intensity, ct_window=(40, 120), report_images=False)
    ct8, hu = (runs[name].summary["levels"]["segmentation"]["settings"] for name in ("ct8", "hu"))
    assert ct8["segmenter_parameters"] == hu["segmenter_parameters"] == {"skull": 95.0, "head": -8.0}
    assert ct8["empty_masks"] == hu["empty_masks"] < len(slices)  # some blood is found, the same in both
    np.testing.assert_allclose(runs["ct8"].synthetic["segmentation_score"], runs["hu"].synthetic["segmentation_score"],
                               atol=1e-6)


def test_masks_from_a_command_and_from_a_folder(ctich, tmp_path):
    slices = ctich["flat_brain"][200:212]
    write_set(tmp_path / "train", {f"{i:02d}_t": s for i, s in enumerate(slices[:8])})
    write_set(tmp_path / "synth", {"copy": slices[2], "other": slices[10]})
    script = tmp_path / "seg.py"
    script.write_text("import sys, nibabel as nib, numpy as np\n"
                      "image = nib.load(sys.argv[1])\n"
                      "mask = (np.asarray(image.dataobj) > 0.3).astype(np.uint8)\n"
                      "nib.save(nib.Nifti1Image(mask, image.affine), sys.argv[2])\n")
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["scan", str(tmp_path / "train"), str(tmp_path / "synth"), "--levels",
                                    "segmentation", "--masks", f"cmd:{sys.executable} {script} {{input}} {{output}}",
                                    "--subject-regex", r"^(\d+)_", "--out", str(out), "-q", "--no-images"])
    assert done.exit_code == 0, done.output
    table = pd.read_csv(out / "synthetic.csv").set_index("id")
    assert table.loc["copy.npy", "segmentation_nearest"] == "02_t.npy"
    assert table.loc["copy.npy", "segmentation_score"] == 1.0
    expected = dice(slices[10] / 255 > 0.3, slices[int(table.loc["other.npy", "segmentation_nearest"][:2])] / 255 > 0.3)
    np.testing.assert_allclose(table.loc["other.npy", "segmentation_score"], expected, atol=1e-12)

    # the same masks from a folder mirroring the inputs: DIR/<role>/<relative path>
    for role, folder in (("training", "train"), ("synthetic", "synth")):
        (tmp_path / "masks" / role).mkdir(parents=True)
        for file in (tmp_path / folder).glob("*.npy"):
            np.save(tmp_path / "masks" / role / file.name, np.load(file) / 255 > 0.3)
    result = scan(tmp_path / "train", tmp_path / "synth", levels="segmentation", masks=str(tmp_path / "masks"),
                  subject_regex=r"^(\d+)_", report_images=False)
    np.testing.assert_allclose(result.synthetic.set_index("id")["segmentation_score"],
                               table["segmentation_score"].loc[["copy.npy", "other.npy"]], atol=1e-12)
    (tmp_path / "masks" / "synthetic" / "other.npy").unlink()
    with pytest.raises(InputError, match=r"other\.npy: no mask found.*masks/synthetic/other\.npy"):
        scan(tmp_path / "train", tmp_path / "synth", levels="segmentation", masks=str(tmp_path / "masks"),
             subject_regex=r"^(\d+)_", report_images=False)


def test_measures_vectors_and_options():
    level = SegmentationLevel("foreground")
    a = np.zeros((32, 32), dtype=np.float32)
    a[8:20, 8:20] = 1
    b = np.roll(a, 2, axis=1)
    two = np.zeros_like(a)
    two[2:5, 2:5], two[25:30, 25:30] = 1, 1
    scores = level.rescore(a, np.stack([a, b, np.zeros_like(a), two]))
    np.testing.assert_allclose(scores["dice"], [1.0, dice(a, b), 0.0, 0.0])
    np.testing.assert_allclose(scores["iou"], [1.0, 120 / 168, 0.0, 0.0])
    np.testing.assert_allclose(scores["component_dice"], [1.0, dice(a, b), 0.0, 0.0])
    assert scores["hd95"][0] == 0.0 and np.isnan(scores["hd95"][2])
    empty = level.rescore(np.zeros_like(a), np.stack([np.zeros_like(a), a]))
    np.testing.assert_array_equal(empty["dice"], [0.0, 0.0])  # two empty masks are not a replica
    vectors = level.vectors(np.stack([a, b, np.zeros_like(a)]))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(vectors[0] @ vectors[1], dice(a, b), atol=1e-6)  # equal sizes: cosine = Dice
    assert parse_masks("ct-bone") == ("builtin", "ct_bone") and parse_masks("vessels") == ("builtin", "bright_vessels")
    assert ct_parameters("ct_bone", (40, 400)) == {"threshold": 200.0}
    assert ct_parameters("ct_bone", (300, 1600)) == {"threshold": 300.0}
    # a brain window clips the skull at 100 HU; the skull threshold stays above blood (<= 90 HU)
    assert ct_parameters("ct_haemorrhage", (40, 120)) == {"skull": 95.0, "head": -8.0}
    assert ct_parameters("ct_haemorrhage", (40, 400))["skull"] == 200.0
    with pytest.raises(OptionError, match="masks 'no-such-thing' is neither a built-in segmenter"):
        parse_masks("no-such-thing")
    with pytest.raises(OptionError, match="masks 'nope'"):
        scan("x", "y", levels="segmentation", masks="nope")


def test_extra_candidates_are_rescored(tmp_path):
    level = SegmentationLevel("foreground")
    rng = np.random.default_rng(0)
    masks = (rng.random((12, 16, 16)) < 0.3).astype(np.float32)
    store = ArrayStore(tmp_path / "g.f32", (16, 16))
    for mask in masks:
        store.append(mask)
    vectors = level.vectors(masks)
    hidden = vectors.copy()
    hidden[7] = 0  # the exact match is invisible to the index
    gallery = Side(store, hidden, np.arange(12).astype(str))
    queries = Side(store, vectors, np.array(["q"] * 12))
    alone = nearest(level, queries, gallery, k=1, shortlist=3, depth=3, query_rows=[7])
    assert alone.rows[0, 0] != 7
    helped = nearest(level, queries, gallery, k=1, shortlist=3, depth=3, query_rows=[7], extra_candidates=[[7, -1]])
    assert helped.rows[0, 0] == 7 and helped.values["dice"][0, 0] == 1.0
    outside = nearest(level, queries, gallery, k=1, shortlist=3, depth=3, query_rows=[7], extra_candidates=[[7]],
                      gallery_rows=np.arange(6))
    assert outside.rows[0, 0] < 6
