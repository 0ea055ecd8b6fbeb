"""A real generator, end to end (issue #22): a small diffusion model trained on CPU at three
training-set sizes, its samples scanned against its training set with a holdout.

    .venv/bin/python benchmarks/generator_memorization.py [--sizes 16,128,1024] [--steps 4000]
        [--samples 200] [--out bench-out/generator]

Data: PneumoniaMNIST's paediatric chest X-rays (28×28, CC BY 4.0; ``../shared/data``), zero-padded
to 32×32. For each size N, the first N images of a fixed shuffle of the training split are the
training set; 200 images of the validation and test splits are the holdout (the same for every N).

Model: a compact UNet (two resolutions, 32 and 64 channels, sinusoidal time embedding; torch only)
trained as a DDPM (Ho et al. 2020: 200 noise levels, their linear betas rescaled to 200 levels,
epsilon prediction, Adam 1e-3, batch 32, left-right flips) for the same number of steps at every
size, so that the small sets are seen many more times per image, as in the memorization
literature (Somepalli et al. 2023; Carlini et al. 2023); samples come from the weights' moving
average (decay 0.995) by ancestral DDPM sampling, seeded.

Each size's samples are written as PNG files and scanned with the default settings
(``replicheck scan TRAIN SAMPLES --holdout HOLDOUT``); the per-image replica rate and the data-set
statistics go to ``benchmarks/results/generator_memorization.json`` and a section of BENCHMARKS.md.
Nothing is downloaded; the generated images stay under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from common import DEFAULT_DATA, ROOT, log, put_section

T = 200
LEARNING_RATE = 1e-3
EMA = 0.995
PARAMETERS = 254_337  # of UNet(), for the text (checked in main)
RESULTS = ROOT / "benchmarks" / "results" / "generator_memorization.json"


def load_images(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Training-split images (shuffled, seed 0) and 200 holdout images, as (n, 32, 32) floats in [-1, 1]."""
    with np.load(data / "pneumoniamnist_balanced" / "pneumoniamnist.npz") as archive:
        train = archive["train_images"]
        holdout = np.concatenate([archive["val_images"], archive["test_images"]])
    train = train[np.random.default_rng(0).permutation(len(train))]
    holdout = holdout[np.random.default_rng(1).permutation(len(holdout))[:200]]
    pad = ((0, 0), (2, 2), (2, 2))
    return (np.pad(train, pad).astype(np.float32) / 127.5 - 1.0), (np.pad(holdout, pad).astype(np.float32) / 127.5 - 1.0)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1, self.norm2 = nn.GroupNorm(8, cout), nn.GroupNorm(8, cout)
        self.time = nn.Linear(tdim, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, t):
        h = F.silu(self.norm1(self.conv1(x)))
        h = h + self.time(t)[:, :, None, None]
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """32 -> 16 -> 8 px, 32/64/64 channels, one residual block per level and side."""

    def __init__(self, tdim: int = 64):
        super().__init__()
        self.tdim = tdim
        self.time = nn.Sequential(nn.Linear(tdim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(1, 32, 3, padding=1)
        self.down1, self.down2 = Block(32, 32, tdim), Block(32, 64, tdim)
        self.mid = Block(64, 64, tdim)
        self.up2, self.up1 = Block(128, 32, tdim), Block(64, 32, tdim)
        self.out = nn.Conv2d(32, 1, 3, padding=1)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        half = self.tdim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None]
        return self.time(torch.cat([angles.sin(), angles.cos()], dim=1))

    def forward(self, x, t):
        e = self.embed_time(t)
        h0 = self.down1(self.inp(x), e)                  # 32 px
        h1 = self.down2(F.avg_pool2d(h0, 2), e)          # 16 px
        h = self.mid(F.avg_pool2d(h1, 2), e)             # 8 px
        h = self.up2(torch.cat([F.interpolate(h, scale_factor=2.0), h1], dim=1), e)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0), h0], dim=1), e)
        return self.out(h)


