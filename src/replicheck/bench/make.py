"""``replicheck bench make``: a labelled replica benchmark built from anyone's real images.

Subjects (patients) are split into three disjoint groups: **training**, **holdout** (the real
images that calibrate thresholds) and **novel** (patients the generator never saw). The
synthetic set mixes

- **replicas**: training images passed through one perturbation family at one strength
  (:mod:`replicheck.bench.perturb`; families and strengths spread evenly);
- **similar**: another image of a training subject that is withheld from the training set
  (DeepSSIM's "Similar" class: the same patient, not a copy);
- **novel**: images of novel subjects, a share of them lightly perturbed so that perturbation
  artefacts alone do not give replicas away.

Every image is normalised to [0, 1] (as a scan does), resampled to one grid and written as
8-bit PNG (2D) or 8-bit NIfTI (3D), so that a scan reads back exactly the pixels the labels
describe. ``labels.csv`` records each synthetic image's class, source, perturbation and SSIM.
The whole benchmark is written to a temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import measures
from .._version import __version__
from ..config import INTENSITIES, Preprocessing, check_choice, check_range, parse_grid, parse_numbers
from ..embedders.ssim_map import deepssim_class
from ..files import write_csv, write_json
from ..images import discover, stream
from ..preprocess import choose_grid, prepare
from ..progress import Progress
from ..records import ImageRef, OptionError, ReplicheckError
from ..store import ArrayStore
from . import perturb as perturbations

CLASSES = ("replica", "similar", "novel")
MILD_FAMILIES = ("gaussian_noise", "rician_noise", "blur", "gamma", "intensity_scale", "bias_field", "resample", "jpeg")
# The misalignments DeepSSIM's paper evaluates on (flips, rotations up to 10 degrees): (family, strength).
MISALIGNMENTS = (("flip", 0), ("flip", 1), ("rotation", 0), ("rotation", 1), ("rotation", 2))
NOVEL_PAIR_SHORTLIST = 10  # training images (by Pearson of 32-px copies) whose SSIM picks a novel image's pair


@dataclass(frozen=True)
class MakeConfig:
    seed: int = 0
    split: tuple[float, float, float] = (0.5, 0.2, 0.3)  # shares of subjects: training, holdout, novel
    mix: tuple[float, float, float] = (0.5, 0.15, 0.35)  # shares of the synthetic set: replica, similar, novel
    synthetic: int | None = None  # size of the synthetic set; default: the training images, at most 1,000
    perturb_novel: float = 0.5  # share of novel images given a mild perturbation
    misalign_negatives: float = 0.0  # share of similar and novel images flipped or rotated by up to 10 degrees
    families: tuple[str, ...] | None = None  # perturbation families of the replicas; default: perturb.DEFAULT_FAMILIES
    grid: tuple[int, ...] | None = None
    max_side: int = 128
    intensity: str = "auto"
    ct_window: tuple[float, float] = (40.0, 400.0)
    subject_regex: str | None = None
    image_ndim: int | None = None
    num_workers: int = 2
    progress: bool = False

    def __post_init__(self):
        """Checks every option; accepts the command line's text forms ("0.5,0.2,0.3", "gamma,blur", "64x64")."""
        for name in ("split", "mix"):
            shares = getattr(self, name)
            if isinstance(shares, str):
                shares = parse_numbers(shares, name)
                object.__setattr__(self, name, shares)
            if len(shares) != 3 or min(shares) < 0 or not np.isclose(sum(shares), 1.0):
                raise OptionError(name, f"expects three non-negative shares that sum to 1, got {shares}")
        if min(self.split) <= 0:
            raise OptionError("split", f"needs a positive share of subjects for every group, got {self.split}")
        for name in ("perturb_novel", "misalign_negatives"):
            check_range(name, getattr(self, name), low=0, high=1)
        if isinstance(self.families, str):
            object.__setattr__(self, "families", tuple(f.strip() for f in self.families.split(",") if f.strip()))
        unknown = sorted(set(self.families or ()) - set(perturbations.FAMILIES))
        if unknown:
            raise OptionError("families", f"names unknown {', '.join(unknown)}; known: {', '.join(perturbations.FAMILIES)}")
        if self.synthetic is not None:
            check_range("synthetic", self.synthetic, low=1)
        object.__setattr__(self, "grid", parse_grid(self.grid))
        check_choice("intensity", self.intensity, INTENSITIES)


@dataclass
class Plan:
    """Which source image goes where: decided from headers alone, before any pixel is read."""

    training: list[ImageRef]
    holdout: list[ImageRef]
    items: list[dict]  # one per synthetic image: class, source ref, family, strength, donor ref
    subjects: dict[str, list[str]]
    notes: list[str]


