"""report.html: what it shows, what it hides, and that a real browser renders it.

Scans run on real images (CT-ICH slices in 2D, IXI volumes in 3D) with planted copies; one
synthetic file is named like an HTML tag to prove names are shown, never run. The browser
tests open the page in headless Chromium (skipped with a reason when it is not installed) and
save screenshots to ``$REPLICHECK_SCREENSHOTS`` when that is set, for a person to look at.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import perturb, shared, split_patients, write_set
from typer.testing import CliRunner

from replicheck import calibrate, scan
from replicheck.bench.perturb import in_plane_similarity
from replicheck.cli import app
from replicheck.report import gallery, page

EVIL = "evil<img src=x onerror=alert(1)>"
PERTURBED = 6  # copies with noise, a gamma change and a small shift
COPIES = PERTURBED + 1  # and one flipped, turned, zoomed and moved


@pytest.fixture(scope="module")
def results_2d(ctich, tmp_path_factory):
    """A 2D scan: 7 planted copies (one named like an HTML tag, one misaligned) and 6 slices of unseen
    patients."""
    root = tmp_path_factory.mktemp("report2d")
    brain, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, hold_p, novel_p = split_patients(patients, seed=3, sizes=(4, 4))
    train_rows = np.flatnonzero(np.isin(patients, train_p))
    rng = np.random.default_rng(5)
    sources = rng.choice(train_rows, PERTURBED, replace=False)
    synthetic = {f"copy{i}": perturb(brain[row], rng) for i, row in enumerate(sources)}
    synthetic[EVIL] = synthetic.pop("copy0")
    unused = np.setdiff1d(train_rows, sources)
    turned = in_plane_similarity(np.flip(brain[unused[len(unused) // 2]], axis=1).astype(np.float32), degrees=8.0,
                                 zoom=1.05, shift=[2.0, -3.0])
    synthetic["turned"] = np.clip(turned, 0, 255).round().astype(np.uint8)  # the copy flipped, turned, zoomed, moved
    novel_rows = rng.choice(np.flatnonzero(np.isin(patients, novel_p[:6])), 6, replace=False)
    synthetic.update({f"novel{i}": brain[row] for i, row in enumerate(novel_rows)})
    write_set(root / "train", {f"{patients[r]}_{r}": brain[r] for r in train_rows})
    write_set(root / "hold", {f"{patients[r]}_{r}": brain[r] for r in np.flatnonzero(np.isin(patients, hold_p))})
    write_set(root / "synth", synthetic)
    labels = pd.DataFrame({"id": [f"{name}.npy" for name in synthetic], "replica": [not name.startswith("novel") for name in synthetic]})
    labels.to_csv(root / "labels.csv", index=False)
    result = scan(root / "train", root / "synth", root / "hold")
    result.write(root / "out", labels=root / "labels.csv")
    return root


@pytest.fixture(scope="module")
def results_3d(tmp_path_factory):
    """A 3D scan of IXI volumes on a small grid: 2 noisy copies with a brightened block, 2 others."""
    files = sorted(shared("ixi_t1_2mm").glob("*.nii.gz"))
    import nibabel as nib

    root = tmp_path_factory.mktemp("report3d")
    volumes = {f.name.split("-")[0]: np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in files[:14]}
    names = list(volumes)
    rng = np.random.default_rng(2)
    synthetic = {}
    for i, name in enumerate(names[:2]):
        copy = volumes[name] + rng.normal(0, 0.05 * volumes[name].std(), volumes[name].shape).astype(np.float32)
        copy[30:50, 30:50, 30:50] *= 1.5
        synthetic[f"copy{i}"] = copy
    synthetic.update({f"other{i}": volumes[name] for i, name in enumerate(names[12:14])})
    write_set(root / "train", {name: volumes[name] for name in names[:7]})
    write_set(root / "hold", {name: volumes[name] for name in names[7:12]})
    write_set(root / "synth", synthetic)
    result = scan(root / "train", root / "synth", root / "hold", image_ndim=3, grid=(48, 48, 40))
    result.write(root / "out")
    return root


def _html(folder: Path, name: str = "report.html") -> str:
    return (folder / name).read_text(encoding="utf-8")


def _cards(html: str) -> int:
    return len(re.findall(r'<article class="pair', html))


def test_scan_writes_a_report_with_every_part(results_2d):
    out = results_2d / "out"
    html = _html(out)
    synthetic = pd.read_csv(out / "synthetic.csv", dtype={"id": str})
    assert _cards(html) == len(synthetic) == 13  # the gallery holds every image of so small a run
    assert html.count('class="histogram"') == 1  # one level, one histogram
    for section in ("verdict", "levels", "gallery", "flagged", "agreement", "curves", "settings"):
        assert f'id="{section}"' in html
    assert "https://" not in html and "http://" not in html  # self-contained: nothing fetched
    flagged = page.flagged_table(page._read_results(out)[1], page._read_results(out)[0])
    assert len(flagged["rows"]) == int(synthetic["replica"].sum())


def test_gallery_shows_the_planted_copies_first(results_2d):
    pairs = gallery.Gallery.load(results_2d / "out" / "gallery.npz").pairs
    shown = pairs["synthetic"].tolist()
    assert set(shown[:COPIES]) == {f"{EVIL}.npy", "turned.npy"} | {f"copy{i}.npy" for i in range(1, COPIES - 1)}
    assert pairs["replica"].iloc[:COPIES].all()
    verdicts = pd.read_csv(results_2d / "out" / "synthetic.csv", dtype={"id": str}).set_index("id")["replica"]
    assert pairs["replica"].tolist() == verdicts.loc[shown].tolist()  # the gallery shows the scan's verdicts


def test_file_names_are_escaped_everywhere(results_2d):
    html = _html(results_2d / "out")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html  # shown in the gallery as text
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" in html  # inside the table's JSON


def test_no_images_writes_no_patient_pixels(results_2d, tmp_path):
    result = scan(results_2d / "train", results_2d / "synth", results_2d / "hold", report_images=False)
    result.write(tmp_path)
    html = _html(tmp_path)
    assert not (tmp_path / "gallery.npz").exists()
    assert "pair-image" not in html and _cards(html) == 0
    assert html.count("data:image/png") == 1  # the histogram only
    assert "--no-images" in html and EVIL.replace("<", "&lt;").replace(">", "&gt;") in html


def test_report_command_rerenders_from_the_results_folder(results_2d, tmp_path):
    out = results_2d / "out"
    runner = CliRunner()
    run = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "top3.html"), "--top", "3"])
    assert run.exit_code == 0, run.output
    assert _cards(_html(tmp_path, "top3.html")) == 3
    run = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "private.html"), "--no-images"])
    assert run.exit_code == 0 and "pair-image" not in _html(tmp_path, "private.html")
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    (bare / "gallery.npz").unlink()
    run = runner.invoke(app, ["report", str(bare)])
    assert run.exit_code == 0 and "No gallery.npz" in _html(bare)
    run = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert run.exit_code == 2 and "no summary.json" in run.output


def test_labels_must_cover_every_synthetic_image(results_2d, tmp_path):
    partial = pd.read_csv(results_2d / "labels.csv").iloc[:3]
    partial.to_csv(tmp_path / "partial.csv", index=False)
    run = CliRunner().invoke(app, ["report", str(results_2d / "out"), "--out", str(tmp_path / "r.html"),
                                   "--labels", str(tmp_path / "partial.csv")])
    assert run.exit_code == 2 and "partial.csv: no label for 10 synthetic images" in run.output


def test_3d_gallery_has_planes_through_the_anatomy_and_slices_to_move_through(results_3d):
    stored = gallery.Gallery.load(results_3d / "out" / "gallery.npz")
    assert stored.ndim == 3
    copies = stored.pairs[stored.pairs["synthetic"].str.startswith("copy")]  # ids are file names
    assert len(copies) == 2 and copies["replica"].all()
    for index in copies.index:
        centre = np.array(stored.pairs.loc[index, "centre"].split(), dtype=int)
        assert np.all(np.abs(centre - np.array([24, 24, 20])) <= 8), centre  # the head's middle, not a rim
        assert centre[0] in stored.arrays["nav_positions"][index]
        for plane in ("synthetic.y", "synthetic.x", "training.y", "training.x"):
            shown = stored.arrays[plane][index]
            assert (shown > 50).mean() > 0.3, (plane, (shown > 50).mean())  # anatomy, not an empty corner
    assert stored.arrays["synthetic.nav"].shape[1] == gallery.NAV_SLICES
    html = _html(results_3d / "out")
    assert html.count('class="slice-slider"') == _cards(html) == 4


def test_nav_slices_spread_over_the_volume_and_include_the_centre():
    for depth, centre in ((90, 37), (12, 5), (5, 4), (64, 0)):
        positions = gallery.nav_slices(depth, centre)
        assert centre in positions
        assert len(positions) == min(gallery.NAV_SLICES, depth) == len(set(positions.tolist()))
        assert positions.min() >= 0 and positions.max() <= depth - 1


def test_the_shift_only_level_reports_how_the_training_image_moved(ctich):
    """With ``--align shift`` the reported shift is, as with alignment, how far the training image
    moved to match; the gallery's transform undoes it exactly (away from the zero-filled rim)."""
    from replicheck.levels.voxel import VoxelLevel

    image = ctich["flat_brain"][100].astype(np.float32) / 255
    training = np.roll(image, (-2, 1), axis=(0, 1))  # the synthetic image is this moved by (2, -1)
    shift = VoxelLevel(max_shift=3).rescore(image, training[None])["shift"][0]
    assert shift == "2 -1"
    moved, covered = gallery.transform_of({"shift": shift}, 2).apply(training)
    np.testing.assert_allclose(moved[covered][image[covered] > 0], image[covered][image[covered] > 0], atol=1e-6)
    assert gallery.describe_transform({"shift": shift}, 2) == "moved (2.0, -1.0) voxels"
    assert gallery.describe_transform({"shift": "0 0"}, 2) == ""