def schedule():
    """Ho et al.'s linear betas (1e-4 to 0.02 over 1,000 levels) rescaled to :data:`T` levels, so
    that the last level is pure noise (alpha-bar 4e-5) as sampling assumes; unscaled over 200
    levels, 37% of the image survived the last level and every sample came out washed out."""
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    alphas = 1.0 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


def train(images: np.ndarray, steps: int, seed: int) -> UNet:
    """The model after ``steps`` steps of batch 32, as its exponential moving average (decay
    :data:`EMA`), which samples far sharper than the raw weights after a few thousand steps."""
    torch.manual_seed(seed)
    model = UNet()
    average = copy.deepcopy(model).requires_grad_(False)
    optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    _, _, bars = schedule()
    data = torch.from_numpy(images)[:, None]
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = data[torch.randint(0, len(data), (32,), generator=generator)]
        if torch.rand((), generator=generator) < 0.5:  # left-right flips: the only augmentation
            batch = batch.flip(-1)
        t = torch.randint(0, T, (len(batch),), generator=generator)
        noise = torch.randn(batch.shape, generator=generator)
        noisy = bars[t].sqrt()[:, None, None, None] * batch + (1 - bars[t]).sqrt()[:, None, None, None] * noise
        loss = F.mse_loss(model(noisy, t), noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            for kept, current in zip(average.parameters(), model.parameters()):
                kept.lerp_(current, 1.0 - EMA)
        if (step + 1) % 500 == 0:
            log(f"  step {step + 1}/{steps}: loss {loss.item():.4f}")
    return average.eval()


@torch.no_grad()
def sample(model: UNet, n: int, seed: int) -> np.ndarray:
    betas, alphas, bars = schedule()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, 32, 32), generator=generator)
    for t in reversed(range(T)):
        eps = model(x, torch.full((n,), t))
        mean = (x - betas[t] / (1 - bars[t]).sqrt() * eps) / alphas[t].sqrt()
        x = mean + (betas[t].sqrt() * torch.randn(x.shape, generator=generator) if t > 0 else 0.0)
    return x[:, 0].clamp(-1, 1).numpy()