def make_benchmark(source: str, out: str | Path, config: MakeConfig = MakeConfig()) -> dict:
    """Build the benchmark of ``source`` in ``out`` (which must not exist or be empty); returns bench.json."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReplicheckError(f"{out}: already exists and is not empty; choose a new folder for the benchmark")
    refs = list(discover(source, role="source", subject_regex=config.subject_regex, image_ndim=config.image_ndim).refs)
    ndims = {ref.ndim for ref in refs}
    if len(ndims) != 1:
        raise ReplicheckError(f"{source}: mixes 2D and 3D images; a benchmark needs one kind")
    _check_file_names(source, refs)
    grid = config.grid or choose_grid(refs, slices=False, max_side=config.max_side)
    plan = _plan(refs, config)
    settings = Preprocessing(grid=tuple(grid), intensity=config.intensity, ct_window=config.ct_window)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _build(plan, settings, staging, config, source)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _plan(refs: list[ImageRef], config: MakeConfig) -> Plan:
    rng = np.random.default_rng(config.seed)
    notes = []
    by_subject: dict[str, list[ImageRef]] = {}
    for ref in refs:
        by_subject.setdefault(ref.subject, []).append(ref)
    subjects = sorted(by_subject)
    if len(subjects) < 3:
        raise ReplicheckError(
            f"found {len(subjects)} subject(s); a benchmark needs at least 3 (training, holdout, novel). Give subject "
            f"ids with a manifest's subject column, --subject-regex, or DICOM PatientID")
    if len(subjects) == len(refs):
        notes.append("every subject has a single image, so the 'similar' class (same patient, other image) "
                     "cannot be made")
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    n_train, n_hold = _cut(len(order), config.split)
    groups = {"training": order[:n_train], "holdout": order[n_train:n_train + n_hold],
              "novel": order[n_train + n_hold:]}

    train_pool = [ref for s in groups["training"] for ref in by_subject[s]]
    n_synth = config.synthetic or min(len(train_pool), 1000)
    wanted = dict(zip(CLASSES, _cut_counts(n_synth, config.mix)))

    # "similar": withhold other images of training subjects (each keeps at least two thirds of its images).
    withholdable = [ref for s in groups["training"] for ref in _withholdable(by_subject[s], rng)]
    similar = [withholdable[i] for i in rng.permutation(len(withholdable))[:wanted["similar"]]]
    if len(similar) < wanted["similar"]:
        notes.append(f"only {len(similar)} 'similar' images could be withheld (wanted {wanted['similar']}): "
                     f"training subjects have too few images")
    withheld = {ref.id for ref in similar}
    training = [ref for ref in train_pool if ref.id not in withheld]

    novel_pool = [ref for s in groups["novel"] for ref in by_subject[s]]
    n_novel = wanted["novel"] + wanted["similar"] - len(similar)
    if n_novel > len(novel_pool):
        notes.append(f"only {len(novel_pool)} novel images exist (wanted {n_novel})")
        n_novel = len(novel_pool)
    novel = [novel_pool[i] for i in rng.permutation(len(novel_pool))[:n_novel]]

    items = _replicas(training, novel_pool, config.families or perturbations.DEFAULT_FAMILIES, wanted["replica"], rng)
    items += [{"class": "similar", "ref": ref, "family": "", "strength": -1, "donor": None} for ref in similar]
    for ref in novel:
        mild = rng.random() < config.perturb_novel
        family = MILD_FAMILIES[rng.integers(len(MILD_FAMILIES))] if mild else ""
        items.append({"class": "novel", "ref": ref, "family": family, "strength": 0 if mild else -1, "donor": None})
    _misalign(items, config)
    items = [items[i] for i in rng.permutation(len(items))]
    return Plan(training, [ref for s in groups["holdout"] for ref in by_subject[s]], items, groups, notes)


def _misalign(items: list[dict], config: MakeConfig) -> None:
    """Flip or rotate (up to 10 degrees) a ``misalign_negatives`` share of the similar and novel
    images, replacing any mild perturbation. Their labels still come from the un-perturbed image,
    so a similar image stays 'Similar' while its pixel SSIM collapses: the misaligned negatives
    that DeepSSIM's comparison with pixel SSIM needs. The choice uses its own random stream, so
    a benchmark made without them is unchanged; with them, the perturbations drawn after the
    first misaligned image differ from that benchmark's (one stream serves every image)."""
    if not config.misalign_negatives:
        return
    rng = np.random.default_rng([config.seed, 1])
    for item in items:
        if item["class"] != "replica" and rng.random() < config.misalign_negatives:
            item["family"], item["strength"] = MISALIGNMENTS[rng.integers(len(MISALIGNMENTS))]


