"""The user's own segmenter as a command: the mask is written and cached, hostile file names
reach the program literally, failures and bad templates are clear errors, and mask files of
every format are read (or refused with the file named)."""

from __future__ import annotations

import ast
import shlex
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from replicheck.records import InputError, ReplicheckError
from replicheck.segmenters.external import ExternalSegmenter, load_mask

THRESHOLD_SCRIPT = """
    import sys
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    with open(Path(__file__).with_suffix(".log"), "a") as log:
        log.write(repr(sys.argv[1:]) + "\\n")
    image = nib.load(sys.argv[1])
    nib.save(nib.Nifti1Image((np.asarray(image.dataobj) > 0.5).astype(np.uint8), image.affine), sys.argv[2])
"""



def write_script(folder: Path, body: str, name: str = "seg.py") -> str:
    script = folder / name
    script.write_text(textwrap.dedent(body))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{input}} {{output}}"


def write_volume(path: Path, seed: int = 0) -> np.ndarray:
    """A random (z, y, x) volume saved as NIfTI the way replicheck reads it back (transposed)."""
    volume = np.random.default_rng(seed).random((4, 5, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume.T, np.eye(4)), path)
    return volume


def runs(folder: Path, name: str = "seg.log") -> list[str]:
    log = folder / name
    return log.read_text().splitlines() if log.exists() else []


def test_external_segmenter_writes_and_caches_the_mask(tmp_path):
    template = write_script(tmp_path, THRESHOLD_SCRIPT)
    volume = write_volume(tmp_path / "scan.nii.gz")
    segmenter = ExternalSegmenter(template, tmp_path / "cache")
    mask_path = segmenter.mask(tmp_path / "scan.nii.gz")
    assert mask_path.parent == tmp_path / "cache" and mask_path.name.endswith(".nii.gz")
    assert np.array_equal(load_mask(mask_path), volume > 0.5)
    assert segmenter.mask(str(tmp_path / "scan.nii.gz")) == mask_path
    assert len(runs(tmp_path)) == 1  # the second call was served from the cache
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [mask_path.name]  # no partial files left

    write_volume(tmp_path / "scan.nii.gz", seed=1)  # same name, new content: segmented again
    assert segmenter.mask(tmp_path / "scan.nii.gz") != mask_path and len(runs(tmp_path)) == 2
    other = ExternalSegmenter(template + " ", tmp_path / "cache")  # another command: segmented again
    other.mask(tmp_path / "scan.nii.gz")
    assert len(runs(tmp_path)) == 3


def test_external_segmenter_passes_hostile_file_names_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    template = write_script(tmp_path, THRESHOLD_SCRIPT)
    nasty = tmp_path / "scan one; $(touch pwned) `touch pwned2` 'q\".nii.gz"
    volume = write_volume(nasty)
    mask = load_mask(ExternalSegmenter(template, tmp_path / "cache").mask(nasty))
    assert np.array_equal(mask, volume > 0.5)
    (argv,) = runs(tmp_path)
    assert ast.literal_eval(argv)[0] == str(nasty)  # one argument, unchanged
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_external_segmenter_reports_a_failing_command(tmp_path):
    failing = write_script(tmp_path, """
        import sys
        print("loading model", file=sys.stderr)
        print("model weights missing: /models/brain.pt", file=sys.stderr)
        sys.exit(3)
    """)
    write_volume(tmp_path / "scan.nii.gz")
    segmenter = ExternalSegmenter(failing, tmp_path / "cache")
    with pytest.raises(ReplicheckError, match=r"(?s)status 3.*model weights missing") as error:
        segmenter.mask(tmp_path / "scan.nii.gz")
    assert "scan.nii.gz" in str(error.value)
    assert list((tmp_path / "cache").iterdir()) == []

    silent = write_script(tmp_path, "import sys\n", name="silent.py")
    with pytest.raises(ReplicheckError, match="wrote no mask"):
        ExternalSegmenter(silent, tmp_path / "cache").mask(tmp_path / "scan.nii.gz")
    with pytest.raises(ReplicheckError, match="no-such-segmenter-program"):
        ExternalSegmenter("no-such-segmenter-program {input} {output}", tmp_path / "cache").mask(tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="missing.nii.gz"):
        ExternalSegmenter(silent, tmp_path / "cache").mask(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("template, problem", [
    ("python seg.py {input}", "no {output} placeholder"),
    ("python seg.py out.nii.gz {output}", "no {input} placeholder"),
    ("python seg.py '{input} {output}", "cannot parse"),
    ("", "empty"),
])
def test_external_segmenter_rejects_bad_templates(tmp_path, template, problem):
    with pytest.raises(ReplicheckError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        ExternalSegmenter(template, tmp_path)


def test_load_mask_formats_and_errors(tmp_path):
    labels = np.zeros((5, 6), dtype=np.uint8)
    labels[1:3, 1:4] = 1
    labels[3, 2] = 3  # a label map with three values: read as > 0
    np.save(tmp_path / "m.npy", labels)
    from PIL import Image

    Image.fromarray(labels * 80).save(tmp_path / "m.png")
    nib.save(nib.Nifti1Image(labels.T, np.eye(4)), tmp_path / "m.nii.gz")
    for name in ("m.npy", "m.png", "m.nii.gz"):
        mask = load_mask(tmp_path / name)
        assert mask.dtype == bool and np.array_equal(mask, labels > 0), name
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match="bad.nii.gz"):
        load_mask(tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match="unknown mask format"):
        load_mask(tmp_path / "m.txt")