def test_the_gallery_shows_a_turned_copy_moved_back_onto_its_source(results_2d):
    stored = gallery.Gallery.load(results_2d / "out" / "gallery.npz")
    pairs = stored.pairs.reset_index(drop=True)
    row = int(pairs.index[pairs["synthetic"] == "turned.npy"][0])
    assert pairs.at[row, "flip"] == "x" and abs(float(pairs.at[row, "rotation"]) - 8.0) <= 1.0
    synthetic, training = (stored.arrays[role][row].astype(float) for role in ("synthetic", "training"))
    inner = (slice(16, -16), slice(16, -16))
    assert np.corrcoef(synthetic[inner].ravel(), training[inner].ravel())[0, 1] > 0.95
    assert "training image flipped along x, turned 8." in _html(results_2d / "out")


def test_the_planes_of_a_3d_pair_go_through_the_anatomy_not_an_empty_corner():
    """An exact copy moved by a few voxels differs most at the volume's empty rim; the planes shown
    must still cross the head (issue #20)."""
    z, y, x = np.mgrid[:32, :48, :48]
    head = (((z - 18) / 10.0) ** 2 + ((y - 26) / 14.0) ** 2 + ((x - 22) / 12.0) ** 2 <= 1).astype(np.float32)
    head *= 0.6 + 0.4 * np.random.default_rng(0).random(head.shape, dtype=np.float32)
    copy = np.roll(head, (1, 2, -2), axis=(0, 1, 2))
    centre = gallery.anatomy_centre(copy, head)
    assert np.all(np.abs(np.array(centre) - (18.5, 27, 21)) <= 1.5), centre
    for axis in range(3):
        assert (np.take(copy, centre[axis], axis=axis) > 0).mean() > 0.2  # every plane shows anatomy
    assert gallery.anatomy_centre(np.zeros((8, 8, 8)), np.zeros((8, 8, 8))) == (4, 4, 4)


