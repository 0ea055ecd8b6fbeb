"""A real scan on real DICOM images that any machine can install: the ``pydicom-data`` package.

Its lossy JPEG 2000 files (``*_J2KI``) are natural near-copies of their uncompressed originals
(``*_UNCR``): the "synthetic" set contains them, the training set the originals. Images of other patients play the held-out real images
and the novel (non-replica) synthetic images. Manifests are written into the output folder;
the package's files are only read.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .config import ScanConfig
from .records import ReplicheckError

# (synthetic file, the training original it copies)
KNOWN_COPIES = (
    ("MR2_J2KI.dcm", "MR2_UNCR.dcm"),
    ("RG1_J2KI.dcm", "RG1_UNCR.dcm"),
    ("RG3_J2KI.dcm", "RG3_UNCR.dcm"),
    ("US1_J2KI.dcm", "US1_UNCR.dcm"),
)
# vlut_04.dcm is left out: its pixels are those of mlut_18.dcm (a copy that is not a known one).
OTHER_TRAINING = ("693_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "emri_small.dcm", "liver.dcm", "mlut_18.dcm",
                  "JPEG2000_UNC.dcm")
HOLDOUT = ("gdcm-US-ALOKA-16.dcm", "OBXXXX1A.dcm", "explicit_VR-UN.dcm", "bad_sequence.dcm",
           "eCT_Supplemental.dcm", "color-px.dcm")
NOVEL_SYNTHETIC = ("JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb.dcm", "color-pl.dcm", "OT-PAL-8-face.dcm")


def data_folder() -> Path:
    """Where pydicom-data keeps its DICOM files."""
    try:
        import data_store
    except ImportError:
        raise ReplicheckError("the demo needs the pydicom-data package: pip install 'replicheck[demo]' "
                              "(or run make demo)") from None
    return Path(data_store.__file__).parent / "data"


def write_manifests(folder: Path, out: Path) -> dict[str, Path]:
    """CSV manifests for the training, synthetic and holdout sets (subject = file stem's patient)."""
    out.mkdir(parents=True, exist_ok=True)
    roles = {
        "training": [original for _, original in KNOWN_COPIES] + list(OTHER_TRAINING),
        "synthetic": [copy for copy, _ in KNOWN_COPIES] + list(NOVEL_SYNTHETIC),
        "holdout": list(HOLDOUT),
    }
    manifests = {}
    for role, names in roles.items():
        path = out / f"{role}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "id", "subject"])
            for name in names:
                source = folder / name
                if not source.is_file():
                    raise ReplicheckError(f"{source}: missing from the installed pydicom-data package")
                writer.writerow([str(source), name, name.split("_")[0].split(".")[0]])
        manifests[role] = path
    return manifests


def copy_found(table, copy: str, original: str, flag_column: str, nearest_column: str) -> bool:
    """Whether a slice of the known ``copy`` is flagged with a slice of its ``original`` as nearest."""
    rows = table[table.index.str.startswith(copy)]
    flags = rows[flag_column].astype(str).str.lower().eq("true")
    return bool((flags & rows[nearest_column].astype(str).str.startswith(original)).any())


def run_demo(out: str | Path, *, progress: bool = True, echo=print):
    """Scan the demo sets, write the results into ``out`` and print what was found."""
    from .pipeline import run_scan

    out = Path(out)
    manifests = write_manifests(data_folder(), out / "manifests")
    result = run_scan(manifests["training"], manifests["synthetic"], manifests["holdout"],
                      ScanConfig.from_options(slices=True, progress=progress), command="replicheck demo")
    result.write(out / "results")
    for warning in result.warnings:
        echo(f"warning: {warning}")
    echo(result.headline)
    echo("")
    echo("Known copies (lossy JPEG 2000 of a training image):")
    table = result.synthetic.set_index("id")
    found = 0
    for copy, original in KNOWN_COPIES:
        rows = table[table.index.str.startswith(copy)]
        hit = copy_found(table, copy, original, "voxel_flag", "voxel_nearest")
        found += hit
        best = rows.sort_values("voxel_score", ascending=False).iloc[0]
        echo(f"  {'found ' if hit else 'MISSED'} {copy:<16} -> {best['voxel_nearest']:<18} "
             f"NCC {best['voxel_score']:.4f}  p = {best['voxel_p']:.3g}")
    novel = table[table.index.str.startswith(NOVEL_SYNTHETIC)]
    echo(f"Known copies found: {found} of {len(KNOWN_COPIES)}. Images of unseen patients flagged: "
         f"{int(novel['replica'].sum())} of {len(novel)}.")
    echo(f"Results: {out / 'results'}; open {out / 'results' / 'report.html'} in a browser to see the pairs.")
    return result
