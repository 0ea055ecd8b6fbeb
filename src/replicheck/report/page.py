"""report.html: one self-contained page rendered from a results folder.

Everything the page shows comes from the files a scan writes (summary.json, synthetic.csv,
null.csv, gallery.npz), so ``replicheck report RESULTS`` re-renders a report without the
original images. Figures and pictures are embedded as data URIs, styles and scripts inline:
the page needs no network and no other file. Text from the data (file names, ids) is escaped
by jinja2's autoescape in HTML and by :func:`script_json` inside the script block, so a file
named ``<script>…`` is shown, never run. Large runs stay small: the flagged-image table is one
compact JSON array that the page pages through, and figures do not grow with the data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import calibrate, memorization
from .._version import __version__
from ..embedders.ssim_map import DEEPSSIM_BANDS
from ..files import write_text
from ..records import ReplicheckError
from . import figures
from .gallery import GALLERY_FILE, GROUP_IMAGES_SHOWN, Gallery, choose, describe_transform

TEMPLATES = Path(__file__).resolve().parent / "templates"
REPORT_FILE = "report.html"


def render(results: str | Path, *, top: int | None = None, images: bool = True,
           labels: str | Path | None = None) -> str:
    """The HTML of the report of the scan results in folder ``results``.

    ``top``: pairs in the gallery (default: all in gallery.npz); ``images``: False leaves every
    patient pixel out; ``labels``: a CSV with ``id`` and ``replica`` columns (a benchmark's
    labels.csv) adds ROC and precision-recall curves.
    """
    import jinja2

    if top is not None and top < 0:
        raise ReplicheckError(f"--top must be >= 0, got {top}")
    results = Path(results)
    summary, synthetic, null = _read_results(results)
    levels = list(summary["levels"])
    gallery = None
    if images and (results / GALLERY_FILE).is_file():
        gallery = Gallery.load(results / GALLERY_FILE)
    context = {
        "version": __version__,
        "summary": summary,
        "headline": summary["headline"].splitlines(),
        "combined": summary["combined"],
        "n_synthetic": len(synthetic),
        "levels": [_level(name, summary, synthetic, null) for name in levels],
        "agreement": calibrate.agreement({name: synthetic[f"{name}_flag"].to_numpy(dtype=bool) for name in levels}),
        "gallery": _gallery(gallery, synthetic, summary, top) if gallery is not None else None,
        "gallery_pairs": _pairs_without_images(synthetic, summary, top) if gallery is None else None,
        "images": images,
        "flagged": script_json(flagged_table(synthetic, summary)),
        "n_flagged": int(synthetic["replica"].sum()),
        "n_level_only": int((_flagged_by_a_level(synthetic, levels) & ~synthetic["replica"].to_numpy(dtype=bool)).sum()),
        "curves": _curves(labels, synthetic, summary) if labels else None,
        "settings": _settings(summary),
        "difference_range": figures.DIFFERENCE_RANGE,
        "label_names": DETAIL_NAMES,
        "p_floor": summary["calibration"].get("p_value_floor"),  # absent in results of versions before it
        "dataset": list(summary.get("dataset", {}).values()),
        "groups": _groups(gallery, summary) if gallery is not None else [],
        "group_images_shown": GROUP_IMAGES_SHOWN,
        "dataset_alpha": memorization.ALPHA,
    }
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["pct"] = _pct
    environment.filters["num"] = _num
    return environment.get_template("report.html.j2").render(**context)


def write_report(results: str | Path, out: str | Path | None = None, **options) -> Path:
    """Render the report of ``results`` and write it atomically (default: results/report.html)."""
    results = Path(results)
    out = Path(out) if out else results / REPORT_FILE
    write_text(render(results, **options), out)
    return out


def flagged_table(synthetic: pd.DataFrame, summary: dict) -> dict:
    """The synthetic images that are replicas, then those only a level flags (its own threshold
    exceeded, not the verdict), one row each with the verdict, numbers to 5 significant digits. A
    text column that repeats (subjects, nearest images, which levels flagged) is sent once as
    ``dictionaries[column]`` and its rows hold indices into it: a page with 85,000 flagged
    images measured 12.2 MiB this way, 16.7 MiB with plain rows (BENCHMARKS-report.md)."""
    levels = list(summary["levels"])
    replica = synthetic["replica"].to_numpy(dtype=bool)
    by_level = _flagged_by_a_level(synthetic, levels)
    order = np.concatenate([np.flatnonzero(replica), np.flatnonzero(by_level & ~replica)])  # replicas first
    flagged = synthetic.iloc[order].reset_index(drop=True)
    marks = [np.where(flagged[f"{name}_flag"].to_numpy(dtype=bool), name, "") for name in levels]
    columns = {"id": flagged["id"].astype(str), "subject": flagged["subject"].astype(str),
               "verdict": pd.Series(np.where(flagged["replica"].to_numpy(dtype=bool), "replica", "not a replica"),
                                    dtype=object),
               "above its level's threshold": pd.Series([", ".join(filter(None, parts)) for parts in zip(*marks)],
                                                        dtype=object),
               "combined score": flagged["combined_score"]}
    for name in levels:
        measure = summary["levels"][name]["primary_measure"]
        columns[f"{name} {measure}"] = flagged[f"{name}_score"]
        columns[f"{name} p"] = flagged[f"{name}_p"]
        columns[f"{name} nearest"] = flagged[f"{name}_nearest"].astype(str)
        for label in summary["levels"][name].get("label_counts", {}):
            columns[f"{name} {DETAIL_NAMES.get(label, label)}"] = flagged[f"{name}_{label}"].astype(str)
    types, data, dictionaries = [], [], {}
    for position, column in enumerate(columns.values()):
        if pd.api.types.is_numeric_dtype(column):
            types.append("number")
            data.append([_compact(value) for value in column.to_numpy(dtype=float)])
            continue
        types.append("text")
        codes, values = pd.factorize(column)
        if len(values) <= len(column) // 2:
            dictionaries[str(position)] = [str(value) for value in values]
            data.append(codes.tolist())
        else:
            data.append(column.tolist())
    rows = [list(row) for row in zip(*data)]
    return {"columns": list(columns), "types": types, "rows": rows, "dictionaries": dictionaries}


def _flagged_by_a_level(synthetic: pd.DataFrame, levels: list[str]) -> np.ndarray:
    """Per synthetic image, whether any level's own threshold flags it (the verdict aside)."""
    return np.logical_or.reduce([synthetic[f"{name}_flag"].to_numpy(dtype=bool) for name in levels])