def _replicas(training: list[ImageRef], donors: list[ImageRef], families: tuple[str, ...], count: int,
              rng: np.random.Generator) -> list[dict]:
    """``count`` replica plans: random training sources, family x strength levels spread evenly
    (each level floor or ceil of its share), a donor of another group for partial copies."""
    combos = [(f, s) for f in families for s in range(len(perturbations.FAMILIES[f]))]
    sources = rng.choice(len(training), count, replace=count > len(training))
    slots = [combos[i % len(combos)] for i in rng.permutation(max(count, len(combos)))[:count]] if combos else []
    items = []
    for source_row, (family, strength) in zip(sources, slots):
        donor = donors[rng.integers(len(donors))] if family == "partial_copy" else None
        items.append({"class": "replica", "ref": training[source_row], "family": family, "strength": strength,
                      "donor": donor})
    return items


def _cut(n: int, shares) -> tuple[int, int]:
    """Sizes of the first two of three groups of ``n`` subjects, each group at least one."""
    first = min(max(1, int(round(n * shares[0]))), n - 2)
    second = min(max(1, int(round(n * shares[1]))), n - first - 1)
    return first, second


def _cut_counts(n: int, shares) -> list[int]:
    counts = [int(round(n * share)) for share in shares[:2]]
    return counts + [max(0, n - sum(counts))]


def _withholdable(refs: list[ImageRef], rng: np.random.Generator) -> list[ImageRef]:
    """Up to a third of a subject's images (none when it has only one)."""
    count = len(refs) // 3
    return [refs[i] for i in rng.choice(len(refs), count, replace=False)] if count else []


def _build(plan: Plan, settings: Preprocessing, root: Path, config: MakeConfig, source: str) -> dict:
    rng = np.random.default_rng(config.seed + 1)
    ndim = len(settings.grid)
    suffix = ".png" if ndim == 2 else ".nii.gz"
    progress = Progress(config.progress)
    needed = {ref.id: ref for ref in plan.training + plan.holdout}
    for item in plan.items:
        for ref in (item["ref"], item["donor"]):
            if ref is not None:
                needed[ref.id] = ref
    store = ArrayStore(root / ".pixels.tmp", settings.grid)
    rows: dict[str, int] = {}
    files: dict[str, str] = {}
    written_as = {ref.id: "training" for ref in plan.training} | {ref.id: "holdout" for ref in plan.holdout}
    with progress.session():
        for ref, image in progress.track(stream(needed.values(), workers=config.num_workers), total=len(needed),
                                         description="reading source images"):
            array = _quantised(prepare(image, settings).arrays[0])
            rows[ref.id] = store.append(array)
            if ref.id in written_as:
                files[ref.id] = _write(root / written_as[ref.id] / f"{_safe(ref.id)}{suffix}", array)
        training_rows = np.array([rows[ref.id] for ref in plan.training])
        pairing = _Pairing(store, training_rows, plan.training)
        labels, seen = [], set()
        for number, item in enumerate(progress.track(plan.items, total=len(plan.items),
                                                     description="making synthetic images")):
            ident = f"syn{number:05d}"
            original = store.read(rows[item["ref"].id])[0]
            image, params = original, {}
            if item["family"]:
                donor = store.read(rows[item["donor"].id])[0] if item["donor"] is not None else None
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    image, params = perturbations.perturb(original, item["family"], item["strength"], rng, donor=donor)
                image = _quantised(image)
                for message in dict.fromkeys(str(w.message) for w in caught):
                    if message not in seen:
                        seen.add(message)
                        plan.notes.append(f"{message} (first on {ident})")
            path = _write(root / "synthetic" / f"{ident}{suffix}", image)
            labels.append(_label(ident, path, item, original, image, params, pairing))
    store.close()
    (root / ".pixels.tmp").unlink()
    _write_manifest(root / "training.csv", [(files[r.id], _safe(r.id), r.subject) for r in plan.training])
    _write_manifest(root / "holdout.csv", [(files[r.id], _safe(r.id), r.subject) for r in plan.holdout])
    table = pd.DataFrame(labels)
    _write_manifest(root / "synthetic.csv", [(row.file, row.id, row.id) for row in table.itertuples()])
    write_csv(table, root / "labels.csv")
    summary = {
        "replicheck_version": __version__,
        "source": str(source),
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "num_workers")},
        "grid": list(settings.grid),
        "format": "8-bit PNG" if ndim == 2 else "8-bit NIfTI",
        "counts": {"training": len(plan.training), "holdout": len(plan.holdout),
                   **Counter(table["class"]), "synthetic": len(table)},
        "subjects": {group: len(members) for group, members in plan.subjects.items()},
        "subject_lists": plan.subjects,
        "replicas_per_family": dict(Counter(table.loc[table["class"] == "replica", "family"])),
        "families": {name: [dict(level) for level in perturbations.FAMILIES[name]]  # the defaults and any chosen
                     for name in dict.fromkeys(perturbations.DEFAULT_FAMILIES + tuple(config.families or ()))},
        "notes": plan.notes,
    }
    write_json(summary, root / "bench.json")
    return summary


