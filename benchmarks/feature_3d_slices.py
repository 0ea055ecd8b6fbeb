"""Which slices and views the feature level needs on volumes: detection against cost (issue #20).

    .venv/bin/python benchmarks/feature_3d_slices.py BENCH [--variants all16,all8,...]

BENCH is a folder written by ``replicheck bench make`` from volumes, or by
``feature_3d_speed.py``. For each variant (``[slab-]VIEWSN``: N axial slices per volume,
``--volume-slices``, taken as single evenly spaced slices or as the means of N slabs; which
DeepSSIM views: ``all`` of the bundled model's, ``rot`` its rotations only, or ``none``) it runs the feature level alone with the default
settings otherwise, and records the seconds of adaptation and embedding, the ROC AUC and the TPR at
the lowest false-positive rate the novel volumes allow (replicas against novel volumes, by cosine),
and the calibrated flag's recall per family and false positives. Results are printed as a table
and written to ``benchmarks/results/feature_3d_slices-NAME.json`` (``--name``, default BENCH's folder name).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import replicheck
from replicheck.embedders import deepssim

from common import ROOT, log

VIEWS = {"all": None, "rot": "rotations", "none": ()}  # which of the model's views a variant keeps
POOLING = {"": "slices", "slab": "slabs"}  # a variant's prefix: single slices, or means of slabs


def variant(name: str) -> tuple[str, str, int]:
    """``all16`` -> ("slices", "all", 16); ``slab-none64`` -> ("slabs", "none", 64)."""
    prefix, _, rest = name.rpartition("-")
    if prefix not in POOLING:
        raise SystemExit(f"unknown pooling {prefix!r} in {name!r}; known: {', '.join(p or '(none)' for p in POOLING)}")
    views = rest.rstrip("0123456789")
    if views not in VIEWS:
        raise SystemExit(f"unknown views {views!r} in {name!r}; known: {', '.join(VIEWS)}")
    return POOLING[prefix], views, int(rest[len(views):])


def with_pooling(pooling: str):
    """Patch DeepSSIMEmbedder.volume_slices to embed slab means or evenly spaced single slices."""
    from replicheck.embedders.common import slab_means, slice_positions

    original = deepssim.DeepSSIMEmbedder.volume_slices
    if pooling == "slabs":
        deepssim.DeepSSIMEmbedder.volume_slices = lambda self, volumes: slab_means(volumes, self.max_slices)
    else:
        deepssim.DeepSSIMEmbedder.volume_slices = (
            lambda self, volumes: volumes[:, slice_positions(volumes.shape[1], self.max_slices)])
    return lambda: setattr(deepssim.DeepSSIMEmbedder, "volume_slices", original)


def with_views(views: str):
    """Patch DeepSSIMEmbedder.from_loaded to keep only some of the checkpoint's views."""
    original = deepssim.DeepSSIMEmbedder.from_loaded.__func__

    def from_loaded(cls, model, meta, **kwargs):
        meta = json.loads(json.dumps(meta))
        embedding = meta.setdefault("embedding", {})
        if views == "rot":
            embedding["gammas"] = []
        elif views == "none":
            embedding["rotations"], embedding["gammas"] = [], []
        return original(cls, model, meta, **kwargs)

    deepssim.DeepSSIMEmbedder.from_loaded = classmethod(from_loaded)
    return lambda: setattr(deepssim.DeepSSIMEmbedder, "from_loaded", classmethod(original))


def inputs(bench: Path) -> tuple[list[Path], pd.DataFrame]:
    """Training, synthetic and holdout sources and the labels (id, class, family, strength) of a
    ``bench make`` folder, or of a folder of ``feature_3d_speed.py`` (train/, synthetic/, holdout/, truth.json)."""
    if (bench / "truth.json").exists():
        truth = json.loads((bench / "truth.json").read_text())
        labels = pd.DataFrame({"id": list(truth), "class": ["replica" if t else "novel" for t in truth.values()],
                               "family": "shift-gamma-noise", "strength": 0})
        return [bench / "train", bench / "synthetic", bench / "holdout"], labels
    return [bench / "training.csv", bench / "synthetic.csv", bench / "holdout.csv"], pd.read_csv(bench / "labels.csv")


def evaluate(bench: Path, pooling: str, views: str, slices: int) -> dict:
    sources, labels = inputs(bench)
    restore_views, restore_pooling = with_views(views), with_pooling(pooling)
    try:
        tick = time.perf_counter()
        result = replicheck.scan(*sources, levels="feature", volume_slices=slices, progress=False)
        wall = time.perf_counter() - tick
    finally:
        restore_views()
        restore_pooling()
    table = result.synthetic.merge(labels[["id", "class", "family", "strength"]], on="id")
    replica = table["class"].eq("replica")
    novel = table["class"].eq("novel")
    score = table["feature_cosine"]
    negatives = np.sort(score[novel].to_numpy())
    tpr_above_all_novel = float((score[replica] > negatives[-1]).mean())
    timings = result.summary["timings_s"]
    families = table[replica].groupby("family")["feature_flag"].mean().round(2).to_dict()
    return {"pooling": pooling, "views": views, "slices": slices, "wall_s": round(wall, 1),
            "adapt_s": timings.get("feature.prepare"), "embed_s": timings.get("feature.represent"),
            "auc": round(float(roc_auc_score(replica[replica | novel], score[replica | novel])), 4),
            "tpr_at_0_fpr": round(tpr_above_all_novel, 3), "recall": round(float(table.loc[replica, "feature_flag"].mean()), 3),
            "false_positives": int(table.loc[novel, "feature_flag"].sum()), "novel": int(novel.sum()),
            "replicas": int(replica.sum()), "recall_by_family": families}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--variants", default="all64,all32,all16,all8,rot16,none16")
    parser.add_argument("--name", help="the results file's NAME (default: BENCH's folder name)")
    options = parser.parse_args()
    out = ROOT / "benchmarks" / "results" / f"feature_3d_slices-{options.name or options.bench.name}.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    for name in options.variants.split(","):
        pooling, views, slices = variant(name)
        log(f"{options.bench}: {slices} {pooling}, views {views}")
        row = evaluate(options.bench, pooling, views, slices)
        log(json.dumps(row))
        key = (pooling, views, slices)
        rows = [r for r in rows if (r.get("pooling", "slices"), r["views"], r["slices"]) != key] + [row]
        out.write_text(json.dumps(rows, indent=1) + "\n")
    print(pd.DataFrame(rows).drop(columns="recall_by_family").to_string(index=False))


if __name__ == "__main__":
    main()