def script_json(data) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' can close it or open a tag."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _read_results(results: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    summary_path = results / "summary.json"
    if not summary_path.is_file():
        raise ReplicheckError(f"{results}: not a replicheck results folder (no summary.json)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        synthetic = pd.read_csv(results / "synthetic.csv", keep_default_na=False, na_values=[""],
                                dtype={"id": str, "subject": str})
    except (OSError, ValueError) as error:
        raise ReplicheckError(f"{results}: cannot read the scan results ({error})") from None
    for column in [c for c in synthetic.columns if c.endswith("_nearest") or c.endswith("_nearest_subject")]:
        synthetic[column] = synthetic[column].fillna("").astype(str)
    for column in ["replica"] + [c for c in synthetic.columns if c.endswith("_flag")]:
        synthetic[column] = synthetic[column].astype(str).str.lower().eq("true")
    null_path = results / "null.csv"
    null = pd.read_csv(null_path, keep_default_na=False, na_values=[""], dtype={"id": str}) if null_path.is_file() else None
    return summary, synthetic, null


def _level(name: str, summary: dict, synthetic: pd.DataFrame, null: pd.DataFrame | None) -> dict:
    level = summary["levels"][name]
    measure = level["primary_measure"]
    null_label = "holdout" if summary["calibration"]["null"] == "holdout" else "training, other subjects"
    plot = figures.histogram(synthetic[f"{name}_score"].to_numpy(float),
                             null[f"{name}_score"].to_numpy(float) if null is not None else np.array([]),
                             threshold=float(level["threshold"]), dar_threshold=_float(level.get("dar_threshold")),
                             measure=measure, level=name, null_label=null_label)
    return {"name": name, "measure": measure, "summary": level, "histogram": figures.data_uri(plot),
            "higher": level["measures"][measure]["higher_is_similar"], "null_label": null_label,
            "has_null": null is not None, "label_counts": level.get("label_counts") or {},
            "deepssim_source": "from the calibrated estimate" if "ssim_estimate" in level["measures"] else "read from the cosine",
            "deepssim_bands": "Different ≤ {:.2f} < Similar ≤ {:.2f} < Duplicate".format(*DEEPSSIM_BANDS)}