def test_script_json_cannot_close_its_script_element():
    text = page.script_json({"id": "</script><script>alert(1)</script>&"})
    assert "<" not in text and ">" not in text and "&" not in text
    import json

    assert json.loads(text)["id"] == "</script><script>alert(1)</script>&"


def test_agreement_counts_on_a_hand_made_table():
    table = pd.DataFrame({"voxel_flag": [True, True, False, False, True], "feature_flag": [True, False, True, False, False]})
    counts = calibrate.agreement({name: table[f"{name}_flag"].to_numpy() for name in ("voxel", "feature")})
    assert counts["pairs"] == [{"first": "voxel", "second": "feature", "both": 1, "first_only": 2, "second_only": 1,
                                "neither": 1, "jaccard": 0.25}]
    assert counts["levels"] == {"voxel": {"flagged": 3, "alone": 2}, "feature": {"flagged": 2, "alone": 1}}


# --- in a real browser ----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
                          capture_output=True, text=True, timeout=120)


def _open(report: Path, tmp_path: Path, screenshot: str) -> tuple[str, int]:
    """The page's DOM after its scripts ran and its number of pictures, checked for console
    output, script errors and pictures that failed to decode; a screenshot beside it."""
    loaded = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    console = [line for line in loaded.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no errors, warnings or logs from the page
    shot = tmp_path / screenshot
    run = _chromium(tmp_path, "--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}", report.as_uri())
    assert run.returncode == 0 and shot.stat().st_size > 50_000, run.stderr[-2000:]
    keep = os.environ.get("REPLICHECK_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / screenshot)
    dom = loaded.stdout
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-ready="1"' in root and "data-js-errors" not in root  # the page's scripts ran, without errors
    total, decoded = map(int, re.search(r'data-images="(\d+) (\d+)"', root).groups())
    assert decoded == total  # every picture decoded
    return dom, total


@needs_chromium
def test_2d_report_renders_in_chromium(results_2d, tmp_path):
    dom, pictures = _open(results_2d / "out" / "report.html", tmp_path, "report-2d.png")
    assert pictures == 13 * 3 + 2  # gallery triples, the histogram, the ROC figure
    flagged = int(pd.read_csv(results_2d / "out" / "synthetic.csv")["replica"].sum())
    body = dom.split('id="flagged-table"', 1)[1].split("</table>", 1)[0]
    assert body.count("<tr>") == 1 + flagged  # header row and one row per flagged image
    assert f"{flagged} of {flagged} flagged images" in dom
    assert not re.search(r'<img[^>]*src="x"', dom)  # the file named like a tag made no element
    assert "<td>evil&lt;img src=x onerror=alert(1)&gt;.npy</td>" in dom  # the table shows it as text


@needs_chromium
def test_3d_report_renders_in_chromium(results_3d, tmp_path):
    dom, pictures = _open(results_3d / "out" / "report.html", tmp_path, "report-3d.png")
    assert pictures == 4 * 6 + 1  # two planes of three pictures per pair, the histogram
    assert dom.count("background-position: 0px") + dom.count("background-position: 0%") + \
        len(re.findall(r"background-position: 0(?:px)? [\d.]+%", dom)) >= 12  # the sliders placed their strips
    assert len(re.findall(r'class="rowhead slice-label">z = \d+<', dom)) == 4


def test_p_values_say_their_floor_and_what_would_resolve_them(results_2d):
    out = results_2d / "out"
    summary = json.loads((out / "summary.json").read_text())
    null = pd.read_csv(out / "null.csv")
    synthetic = pd.read_csv(out / "synthetic.csv", dtype={"id": str})
    floor = summary["calibration"]["p_value_floor"]
    assert floor["value"] == pytest.approx(1 / (len(null) + 1)) and floor["n_null"] == len(null)
    assert floor["null_images_for_bonferroni"] == math.ceil(len(synthetic) / 0.05 - 1)
    at_floor = np.isclose(synthetic["voxel_p"], floor["value"])
    assert at_floor.sum() >= 1  # the planted exact copies lie beyond every null image
    html = _html(out)
    assert f"no p-value can be below 1/({len(null)} + 1)" in html
    assert html.count("(floor)</span>") == at_floor.sum()  # one score table per gallery card
    assert "combined score" in page.flagged_table(synthetic, summary)["columns"]


def test_every_output_tells_the_same_verdict(results_2d, tmp_path):
    """The replica column, the reason, the gallery's badges and level marks, and the flagged table
    agree for every image of a multi-level scan, also for images a level flags on its own."""
    synth = tmp_path / "synth"
    shutil.copytree(results_2d / "synth", synth)
    train = sorted((results_2d / "train").glob("*.npy"))
    novel = sorted(synth.glob("novel*.npy"))
    a, b = np.load(train[20]).astype(np.float32), np.load(novel[1]).astype(np.float32)
    for i, weight in enumerate(np.linspace(0.70, 0.95, 26)):  # a continuum from novel to copy: some images land
        np.save(synth / f"blend{i:02d}.npy", (weight * a + (1 - weight) * b).round().astype(np.uint8))  # in between
    result = scan(results_2d / "train", synth, results_2d / "hold", levels="voxel,feature", combine="bonferroni",
                  adapt="none")  # the bundled model as it is: quicker, and the verdicts are what is tested
    result.write(tmp_path / "out")
    synthetic = pd.read_csv(tmp_path / "out" / "synthetic.csv", dtype={"id": str}, keep_default_na=False)
    replica = synthetic["replica"].astype(bool)
    by_level = synthetic["voxel_flag"].astype(bool) | synthetic["feature_flag"].astype(bool)
    level_only = by_level & ~replica
    assert level_only.sum() >= 1 and replica.sum() >= 1  # both kinds are there to disagree
    reason = synthetic["reason"]
    assert reason[replica].str.startswith("replica: ").all()
    assert reason[level_only].str.startswith("not a replica: the combined rule bonferroni").all()
    assert reason[~by_level & ~replica].eq("").all()
    html = _html(tmp_path / "out")
    for card in re.findall(r'<article class="pair.*?</article>', html, flags=re.S):
        name = unescape(re.search(r"synthetic <b>(.*?)</b>", card).group(1))
        row = synthetic.set_index("id").loc[name]
        verdict = re.search(r'<span class="tag (replica|clear)">(.*?)</span>', card)
        assert verdict.group(2) == ("replica" if row["replica"] else "not a replica"), name
        assert card.count(">exceeded<") == int(row["voxel_flag"]) + int(row["feature_flag"]), name
        assert ("flag-level" in card) == (not row["replica"] and (row["voxel_flag"] or row["feature_flag"])), name
    table = page.flagged_table(synthetic, json.loads((tmp_path / "out" / "summary.json").read_text()))
    ids = [row[0] for row in table["rows"]]
    verdicts = [table["dictionaries"].get("2", ["replica", "not a replica"])[row[2]] if "2" in table["dictionaries"]
                else row[2] for row in table["rows"]]
    assert sorted(ids) == sorted(synthetic.loc[by_level, "id"])
    assert verdicts == ["replica" if synthetic.set_index("id").loc[i, "replica"] else "not a replica" for i in ids]
    assert f"+ {level_only.sum()} by a level only" in html


@pytest.mark.parametrize("code", ["RSP", "SAR", "IPL", "LAS"])
def test_volumes_are_turned_as_radiologists_read_them(code):
    """A marker in the patient's right, superior, anterior corner ends at index 0 of every axis:
    axial slices then show anterior up and the patient's right on the viewer's left."""
    volume = np.zeros((6, 7, 8), dtype=np.float32)
    corner = tuple(slice(0, 2) if letter in "LIP" else slice(-2, None) for letter in code)
    volume[corner] = 1.0  # right, superior, anterior: the high end of an axis that points there
    turned = gallery.radiological(volume, code)
    assert turned[:2, :2, :2].min() == 1.0 and turned.sum() == volume.sum()
    assert sorted(turned.shape) == sorted(volume.shape)
    assert gallery.radiological(volume, "") is volume and gallery.radiological_order("RRS") is None


@pytest.fixture(scope="module")
def results_nifti(tmp_path_factory):
    """IXI files scanned through manifests (no copy), so that they keep their affines."""
    root = tmp_path_factory.mktemp("nifti")
    files = sorted(shared("ixi_t1_2mm").glob("*.nii.gz"))[:12]
    for name, chosen in (("train", files[:6]), ("hold", files[6:11]), ("synth", files[:2] + files[11:])):
        pd.DataFrame({"path": [str(f) for f in chosen]}).to_csv(root / f"{name}.csv", index=False)
    result = scan(root / "train.csv", root / "synth.csv", root / "hold.csv", grid=(40, 48, 48))
    result.write(root / "out")
    return root, result


def test_a_nifti_volume_is_shown_axial_coronal_sagittal(results_nifti):
    root, result = results_nifti
    assert set(result.gallery.pairs["orientation"]) == {"radiological"}
    html = _html(root / "out")
    assert html.count(">coronal = ") == html.count(">sagittal = ") == 3 and 'data-axis="axial"' in html


@needs_chromium
def test_the_oriented_3d_report_renders_in_chromium(results_nifti, tmp_path):
    dom, pictures = _open(results_nifti[0] / "out" / "report.html", tmp_path, "report-3d-oriented.png")
    assert pictures == 3 * 6 + 1  # two planes of three pictures per pair, the histogram
    assert len(re.findall(r'class="rowhead slice-label">axial = \d+<', dom)) == 3  # the slider names its axis
