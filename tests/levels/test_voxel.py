"""The shift-only voxel level (``align="shift"``): its shortlist (index) -> refine -> exact rescoring
cascade finds the same nearest training image as brute force over all pairs, on real CT slices
(>= 99% of queries), for each measure the search can rank by (NCC, and SSIM with
``voxel_measure="ssim"``). The aligned level's equivalent is in test_aligned.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import perturb, split_patients, write_set
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

import replicheck

pytestmark = pytest.mark.slow
MAX_SHIFT = 3


@pytest.fixture(scope="module")
def search_set(ctich, tmp_path_factory):
    """400 training slices of 14 patients; 160 slices of other patients and 40 perturbed copies."""
    root = tmp_path_factory.mktemp("search")
    rng = np.random.default_rng(21)
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, _, other_p = split_patients(patients, 21, (14, 0))
    train_rows = np.flatnonzero(np.isin(patients, train_p))[:250]
    queries = rng.choice(np.flatnonzero(np.isin(patients, other_p)), 160, replace=False)
    copies = rng.choice(train_rows, 40, replace=False)
    write_set(root / "train", {f"t{i:04d}": images[i] for i in train_rows})
    synthetic = {**{f"q{i:04d}": images[i] for i in queries}, **{f"c{i:04d}": perturb(images[i], rng) for i in copies}}
    write_set(root / "synth", synthetic)
    names = list(synthetic)
    ncc, shifts = _brute_force_shifted_ncc(np.stack([synthetic[n] for n in names]), images[train_rows])
    return {"root": root, "names": names, "train_rows": train_rows, "ncc": ncc, "shifts": shifts,
            "queries": np.stack([synthetic[n] for n in names]), "gallery": images[train_rows]}


def test_ncc_top1_equals_brute_force_for_99_percent_of_queries(search_set):
    _assert_top1(search_set, "ncc", search_set["ncc"])


def test_ssim_top1_equals_brute_force_for_99_percent_of_queries(search_set):
    ssim = _brute_force_aligned_ssim(search_set["queries"], search_set["gallery"], search_set["shifts"])
    _assert_top1(search_set, "ssim", ssim)


def test_reference_ssim_matches_scikit_image(search_set):
    """The vectorised reference below is scikit-image's SSIM on the aligned crops."""
    q, g, shifts = search_set["queries"][:3], search_set["gallery"][:5], search_set["shifts"][:3, :5]
    ours = _brute_force_aligned_ssim(q, g, shifts)
    for i, j in itertools.product(range(3), range(5)):
        centre, window = _aligned_pair(q[i], g[j], shifts[i, j])
        expected = structural_similarity(centre, window, data_range=1.0)
        assert ours[i, j] == pytest.approx(expected, abs=1e-9)


def _assert_top1(search_set, measure: str, reference: np.ndarray) -> None:
    result = replicheck.scan(search_set["root"] / "train", search_set["root"] / "synth", k=5, align="shift", voxel_measure=measure,
                             progress=False)
    expected = [f"t{search_set['train_rows'][j]:04d}.npy" for j in reference.argmax(axis=1)]
    found = result.synthetic.set_index("id").loc[[f"{n}.npy" for n in search_set["names"]], "voxel_nearest"].to_numpy()
    agreement = np.mean(found == np.array(expected))
    assert agreement >= 0.99, f"{measure} top-1 agreement {agreement:.3f} over {len(found)} queries"


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64) / 255.0
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force_shifted_ncc(queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of every query's centre with every gallery image's window, maximised over all
    integer shifts (float64 matrix products in NumPy, independent of replicheck's FFT path),
    and the maximising shift (the unshifted one on ties, as replicheck prefers)."""
    s, n = MAX_SHIFT, queries.shape[1] - 2 * MAX_SHIFT
    centres = _unit_rows(queries[:, s:s + n, s:s + n])
    best = np.full((len(queries), len(gallery)), -np.inf)
    shifts = np.zeros((len(queries), len(gallery), 2), dtype=int)
    for a, b in itertools.product(range(2 * s + 1), repeat=2):
        r = centres @ _unit_rows(gallery[:, a:a + n, b:b + n]).T + (1e-6 if (a, b) == (s, s) else 0.0)
        better = r > best
        best[better], shifts[better] = r[better], (a - s, b - s)
    return best, shifts


def _aligned_pair(query: np.ndarray, candidate: np.ndarray, shift) -> tuple[np.ndarray, np.ndarray]:
    s, n = MAX_SHIFT, query.shape[0] - 2 * MAX_SHIFT
    a, b = s + shift[0], s + shift[1]
    return query[s:s + n, s:s + n] / 255.0, candidate[a:a + n, b:b + n] / 255.0


def _brute_force_aligned_ssim(queries: np.ndarray, gallery: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """SSIM of every query's centre with every gallery window at its best-NCC shift, as
    scikit-image computes it (7x7 uniform filter, sample covariance, border of 3 dropped), with
    SciPy on whole stacks. The kept window means lie inside the crop, so the per-image means are
    filtered once on the whole image and cropped; only the cross term is filtered per pair."""
    c1, c2, win, cov_norm = 0.01**2, 0.03**2, 7, 49 / 48
    s, n, h = MAX_SHIFT, queries.shape[1] - 2 * MAX_SHIFT, win // 2
    kept = n - 2 * h

    def box(v):
        return uniform_filter(v, size=(1, win, win), mode="reflect")

    def stats(images):
        x = images.astype(np.float64) / 255.0
        return x, box(x), box(x * x)

    qx, qm, qsq = stats(queries)
    gx, gm, gsq = stats(gallery)
    out = np.empty((len(queries), len(gallery)))
    for i in range(len(queries)):
        a, b = s + shifts[i, :, 0], s + shifts[i, :, 1]
        x = qx[i, s:s + n, s:s + n]
        y = np.stack([gx[j, a[j]:a[j] + n, b[j]:b[j] + n] for j in range(len(gallery))])

        def kept_window(maps, j, top, left):
            return maps[j, top + h:top + h + kept, left + h:left + h + kept]

        mx, xx = kept_window(qm, i, s, s), kept_window(qsq, i, s, s)
        my = np.stack([kept_window(gm, j, a[j], b[j]) for j in range(len(gallery))])
        yy = np.stack([kept_window(gsq, j, a[j], b[j]) for j in range(len(gallery))])
        xy = box(x[None] * y)[:, h:h + kept, h:h + kept]
        vx, vy, vxy = cov_norm * (xx - mx * mx), cov_norm * (yy - my * my), cov_norm * (xy - mx * my)
        ssim = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out[i] = ssim.mean(axis=(1, 2))
    return out
