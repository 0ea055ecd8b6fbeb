"""``replicheck bench run``: every detector scans the benchmark and is scored against its labels.

A *detector* is a ``replicheck.scan`` configuration plus the (level, measure) columns of its
results that are read as scores. Each level given with ``--levels`` is one detector whose every
measure is a row; ``--methods`` adds variants (``ssim-search``); the brute-force baselines (pixel
SSIM, NCC and MSE of every synthetic image against every training image, no alignment, no
index) are included unless ``--no-baselines``. With several levels, a ``combined`` detector
scans them together and gives one row per verdict rule (``calibrate.RULES``). A later level
appears as new rows without any change here.

Each detector runs in a child process, so that its wall time and peak memory (``VmHWM``) are
its own. Exhaustive baselines run on a class-stratified subset of the synthetic and holdout
images when all pairs would cost more than ``brute_force_budget`` voxel comparisons; the table
says so. Each detector also scans the natural copies of ``pydicom-data`` (lossy JPEG 2000 files
of a training image) when that package is installed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Calibration, ScanConfig
from ..files import write_csv, write_json, write_text
from ..measures import HIGHER_IS_SIMILAR
from ..records import OptionError, ReplicheckError
from ..segmenters import BUILTIN
from . import metrics

BRUTE_FORCE_BUDGET = 1.5e10  # voxel comparisons (pairs x voxels per image) an exhaustive baseline may spend
MIN_HOLDOUT = 100  # holdout images an exhaustive baseline keeps at least (its threshold's null)


@dataclass(frozen=True)
class Detector:
    name: str
    scan: dict  # replicheck.scan options
    rows: tuple[tuple[str, str, str, bool], ...]  # (row label, level, measure, higher is more similar)
    exhaustive: bool = False  # every pair is scored (the index only orders them)
    description: str = ""
    primary: str = ""  # a level detector's row of the level's primary measure


def level_detector(level: str, embedder: str = "deepssim") -> Detector:
    from ..levels import make_level

    made = make_level(level, ScanConfig.from_options(embedder=embedder))
    return Detector(level, {"levels": (level,)},
                    tuple((f"{level}: {m}", level, m, higher) for m, higher in made.measures.items()),
                    description=f"replicheck scan --levels {level} (default settings); one row per measure, each "
                                f"taken over the k nearest by the level's primary measure",
                    primary=f"{level}: {made.primary}")


def combined_detector(levels: tuple[str, ...]) -> Detector:
    """One scan with every level; one row per rule that turns the levels' evidence into a verdict."""
    from ..calibrate import RULES, rule_key

    return Detector("combined", {"levels": tuple(levels)},
                    tuple((f"combined: {rule}", "combined", rule_key(rule), True) for rule in RULES),
                    description=f"replicheck scan --levels {','.join(levels)} --combine RULE; one row per rule "
                                f"(ranked by the rule's combined statistic)")


METHODS = {
    "ssim-search": Detector("ssim-search", {"voxel_measure": "ssim", "align": "shift"},
                            (("voxel, SSIM search: ssim", "voxel", "ssim", True),),
                            description="replicheck scan --align shift --voxel-measure ssim"),
    "shift": Detector("shift", {"align": "shift"},
                      tuple((f"voxel, shift only: {m}", "voxel", m, higher) for m, higher in HIGHER_IS_SIMILAR.items()),
                      description="replicheck scan --align shift (integer shifts of at most 3 voxels, no flip, rotation "
                                  "or scale)"),
}
BASELINES = tuple(
    Detector(f"pixel-{measure}", {"voxel_measure": measure, "align": "shift", "max_shift": 0, "k": 1},
             ((f"brute force: pixel {measure}", "voxel", measure, HIGHER_IS_SIMILAR[measure]),), exhaustive=True,
             description=f"pixel {measure.upper()} of every synthetic image with every training image, no alignment")
    for measure in ("ssim", "ncc", "mse")
)