def write_pngs(folder: Path, images: np.ndarray, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(np.round((image + 1.0) * 127.5).astype(np.uint8)).save(folder / f"{prefix}{i:05d}.png")


def outcome(size: int, summary: dict, seconds: dict) -> dict:
    stats = summary["dataset"]["voxel"]
    copies = summary["combined"]["n_copies"]
    c_t, dcr, auth, groups = stats["C_T"], stats["dcr_share"], stats["authenticity"], stats["synthetic_clusters"]
    return {"training_images": size, "samples": copies["total"], "replicas": copies["count"],
            "replica_rate": round(copies["rate"], 4), "replica_ci95": [round(v, 4) for v in copies["ci95"]],
            "C_T": c_t.get("C_T"), "C_T_p": c_t.get("p_value"), "C_T_reading": c_t.get("reading"),
            "dcr_share": dcr.get("share"), "dcr_p": dcr.get("p_value"),
            "closer_than_other_patients": auth["synthetic"].get("share"),
            "holdout_closer_than_other_patients": (auth.get("holdout") or {}).get("share"),
            "near_duplicate_images": groups["images_in_clusters"], "largest_group": (groups["sizes"] or [0])[0],
            "seconds": seconds}


def markdown(rows: list[dict], options) -> str:
    lines = ["## A real generator: memorization against training-set size (issue #22)", "",
             f"A DDPM (compact UNet of {PARAMETERS:,} parameters, {T} noise levels, Adam {LEARNING_RATE:g}, "
             f"samples from the weights' moving average, decay {EMA}) trained on CPU for {options.steps} steps of "
             "32 images on N PneumoniaMNIST chest X-rays (32×32), then sampled; the samples scanned with the "
             "default settings against the N training images and 200 held-out X-rays. "
             "`.venv/bin/python benchmarks/generator_memorization.py` (2 cores; see its docstring).", "",
             "| training images | samples | replicas (95% CI) | C_T (p) | closer to training than to new patients "
             "| closer than any other patient (new patients) | near-duplicate samples (largest group) | train / sample / scan s |",
             "|---:|---:|---|---|---:|---|---|---|"]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['training_images']:,} | {r['samples']} | {r['replicas']} = {r['replica_rate']:.1%} "
            f"[{r['replica_ci95'][0]:.1%}, {r['replica_ci95'][1]:.1%}] | {r['C_T']:+.2f} ({r['C_T_p']:.2g}) | "
            f"{r['dcr_share']:.1%} (p {r['dcr_p']:.2g}) | {r['closer_than_other_patients']:.1%} "
            f"({r['holdout_closer_than_other_patients']:.1%}) | {r['near_duplicate_images']} ({r['largest_group']}) | "
            f"{s['train']:.0f} / {s['sample']:.0f} / {s['scan']:.0f} |")
    ordered = sorted(rows, key=lambda r: r["training_images"])

    def trend(key: str) -> str:
        values = [r[key] for r in ordered]
        rising = all(a <= b for a, b in zip(values, values[1:]))
        falling = all(a >= b for a, b in zip(values, values[1:]))
        return "rises" if rising and not falling else "falls" if falling and not rising else "is flat" if rising else "is not monotone"

    lines += ["", f"As the training set grows, the replica rate {trend('replica_rate')}, C_T {trend('C_T')}, the share "
              f"closer to training {trend('dcr_share')}, the share closer than any other patient "
              f"{trend('closer_than_other_patients')} and the number of near-duplicate samples "
              f"{trend('near_duplicate_images')}. The smallest set is memorized: flagged samples are its X-rays, many of "
              "them flipped left-right (as the training flipped them), a few training X-rays copied again and again, and "
              "most samples fall into a few groups of near-copies. The data-set tests say so far more strongly than the "
              "per-image verdict, whose threshold is high because at 32×32 pixels other children's X-rays are nearly as "
              "alike as a noisy copy. A C_T above 0 reads \"underfitting\": a small model trained this briefly draws "
              "X-rays that lie farther from its training images than new patients do, as the paper describes."]
    smallest = ordered[0]["training_images"]
    lines += ["", f"The report of the N = {smallest} scan: its data-set section, the largest groups of near-duplicate "
              "samples and the first pairs of its gallery (each sample beside the training X-ray it copies, moved onto "
              "it as the voxel level aligned it; a screenshot of `bench-out/generator/n16/results/report.html` in "
              "headless Chromium, cropped; PneumoniaMNIST is CC BY 4.0):", "",
              f"![report of the N = {smallest} generator's samples](docs/generator-n16-report.png)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,128,1024")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "generator")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the BENCHMARKS.md section from the JSON")
    options = parser.parse_args()
    assert sum(p.numel() for p in UNet().parameters()) == PARAMETERS
    if options.markdown_only:
        put_section(ROOT / "BENCHMARKS.md", markdown(json.loads(RESULTS.read_text()), options))
        return
    torch.set_num_threads(2)
    train_all, holdout = load_images(options.data)
    write_pngs(options.out / "holdout", holdout, "holdout")
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    for size in (int(s) for s in options.sizes.split(",")):
        folder = options.out / f"n{size}"
        write_pngs(folder / "train", train_all[:size], "train")
        log(f"N = {size}: training for {options.steps} steps")
        tick = time.perf_counter()
        model = train(train_all[:size], options.steps, seed=size)
        seconds = {"train": time.perf_counter() - tick}
        tick = time.perf_counter()
        write_pngs(folder / "samples", sample(model, options.samples, seed=size), "sample")
        seconds["sample"] = time.perf_counter() - tick
        tick = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "replicheck"), "scan", str(folder / "train"), str(folder / "samples"),
                        "--holdout", str(options.out / "holdout"), "--out", str(folder / "results"), "--quiet"],
                       check=True)
        seconds["scan"] = time.perf_counter() - tick
        summary = json.loads((folder / "results" / "summary.json").read_text())
        rows = [r for r in rows if r["training_images"] != size] + [outcome(size, summary, seconds)]
        rows.sort(key=lambda r: r["training_images"])
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
        log(json.dumps(rows[-1]))
    text = markdown(rows, options)
    print(text)
    put_section(ROOT / "BENCHMARKS.md", text)


if __name__ == "__main__":
    main()
