"""The aligned voxel level (the default): its cascade (moment-frame index under every flip, refinement,
alignment of the shortlist) finds what aligning every query with every training image finds, on real
CT slices: the source of every flipped, turned, zoomed and moved copy, and for slices of other
patients the same nearest score within tolerance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import split_patients, write_set

import replicheck
from replicheck import align, measures
from replicheck.bench.perturb import in_plane_similarity, perturb
from replicheck.levels import aligned

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def search_set(ctich, tmp_path_factory):
    """160 training slices of 8 patients; 24 misaligned copies and 24 slices of other patients."""
    root = tmp_path_factory.mktemp("aligned")
    rng = np.random.default_rng(4)
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, _, other_p = split_patients(patients, 4, (8, 0))
    train_rows = np.flatnonzero(np.isin(patients, train_p))[:160]
    others = rng.choice(np.flatnonzero(np.isin(patients, other_p)), 24, replace=False)
    synthetic = {f"q{i:04d}": images[i] for i in others}
    for i in rng.choice(train_rows, 24, replace=False):
        flipped = np.flip(images[i], axis=1) if rng.random() < 0.5 else images[i]
        moved = in_plane_similarity(flipped.astype(np.float32), degrees=float(rng.uniform(-10, 10)),
                                    zoom=float(rng.uniform(0.95, 1.05)), shift=list(rng.uniform(-4, 4, 2)))
        synthetic[f"c{i:04d}"] = np.clip(moved, 0, 255).round().astype(np.uint8)
    write_set(root / "train", {f"t{i:04d}": images[i] for i in train_rows})
    write_set(root / "synth", synthetic)
    return {"root": root, "synthetic": synthetic, "train_rows": train_rows,
            "gallery": images[train_rows].astype(np.float32) / 255}


def _brute_force(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Per query, the structure of its pair with every gallery image, each aligned in full."""
    scores = np.empty((len(queries), len(gallery)))
    candidates = torch.from_numpy(gallery)[None]
    for i, query in enumerate(queries):
        found = align.align(torch.from_numpy(query)[None], candidates)
        measured = measures.compare_aligned(query[None], found.warped.numpy(), found.valid.numpy(), data_range=1.0,
                                            ssim_best=0)["structure"][0]
        scores[i, found.rows[0].numpy()] = measured
    return scores


def test_cascade_finds_what_aligning_every_pair_finds(search_set):
    names = list(search_set["synthetic"])
    queries = np.stack([search_set["synthetic"][n] for n in names]).astype(np.float32) / 255
    brute = _brute_force(queries, search_set["gallery"])
    expected = np.array([f"t{search_set['train_rows'][j]:04d}.npy" for j in brute.argmax(axis=1)])
    result = replicheck.scan(search_set["root"] / "train", search_set["root"] / "synth", k=5, progress=False,
                             report_images=False, null_tail="empirical", subject_regex=None)
    table = result.synthetic.set_index("id").loc[[f"{n}.npy" for n in names]]
    found = table["voxel_nearest"].to_numpy()
    copies = np.array([n.startswith("c") for n in names])
    assert (found[copies] == np.array([f"t{n[1:]}.npy" for n in np.array(names)[copies]])).all()
    # On slices of other patients several training slices score within a few hundredths of each other
    # and the cascade (which aligns 12 of 160) may settle on another one; measured on this set: the
    # same image for 16 of 24, a median shortfall of 0.000 and one shortfall of 0.23 (a flipped,
    # zoomed neighbour slice the index ranked low). The null searches share the cascade, so the
    # threshold sees the same shortfalls.
    best = brute.max(axis=1)
    scores = table["voxel_structure"].to_numpy()
    gap = best - scores
    assert np.mean(found == expected) >= 0.75
    assert np.median(np.abs(gap)) <= 0.01
    assert np.mean(gap > 0.05) <= 0.1, f"shortfalls {np.round(np.sort(gap)[-5:], 3)}"
    assert (scores <= best + 0.02).all()  # the cascade's score is a real alignment's, never above the best
    np.testing.assert_allclose(scores[found == expected], best[found == expected], atol=0.02)


class _Rows:
    """Candidate rows held in memory, as :class:`replicheck.store.StoredRows` gives them."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows

    def read(self) -> np.ndarray:
        return self.rows


def _sources_kept(images: np.ndarray, sources: np.ndarray, copies: np.ndarray, depth: int = 12) -> int:
    """How many copies keep their source among the ``depth`` candidates the index and the
    refinement pass on to alignment."""
    level = aligned.AlignedVoxelLevel()
    vectors, (_, candidate_rows) = level.vectors(images), level.coarse(images)
    query_rows, _ = level.coarse(copies)
    kept = 0
    for copy, source, query_row in zip(copies, sources, query_rows):
        shortlist = np.argsort(-(level.query_views(copy[None])[0] @ vectors.T).max(0), kind="stable")[:aligned.SHORTLIST]
        chosen = shortlist[level.refine(copy.shape, query_row, _Rows(candidate_rows[shortlist]), depth)]
        kept += int(source in chosen)
    return kept


def test_refinement_keeps_the_source_of_re_contrasted_compound_copies(ctich, monkeypatch):
    """Compound copies at the strongest level (warp, zoom, shift, half resolution, a gamma up to 1.5,
    noise) of 40 slices among 933 slices of 30 patients: the refinement under the identity and the
    square-root curves keeps every source for alignment; under the identity alone it lost 6 (measured),
    the sources of copies whose gamma brightened the brain against the saturated skull."""
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, _, _ = split_patients(patients, 0, (30, 0))
    gallery = images[np.isin(patients, train_p)].astype(np.float32) / 255
    rng = np.random.default_rng(0)
    sources = rng.choice(len(gallery), 40, replace=False)
    copies = np.stack([perturb(gallery[i], "compound", 2, rng)[0] for i in sources]).astype(np.float32)
    assert _sources_kept(gallery, sources, copies) == 40
    monkeypatch.setattr(aligned, "REFINE_CURVES", {"identity": aligned.REFINE_CURVES["identity"]})
    assert _sources_kept(gallery, sources, copies) <= 36


def test_a_search_for_the_nearest_alone_takes_the_index_order_without_reading_views():
    """At DEPTH_NEAREST_ONLY the index's first INDEX_KEEP fill every place, so the refinement must
    neither read the candidates' views nor reorder them; deeper searches still refine."""
    level = aligned.AlignedVoxelLevel()
    images = np.random.default_rng(0).random((20, 32, 32)).astype(np.float32)
    query_rows, candidate_rows = level.coarse(images)

    class Unread:
        def __len__(self):
            return len(images)

        def read(self):
            raise AssertionError("the views were read")

    depth = level.depth(2, 1)
    assert depth <= aligned.INDEX_KEEP
    np.testing.assert_array_equal(level.refine((32, 32), query_rows[0], Unread(), depth), np.arange(depth))
    chosen = level.refine((32, 32), query_rows[0], _Rows(candidate_rows), aligned.DEPTH[2])
    assert len(chosen) == aligned.DEPTH[2] and set(range(aligned.INDEX_KEEP)) <= set(chosen)