@dataclass
class RunConfig:
    levels: tuple[str, ...] = ("voxel",)
    methods: tuple[str, ...] = ("shift", "ssim-search")
    quantile: float = 0.99
    brute_force_budget: float = BRUTE_FORCE_BUDGET
    natural: bool = True
    baselines: bool = True  # the brute-force pixel baselines (minutes on a large benchmark)
    embedder: str = "deepssim"  # the feature level's embedder, when --levels has feature
    masks: str = "foreground"  # the segmentation level's mask source, when --levels has segmentation
    seed: int = 0
    num_workers: int = 2
    echo: object = field(default=print, repr=False)

    def __post_init__(self):
        """Accepts the command line's comma-separated text for levels and methods ('none': no methods)."""
        if isinstance(self.levels, str):
            self.levels = tuple(part.strip() for part in self.levels.split(",") if part.strip())
        if isinstance(self.methods, str):
            text = self.methods.strip().lower()
            self.methods = () if text == "none" else tuple(m.strip() for m in self.methods.split(",") if m.strip())


def run_benchmark(bench: str | Path, out: str | Path, config: RunConfig = RunConfig()) -> dict:
    """Scan ``bench`` with every detector; write metrics.csv, metrics.json, metrics.md and roc.png to ``out``."""
    bench, out = Path(bench), Path(out)
    info = _read_bench(bench)
    labels = pd.read_csv(bench / "labels.csv", keep_default_na=False)
    unknown = sorted(set(config.methods) - set(METHODS))
    if unknown:
        raise OptionError("methods", f"names unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    detectors = ([level_detector(level, config.embedder) for level in config.levels]
                 + ([combined_detector(config.levels)] if len(config.levels) > 1 else [])
                 + [METHODS[m] for m in config.methods] + (list(BASELINES) if config.baselines else []))
    out.mkdir(parents=True, exist_ok=True)
    rows, families, curves, per_image = [], [], {}, {}
    for number, detector in enumerate(detectors, 1):
        config.echo(f"[{number}/{len(detectors)}] {detector.name}: {detector.description}")
        sets = _inputs(bench, info, labels, detector, config, out)
        options = {**detector.scan, "grid": tuple(info["grid"]), "quantile": config.quantile,
                   "num_workers": config.num_workers, "seed": config.seed, "embedder": config.embedder,
                   "masks": config.masks,
                   "dataset_tests": False}  # per-image detection only: data-set tests are benchmarked on their own
        if detector.exhaustive:
            options.update(shortlist=sets["n_training"], depth=sets["n_training"])
        run = _in_child(sets, options, out / "scans" / detector.name,
                        out / "natural" / detector.name if config.natural else None)
        table = pd.read_csv(out / "scans" / detector.name / "synthetic.csv", keep_default_na=False)
        table = table.set_index("id").loc[sets["labels"]["id"]]
        config.echo(f"    {run['wall_s']:.1f} s, peak {run['peak_rss_bytes'] / 2**30:.2f} GiB"
                    + (f"; natural copies found {run['natural']['found']}/{run['natural']['copies']}"
                       if run.get("natural") else ""))
        for label, level, measure, higher in detector.rows:
            score, flag = _scores(table, level, measure, higher)
            rows.append({"detector": label, "method": detector.name, "level": level, "measure": measure,
                         **_row(sets, run, score, flag, f"{level}:{measure}", config.quantile)})
            families += [{"detector": label, **group} for group in metrics.breakdown(sets["labels"], score, flag)]
            curves[label] = metrics.roc_points(sets["labels"], score)
            if sets["subset_note"] == "all":
                per_image[label] = (score, flag)
    results = {"bench": str(bench), "bench_summary": {k: info[k] for k in ("counts", "grid", "format", "source")},
               "config": {"levels": list(config.levels), "methods": list(config.methods), "quantile": config.quantile,
                          "brute_force_budget": config.brute_force_budget, "seed": config.seed,
                          "embedder": config.embedder, "masks": config.masks},
               "detectors": {d.name: d.description for d in detectors},
               "metrics": rows, "by_family": families,
               "comparisons": _combined_against_levels(detectors, labels, per_image, config.seed)}
    from .markdown import markdown, roc_figure

    write_csv(pd.DataFrame(rows), out / "metrics.csv")
    write_csv(pd.DataFrame(families), out / "metrics_by_family.csv")
    write_json(results, out / "metrics.json")
    write_text(markdown(results), out / "metrics.md")
    roc_figure(curves, out / "roc.png", title=f"{info['source']} ({'x'.join(map(str, info['grid']))})")
    return results