def _gallery(gallery: Gallery, synthetic: pd.DataFrame, summary: dict, top: int | None) -> list[dict]:
    count = len(gallery.pairs) if top is None else min(top, len(gallery.pairs))
    by_id = synthetic.set_index("id", drop=False)
    cards = []
    for i in range(count):
        pair = gallery.pairs.iloc[i]
        card = {"rank": i + 1, "synthetic": pair["synthetic"], "training": pair["training"], "level": pair["level"],
                "replica": bool(pair["replica"]), "transform": describe_transform(pair, gallery.ndim),
                "scores": _scores(by_id.loc[pair["synthetic"]], summary, pair["training"])}
        if gallery.ndim == 2:
            s, t = gallery.arrays["synthetic"][i], gallery.arrays["training"][i]
            card["views"] = [{"label": "", "synthetic": figures.data_uri(figures.grey_png(s)),
                              "training": figures.data_uri(figures.grey_png(t)),
                              "difference": figures.data_uri(figures.difference_png(s, t))}]
            card.update(nav=None, centre=None)
        else:
            card.update(_volume_views(gallery, i, pair))
        cards.append(card)
    return cards


def _groups(gallery: Gallery, summary: dict) -> list[dict]:
    """The near-duplicate groups whose images gallery.npz keeps, largest first per level."""
    out = []
    for (level, number), members in gallery.groups.groupby(["level", "group"], sort=False):
        found = summary.get("dataset", {}).get(level, {}).get("synthetic_clusters", {})
        sizes = found.get("sizes", [])
        out.append({"level": level, "number": int(number),
                    "size": sizes[int(number) - 1] if int(number) <= len(sizes) else len(members),
                    "images": [{"id": ident, "uri": figures.data_uri(figures.grey_png(gallery.arrays["groups"][i]))}
                               for i, ident in zip(members.index, members["synthetic"])]})
    return out


def _volume_views(gallery: Gallery, i: int, pair) -> dict:
    """Planes through the shared anatomy, and slices along the first axis to move through.

    A volume whose orientation is known (a NIfTI affine, a DICOM series) was turned for display as radiologists
    read it (:func:`replicheck.report.gallery.radiological`): the slider moves through axial
    slices and the planes are coronal and sagittal. Otherwise planes are named by array axis
    (z, y, x of the analysis grid), since which axis is axial depends on how the files were written.
    """
    arrays = gallery.arrays
    centre = [int(v) for v in str(pair["centre"]).split()]
    oriented = str(pair.get("orientation", "") or "") == "radiological"
    names = ("axial", "coronal", "sagittal") if oriented else ("z", "y", "x")
    views = []
    for axis, plane in ((1, "y"), (2, "x")):
        s, t = arrays[f"synthetic.{plane}"][i], arrays[f"training.{plane}"][i]
        views.append({"label": f"{names[axis]} = {centre[axis]}", "synthetic": figures.data_uri(figures.grey_png(s)),
                      "training": figures.data_uri(figures.grey_png(t)),
                      "difference": figures.data_uri(figures.difference_png(s, t))})
    s_nav, t_nav = arrays["synthetic.nav"][i], arrays["training.nav"][i]
    positions = arrays["nav_positions"][i].tolist()
    return {
        "views": views,
        "nav": {"synthetic": figures.data_uri(figures.strip_png(s_nav)),
                "training": figures.data_uri(figures.strip_png(t_nav)),
                "difference": figures.data_uri(figures.strip_png(s_nav, difference_of=t_nav)),
                "positions": positions, "start": positions.index(centre[0]) if centre[0] in positions else 0,
                "height": int(s_nav.shape[1]), "width": int(s_nav.shape[2]), "count": len(positions)},
        "centre": centre, "axes": names, "oriented": oriented,
    }


def _scores(row, summary: dict, shown: str) -> list[dict]:
    """Every level's verdict on one synthetic image (its own nearest, score, p, flag, details)."""
    out = []
    floor = summary["calibration"].get("p_value_floor", {}).get("value", 0.0)  # compared within the 6 digits of the CSV
    for name, level in summary["levels"].items():
        measure = level["primary_measure"]
        p = _float(row[f"{name}_p"])
        out.append({"level": name, "measure": measure, "score": _float(row[f"{name}_score"]),
                    "p": p, "at_floor": p is not None and p <= floor * (1 + 1e-5), "flag": bool(row[f"{name}_flag"]),
                    "threshold": float(level["threshold"]), "nearest": str(row[f"{name}_nearest"]),
                    "same": str(row[f"{name}_nearest"]) == shown, "details": _details(row, name, level)})
    return out


DETAIL_NAMES = {"deepssim_class": "DeepSSIM class", "ssim_estimate": "SSIM estimate"}