class _Pairing:
    """The training image a synthetic image is labelled against when it is not a replica."""

    def __init__(self, store: ArrayStore, training_rows: np.ndarray, training: list[ImageRef]):
        from ..levels.voxel import VoxelLevel

        self.store, self.rows = store, training_rows
        self.ids = [_safe(ref.id) for ref in training]
        self.position = {ident: i for i, ident in enumerate(self.ids)}
        self.by_subject: dict[str, list[int]] = {}
        for position, ref in enumerate(training):
            self.by_subject.setdefault(ref.subject, []).append(position)
        self.level = VoxelLevel()
        self.vectors = np.concatenate([self.level.vectors(batch) for _, batch in self._batches()])

    def _batches(self, size: int = 256):
        for start in range(0, len(self.rows), size):
            yield start, self.store.read(self.rows[start:start + size])

    def best(self, image: np.ndarray, subject: str | None) -> int:
        """Position of the most SSIM-similar training image: among the subject's own images for
        a 'similar' image, else among the nearest few by Pearson of downsampled copies."""
        if subject is not None and subject in self.by_subject:
            positions = np.array(self.by_subject[subject])
        else:
            scores = self.vectors @ self.level.vectors(image[None])[0]
            positions = np.argsort(-scores)[:NOVEL_PAIR_SHORTLIST]
        ssim = measures.compare(image, self.store.read(self.rows[positions]), data_range=1.0).ssim
        return int(positions[int(np.argmax(ssim))])


def _label(ident: str, path: str, item: dict, original: np.ndarray, image: np.ndarray, params: dict,
           pairing: _Pairing) -> dict:
    kind, ref = item["class"], item["ref"]
    if kind == "replica":
        pair = pairing.position[_safe(ref.id)]
        unperturbed = image if item["family"] == "partial_copy" else original
    else:
        pair = pairing.best(original, ref.subject if kind == "similar" else None)
        unperturbed = original
    training = pairing.store.read(pairing.rows[pair])[0]
    to_source = float(measures.compare(image, training[None], data_range=1.0).ssim[0])
    unperturbed_ssim = float(measures.zscored_ssim(unperturbed, training[None])[0])
    return {
        "id": ident, "file": path, "class": kind, "replica": kind == "replica",
        "source": _safe(ref.id), "source_subject": ref.subject,
        "training_pair": pairing.ids[pair],
        "family": item["family"], "strength": item["strength"],
        "params": json.dumps(params, sort_keys=True),
        "donor": _safe(item["donor"].id) if item["donor"] is not None else "",
        "ssim_to_pair": round(to_source, 6),
        "deepssim_ssim": round(unperturbed_ssim, 6),
        "deepssim_class": deepssim_class(unperturbed_ssim),
    }


def _quantised(image: np.ndarray) -> np.ndarray:
    """Pixels as the 8-bit files will hold them, so labels describe what a scan reads."""
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _write(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if image.ndim == 2:
        from PIL import Image

        Image.fromarray(pixels).save(path)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.ascontiguousarray(pixels.T), np.eye(4)), str(path))  # ours (z, y, x), NIfTI (x, y, z)
    return f"{path.parent.name}/{path.name}"


def _write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> None:
    write_csv(pd.DataFrame(rows, columns=["path", "id", "subject"]), path)


def _check_file_names(source: str, refs: list[ImageRef]) -> None:
    seen: dict[str, str] = {}
    for ref in refs:
        name = _safe(ref.id)
        if name in seen:
            raise ReplicheckError(f"{source}: image ids {seen[name]!r} and {ref.id!r} give the same file name {name!r}")
        seen[name] = ref.id


def _safe(ident: str) -> str:
    """An image id as a file name: path separators, brackets and colons become underscores."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", ident).strip("_")