def _combined_against_levels(detectors: list[Detector], labels: pd.DataFrame, per_image: dict,
                             seed: int) -> list[dict]:
    """The default combined verdict against each level's primary measure, with paired bootstrap
    intervals (:func:`metrics.paired_difference`): is the combination at least as good as the
    best level, or only within one image of it?"""
    combined = f"combined: {Calibration().combine}"
    if combined not in per_image:
        return []
    return [{"first": combined, "second": detector.primary,
             **metrics.paired_difference(labels, per_image[combined], per_image[detector.primary], seed=seed)}
            for detector in detectors if detector.primary]


def _row(sets: dict, run: dict, score: np.ndarray, flag: np.ndarray, key: str, quantile: float) -> dict:
    """One detector row's metrics; DeepSSIM's classes only for SSIM-scaled measures."""
    natural = run.get("natural")
    ssim_like = key.split(":")[1] in ("ssim", "cosine", "ssim_estimate")
    return {
        "subset": sets["subset_note"], **metrics.detection(sets["labels"], score, flag),
        "deepssim_macro_f1": metrics.deepssim_macro_f1(sets["labels"], score) if ssim_like else math.nan,
        "nominal_fpr": 1 - quantile, "wall_s": run["wall_s"], "peak_rss_gib": run["peak_rss_bytes"] / 2**30,
        "natural_copies_found": natural["by_measure"][key] if natural else "",
        "natural_copies": natural["copies"] if natural else "",
    }


def _read_bench(bench: Path) -> dict:
    for name in ("bench.json", "labels.csv", "training.csv", "synthetic.csv", "holdout.csv"):
        if not (bench / name).is_file():
            raise ReplicheckError(f"{bench}: not a benchmark folder ({name} is missing); make one with "
                                  f"replicheck bench make")
    return json.loads((bench / "bench.json").read_text())


def _inputs(bench: Path, info: dict, labels: pd.DataFrame, detector: Detector, config: RunConfig, out: Path) -> dict:
    """The manifests a detector scans: the whole benchmark, or a stratified subset for brute force."""
    training = pd.read_csv(bench / "training.csv", keep_default_na=False)
    synthetic = pd.read_csv(bench / "synthetic.csv", keep_default_na=False)
    holdout = pd.read_csv(bench / "holdout.csv", keep_default_na=False)
    sets = {"training": str(bench / "training.csv"), "synthetic": str(bench / "synthetic.csv"),
            "holdout": str(bench / "holdout.csv"), "labels": labels.reset_index(drop=True),
            "labels_file": str(bench / "labels.csv"),
            "n_training": len(training), "subset_note": "all"}
    if not detector.exhaustive:
        return sets
    voxels = float(np.prod(info["grid"]))
    cost = (len(synthetic) + 3 * len(holdout)) * len(training) * voxels  # four searches, see pipeline.py
    share = min(1.0, config.brute_force_budget / cost)
    if share >= 1.0:
        return sets
    rng = np.random.default_rng(config.seed)
    keep = pd.concat([group.iloc[np.sort(rng.permutation(len(group))[:max(1, int(math.ceil(share * len(group))))])]
                      for _, group in labels.groupby("class", sort=True)])
    n_holdout = min(len(holdout), max(MIN_HOLDOUT, int(math.ceil(share * len(holdout)))))
    folder = out / "subsets"
    folder.mkdir(parents=True, exist_ok=True)
    absolute = {"synthetic": synthetic, "holdout": holdout.iloc[np.sort(rng.permutation(len(holdout))[:n_holdout])]}
    absolute["synthetic"] = synthetic[synthetic["id"].isin(keep["id"])]
    for role, table in absolute.items():
        table = table.assign(path=[str((bench / p).resolve()) for p in table["path"]])
        write_csv(table, folder / f"{detector.name}-{role}.csv")
        sets[role] = str(folder / f"{detector.name}-{role}.csv")
    sets["labels"] = labels[labels["id"].isin(keep["id"])].reset_index(drop=True)
    sets["subset_note"] = (f"{len(keep)} of {len(labels)} synthetic, {n_holdout} of {len(holdout)} holdout "
                           f"(all pairs would cost {cost:.2g} voxel comparisons; budget {config.brute_force_budget:.2g})")
    return sets


