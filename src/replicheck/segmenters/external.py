"""A user's own segmenter (nnU-Net, TotalSegmentator, a script) run as a command, with a mask cache.

The command is a template with ``{input}`` and ``{output}`` placeholders, for example
``"python my_seg.py {input} {output}"``. It is split into arguments with :func:`shlex.split`
before the placeholders are substituted, and run without a shell, so a file name holding
spaces, quotes, ``;`` or ``$(...)`` reaches the program as one literal argument. The command
must write a NIfTI mask at the ``{output}`` path (a file name ending in ``.nii.gz``) in
the input's voxel grid. Tools that read and write folders (``nnUNetv2_predict -i DIR -o DIR``) need a
small wrapper script that takes one file and writes one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..readers import load_npy
from ..records import InputError, ReplicheckError, one_line

_PLACEHOLDER = re.compile(r"\{(input|output)\}")
_STDERR_LINES = 10


class ExternalSegmenter:
    """Runs ``template`` once per distinct (command, image content) and caches the mask.

    The mask of ``input_path`` is stored as ``cache_dir/<sha256>.nii.gz``, the hash taken over
    the template and the input's bytes (all files of a folder input, in sorted order), so that
    a changed command or a changed image is segmented again and a renamed copy is not. The
    command writes to a temporary name in ``cache_dir`` that is renamed into place only when it
    succeeds, so an interrupted run never leaves a partial mask under the final name.
    """

    def __init__(self, template: str, cache_dir: Path, timeout: float = 3600):
        self.template = template
        self.args = _split(template)
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout

    def mask(self, input_path: Path) -> Path:
        """The path of the cached mask of ``input_path``, running the command only on a cache miss."""
        input_path = Path(input_path).resolve()
        if not input_path.exists():
            raise InputError(str(input_path), "no such file or folder to segment")
        key = _cache_key(self.template, input_path)
        final = self.cache_dir / f"{key}.nii.gz"
        if final.is_file():
            return final
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self.cache_dir.resolve() / f".{key}.partial-{os.getpid()}-{secrets.token_hex(4)}.nii.gz"
        try:
            self._run(input_path, partial)
            if not partial.is_file() or partial.stat().st_size == 0:
                raise ReplicheckError(
                    f"segmenter command exited 0 but wrote no mask file at its {{output}} path for {input_path} "
                    f"(expected a file {partial.name}; command: {self.template})"
                )
            os.replace(partial, final)
        finally:
            if partial.is_dir():  # a tool that treats {output} as a folder
                shutil.rmtree(partial, ignore_errors=True)
            elif partial.exists():
                partial.unlink()
        return final

    def _run(self, input_path: Path, output_path: Path) -> None:
        values = {"input": str(input_path), "output": str(output_path)}
        args = [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in self.args]
        try:
            done = subprocess.run(args, shell=False, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            raise ReplicheckError(f"segmenter program not found: {args[0]!r} (command: {self.template})") from None
        except PermissionError:
            raise ReplicheckError(f"segmenter program is not executable: {args[0]!r} (command: {self.template})") from None
        except subprocess.TimeoutExpired:
            raise ReplicheckError(
                f"segmenter command ran longer than {self.timeout:g} s on {input_path} and was stopped "
                f"(command: {self.template})"
            ) from None
        if done.returncode != 0:
            status = f"was killed by signal {-done.returncode}" if done.returncode < 0 else f"exited with status {done.returncode}"
            tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-_STDERR_LINES:])
            raise ReplicheckError(
                f"segmenter command {status} on {input_path} (command: {self.template})"
                + (f"; last lines of its output:\n{tail}" if tail else "; it printed nothing")
            )


def load_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean array in replicheck's (z, y, x) / (y, x) order; positive is inside.

    Reads NIfTI (``.nii``, ``.nii.gz``; transposed from nibabel's (x, y, z)), PNG (palette
    images as their indices) and NPY. Label maps with several values are read as ``> 0`` (any label is inside) without an error.
    Raises :class:`InputError` naming the file when it cannot be read.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            array = np.asarray(nib.load(str(path)).dataobj)
            while array.ndim > 2 and array.shape[-1] == 1:  # (x, y, 1) or (x, y, z, 1)
                array = array[..., 0]
            array = array.T
        elif name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image.convert("L") if image.mode not in ("1", "L", "P", "I", "I;16", "F") else image)
        elif name.endswith(".npy"):
            array = load_npy(path)
        else:
            raise InputError(str(path), "unknown mask format; expected .nii, .nii.gz, .png or .npy")
    except InputError:
        raise
    except Exception as error:  # nibabel, PIL and numpy raise many types for bad files
        raise InputError(str(path), f"cannot read mask: {one_line(error)}") from None
    if array.ndim not in (2, 3):
        raise InputError(str(path), f"mask has shape {array.shape}; expected a 2D or 3D array")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(str(path), f"mask has non-numeric type {array.dtype}")
    return np.ascontiguousarray(array > 0)


def _split(template: str) -> list[str]:
    try:
        args = shlex.split(template)
    except ValueError as error:
        raise ReplicheckError(f"cannot parse segmenter command {template!r}: {error}") from None
    if not args:
        raise ReplicheckError("segmenter command is empty; give a command with {input} and {output} placeholders")
    for name in ("input", "output"):
        if not any(f"{{{name}}}" in arg for arg in args):
            raise ReplicheckError(
                f"segmenter command {template!r} has no {{{name}}} placeholder; replicheck substitutes the image "
                "file for {input} and the mask file to write for {output}, e.g. 'python seg.py {input} {output}'"
            )
    if _PLACEHOLDER.search(args[0]):
        raise ReplicheckError(f"segmenter command {template!r} must start with a program, not a placeholder")
    return args


def _cache_key(template: str, input_path: Path) -> str:
    digest = hashlib.sha256()
    digest.update(template.encode())
    digest.update(b"\0")
    files = sorted(p for p in input_path.rglob("*") if p.is_file()) if input_path.is_dir() else [input_path]
    for file in files:
        if input_path.is_dir():
            digest.update(str(file.relative_to(input_path)).encode() + b"\0")
        try:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise InputError(str(file), f"cannot read the image to segment: {one_line(error)}") from None
    return digest.hexdigest()
