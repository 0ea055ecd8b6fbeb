"""What whitening and views each add to a DeepSSIM model, on a 2D ``bench make`` folder.

    .venv/bin/python benchmarks/feature_views_ablation.py BENCH MODEL.pt [--out results.json]
        [--rotations=-10,-5,5,10] [--gammas=0.6,0.8,1.25,1.6667] [--only "whitened + views"]

For the model's weights (trained on BENCH's training split; a whitening it carries is dropped), four embeddings: as the paper uses it
(flip-averaged cosine), whitened on the training images, with the default views (rotations and
gammas of ``replicheck.train.deepssim``) and with both. Each synthetic image is scored by its best training
image over all 1,101 (brute force, no index), and replicas are ranked against all negatives: TPR
at 1% FPR (``bench run``'s metric), overall and on the flip, rotation <= 10 degree and gamma
replicas that issue #4 names, and ROC AUC. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.io import imread

from replicheck.bench.metrics import ranking
from replicheck.embedders.deepssim import DeepSSIMEmbedder, DeepSSIMNet, load_checkpoint
from replicheck.embedders.views import view_max_cosine
from replicheck.embedders.fitting import whiten_network
from replicheck.train.deepssim import VIEW_GAMMAS, VIEW_ROTATIONS


def read(bench: Path, table: str) -> tuple[pd.DataFrame, np.ndarray]:
    rows = pd.read_csv(bench / table)
    column = "file" if "file" in rows else "path"
    return rows, np.stack([imread(bench / name).astype(np.float32) / 255 for name in rows[column]])


def unwhitened(path: Path) -> DeepSSIMNet:
    """The checkpoint's network without the whitening it may carry."""
    model, _ = load_checkpoint(path)
    config = {key: value for key, value in model.config.items() if key != "whitened"}
    plain = DeepSSIMNet(**config | {"widths": tuple(config["widths"])})
    plain.load_state_dict({key: value for key, value in model.state_dict().items() if not key.startswith("whiten_")})
    return plain.eval()


def best_scores(embedder: DeepSSIMEmbedder, queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Each query's largest score over the whole gallery: the cosine, or that of the best-aligned views."""
    if embedder.views == 1:
        return (embedder.embed(queries) @ embedder.embed(gallery).T).max(axis=1)
    return view_max_cosine(embedder.embed_views(queries), embedder.embed_views(gallery)).max(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rotations", help="view angles, comma-separated (default: train deepssim's)")
    parser.add_argument("--gammas", help="view gammas, comma-separated (default: train deepssim's)")
    parser.add_argument("--only", help="one embedding: plain, plain + views, whitened or whitened + views")
    args = parser.parse_args()
    rotations = VIEW_ROTATIONS if args.rotations is None else tuple(float(v) for v in args.rotations.split(","))
    gammas = VIEW_GAMMAS if args.gammas is None else tuple(float(v) for v in args.gammas.split(","))
    labels, synthetic = read(args.bench, "labels.csv")
    _, training = read(args.bench, "training.csv")
    replica = labels["replica"].to_numpy(bool)
    degrees = labels["params"].map(lambda text: json.loads(text).get("degrees", 0.0) if isinstance(text, str) else 0.0)
    named = labels["family"].isin(["flip", "gamma"]) | (labels["family"].eq("rotation") & (degrees <= 10))
    results = {}
    for whiten in (False, True):
        model = unwhitened(args.model)
        if whiten:  # fitted on the training images, as train deepssim and train calibrate do
            whiten_network(model, training)
        for views in (False, True):
            name = ("whitened" if whiten else "plain") + (" + views" if views else "")
            if args.only and name != args.only:
                continue
            embedder = DeepSSIMEmbedder(model, flip_average=True, rotations=rotations if views else (),
                                        gammas=gammas if views else ())
            started = time.perf_counter()
            score = best_scores(embedder, synthetic, training)
            negative = ~replica

            def tpr(rows: np.ndarray) -> float:
                keep = rows | negative
                return ranking(replica[keep], score[keep])["tpr_at_1pct_fpr"]

            results[name] = {
                "roc_auc": ranking(replica, score)["roc_auc"], "tpr_at_1pct_fpr": tpr(replica),
                "named_families": tpr(replica & named),
                **{family: tpr(replica & named & labels["family"].eq(family).to_numpy())
                   for family in ("flip", "rotation", "gamma")},
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(name, results[name], flush=True)
    print("\n| embedding | flip | rotation ≤ 10° | gamma | flip + rotation + gamma | all: TPR @1% FPR | all: ROC AUC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['flip']:.2f} | {r['rotation']:.2f} | {r['gamma']:.2f} | {r['named_families']:.3f} | "
              f"{r['tpr_at_1pct_fpr']:.3f} | {r['roc_auc']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