def _scores(table: pd.DataFrame, level: str, measure: str, higher: bool) -> tuple[np.ndarray, np.ndarray]:
    """A measure's nearest-training value, oriented so that higher = more similar, and its flag."""
    values = pd.to_numeric(table[f"{level}_{measure}"], errors="coerce").to_numpy(dtype=np.float64)
    flags = table[f"{level}_{measure}_flag"].astype(str).str.lower().eq("true").to_numpy()
    return (values if higher else -values), flags


def _in_child(sets: dict, options: dict, out: Path, natural: Path | None) -> dict:
    """One detector's scans in a fresh process: wall time and peak memory are its own; the
    natural-copies scan (when ``natural``, its working folder) beside the results, not in them."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_child, sets["training"], sets["synthetic"], sets["holdout"], options, str(out), natural,
                             sets["labels_file"])
        try:
            return future.result()
        except BrokenProcessPool:  # killed (out of memory?) rather than failed with an error
            raise ReplicheckError(f"{out.name}: the scan's process died before it finished (out of memory?); "
                                  f"try a smaller --brute-force-budget or fewer --num-workers") from None


def _child(training: str, synthetic: str, holdout: str, options: dict, out: str, natural: Path | None,
           labels_file: str) -> dict:
    from ..pipeline import run_scan

    tick = time.perf_counter()
    result = run_scan(training, synthetic, holdout, ScanConfig.from_options(**options))
    wall = time.perf_counter() - tick
    result.write(out, labels=labels_file)  # report.html with ROC and precision-recall curves
    record = {"wall_s": wall, "peak_rss_bytes": peak_rss_bytes()}
    if natural:
        record["natural"] = _natural_copies(options, natural)
    return record


def _natural_copies(options: dict, out: Path) -> dict | None:
    """How many of pydicom-data's lossy copies the detector finds, per measure (None without the package)."""
    from .. import demo
    from ..calibrate import rule_key
    from ..pipeline import run_scan

    try:
        folder = demo.data_folder()
    except ReplicheckError:
        return None
    manifests = demo.write_manifests(folder, out / "manifests")
    natural_options = {k: v for k, v in options.items() if k not in ("grid", "shortlist", "depth")}
    if natural_options.get("masks") not in BUILTIN:  # the benchmark's own masks do not cover pydicom-data
        natural_options.pop("masks", None)
    result = run_scan(manifests["training"], manifests["synthetic"], manifests["holdout"],
                      ScanConfig.from_options(slices=True, **natural_options))
    table = result.synthetic.set_index("id")
    levels = result.summary["levels"]
    first = next(iter(levels))
    columns = {f"{level}:{m}": (f"{level}_{m}_flag", f"{level}_{m}_nearest")
               for level in levels for m in levels[level]["measures"]}
    if len(levels) > 1:  # a combined verdict's match: the first level's nearest image
        columns.update({f"combined:{c}": (f"combined_{c}_flag", f"{first}_nearest")
                        for c in map(rule_key, result.summary["combined"]["rules"])})
    by_measure = {key: sum(demo.copy_found(table, copy, original, flag, nearest) for copy, original in demo.KNOWN_COPIES)
                  for key, (flag, nearest) in columns.items()}
    return {"copies": len(demo.KNOWN_COPIES), "found": by_measure[f"{first}:{levels[first]['primary_measure']}"],
            "by_measure": by_measure}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process image (``VmHWM``; reset by exec, unlike ``ru_maxrss``,
    which Linux carries over from the parent across fork/exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