def _details(row, name: str, level: dict) -> str:
    """A level's verdicts on one image beyond its primary score: its labels (DeepSSIM's class)
    and DeepSSIM's calibrated SSIM estimate, e.g. ``DeepSSIM class Duplicate, SSIM estimate 0.93``."""
    parts = [f"{DETAIL_NAMES.get(label, label)} {row[f'{name}_{label}']}" for label in level.get("label_counts", {})]
    if "ssim_estimate" in level["measures"] and level["primary_measure"] != "ssim_estimate":
        parts.append(f"SSIM estimate {_num(_float(row[f'{name}_ssim_estimate']), 3)}")
    return ", ".join(parts)


def _pairs_without_images(synthetic: pd.DataFrame, summary: dict, top: int | None) -> list[dict]:
    """The gallery's pairs as ids and scores only (no pixels): --no-images, or no gallery.npz."""
    levels = {name: level["measures"][level["primary_measure"]]["higher_is_similar"]
              for name, level in summary["levels"].items()}
    count = summary["settings"]["report"]["gallery"] if top is None else top
    chosen = choose(synthetic, levels, int(count))
    by_id = synthetic.set_index("id", drop=False)
    return [{"rank": i + 1, "synthetic": pair.synthetic, "training": pair.training, "level": pair.level,
             "replica": bool(pair.replica), "scores": _scores(by_id.loc[pair.synthetic], summary, pair.training)}
            for i, pair in enumerate(chosen.itertuples())]


def _curves(labels: str | Path, synthetic: pd.DataFrame, summary: dict) -> dict:
    known = read_labels(labels, synthetic["id"])
    if known.all() or not known.any():
        raise ReplicheckError(f"{labels}: ROC curves need both replicas and non-replicas among the synthetic images")
    scores = {}
    for name, level in summary["levels"].items():
        higher = level["measures"][level["primary_measure"]]["higher_is_similar"]
        values = synthetic[f"{name}_score"].to_numpy(float)
        scores[f"{name} {level['primary_measure']}"] = values if higher else -values
    return {"figure": figures.data_uri(figures.curves(known, scores)), "replicas": int(known.sum()),
            "others": int((~known).sum()), "source": str(labels)}


def read_labels(labels: str | Path, ids: pd.Series) -> np.ndarray:
    """Known replica flags of the synthetic images ``ids`` (see :func:`load_labels`). A slice
    (``id#z012``) takes its volume's label; an image without a label is an error."""
    return match_labels(load_labels(labels), ids, labels)


def match_labels(truth: dict[str, bool], ids: pd.Series, labels: str | Path) -> np.ndarray:
    """``truth`` (:func:`load_labels` of the file ``labels``) for the synthetic images ``ids``."""
    volumes = pd.Series(ids).astype(str).str.replace(r"#z\d+$", "", regex=True)
    missing = [ident for ident in volumes if ident not in truth]
    if missing:
        raise ReplicheckError(f"{labels}: no label for {len(missing)} synthetic images, e.g. {missing[0]}")
    return np.array([truth[ident] for ident in volumes], dtype=bool)


def load_labels(labels: str | Path) -> dict[str, bool]:
    """Image name -> known replica flag, from a CSV with a ``replica`` column (true/false or 1/0)
    and the image named by ``id`` or by a ``file``/``path`` column (a benchmark's labels.csv
    names files, scan ids are file names); a file that cannot serve is an error naming it."""
    try:
        table = pd.read_csv(labels, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ReplicheckError(f"{labels}: cannot read the labels ({error})") from None
    if "replica" not in table.columns or not {"id", "file", "path"} & set(table.columns):
        raise ReplicheckError(f"{labels}: a labels file needs a 'replica' column and an 'id', 'file' or 'path' column")
    flags = table["replica"].str.strip().str.lower().isin(["true", "1", "yes"]).to_numpy()
    truth: dict[str, bool] = {}
    for column in ("path", "file", "id"):  # the most specific name wins
        if column in table.columns:
            for name, flag in zip(table[column], flags):
                truth.setdefault(name, flag)
                truth.setdefault(Path(name).name, flag)
    return truth


def _settings(summary: dict) -> dict:
    return {key: summary.get(key) for key in ("command", "settings", "preprocessing", "calibration", "versions",
                                              "inputs", "timings_s", "warnings")}


def _compact(value):
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(f"{value:.5g}")
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _float(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _pct(value) -> str:
    return "—" if value is None else f"{float(value) * 100:.1f}%"


def _num(value, digits: int = 4) -> str:
    value = _float(value)
    return "—" if value is None else f"{value:.{digits}g}"
