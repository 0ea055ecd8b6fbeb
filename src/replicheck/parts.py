"""A shard's part folder (``scan --shard I/N``) and joining the parts of a run (``merge``).

A part folder holds ``part.json`` (the run id, the shard, the settings and inputs, what each
level's vectors of each input hashed to, the shard's timings) and ``searches-<level>.npz``
(each search's hits for the shard's slice of its queries). It is written as a whole, like a
results folder (:func:`replicheck.workspace.staged_folder`), so a killed shard leaves no part
and is simply rerun.

``merge`` refuses parts of different runs (the run id hashes the version, the settings that
change results and the inputs' paths), a shard missing or given twice, and parts whose inputs
no longer hash to what the shards read (the merge reads the inputs again and compares).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._version import __version__
from .config import ScanConfig
from .files import write_json
from .records import OptionError, ReplicheckError
from .search import SEARCHES, Hits, LevelSearches
from .shards import Shard
from .workspace import check_replaceable, staged_folder

PART_FILE = "part.json"
PART_FORMAT = 1
UNSHARED = ("num_workers", "progress")  # settings that change no result: shards and merge may differ in them


def run_id(config: ScanConfig, inputs: dict[str, str]) -> str:
    """What every part of one run shares: the version, the settings that change results, the inputs."""
    options = {name: value for name, value in config.flat_options().items() if name not in UNSHARED}
    text = json.dumps({"version": __version__, "options": options, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_settings(options: dict, others: dict) -> list[str]:
    """The settings that change results and differ between two runs' recorded options."""
    return sorted(name for name in set(options) | set(others)
                  if options.get(name) != others.get(name) and name not in UNSHARED)


def side_digest(items: pd.DataFrame, vectors: np.ndarray) -> str:
    """A fingerprint of one input as a level sees it: its images' ids and subjects, and their vectors."""
    digest = hashlib.sha256()
    for column in ("id", "subject"):
        digest.update("\0".join(map(str, items[column])).encode() + b"\1")
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def write_part(out: str | Path, *, shard: Shard, config: ScanConfig, inputs: dict[str, str],
               digests: dict[str, dict[str, str]], searches: dict[str, LevelSearches], timings: dict,
               cpu: dict, command: str | None) -> Path:
    """The part folder of ``shard``, swapped in as ``out`` as a whole."""
    out = Path(out)
    check_part_folder(out)
    record = {"format": PART_FORMAT, "version": __version__, "run_id": run_id(config, inputs), "shard": str(shard),
              "options": config.flat_options(), "inputs": inputs, "digests": digests, "command": command,
              "timings_s": timings, "cpu_s": cpu, "levels": {}}
    try:
        with staged_folder(out) as folder:
            for name, level in searches.items():
                arrays = {"training_rows": level.training_rows}
                for kind in SEARCHES:
                    hits = getattr(level, kind)
                    arrays[f"{kind}.rows"] = hits.rows
                    for measure, values in hits.values.items():
                        arrays[f"{kind}.value.{measure}"] = values.astype(str) if values.dtype == object else values
                record["levels"][name] = {
                    "gallery_size": level.gallery_size, "has_holdout": level.has_holdout,
                    "train_null_is_null": level.train_null is level.null,
                    "index": {kind: getattr(level, kind).index for kind in SEARCHES}}
                np.savez(folder / f"searches-{name}.npz", **arrays)
            write_json(record, folder / PART_FILE)
    except OSError as error:
        raise ReplicheckError(f"{out}: cannot write the part ({error.strerror or error})") from None
    return out


def check_part_folder(out: Path) -> None:
    """``out`` is new, empty or an earlier part: writing it replaces the folder as a whole."""
    check_replaceable(out, lambda name: name == PART_FILE or (name.startswith("searches-") and name.endswith(".npz")),
                      what="a shard")


@dataclass(frozen=True)
class Parts:
    """The parts of one sharded run, read and checked: their settings, inputs and joined searches."""

    folders: tuple[Path, ...]
    records: tuple[dict, ...]

    @property
    def options(self) -> dict:
        return self.records[0]["options"]

    @property
    def inputs(self) -> dict[str, str]:
        return self.records[0]["inputs"]

    def check_inputs(self, level: str, digests: dict[str, str]) -> None:
        """The merge's own reading of the inputs hashes as each shard's did."""
        for folder, record in zip(self.folders, self.records):
            for role, digest in digests.items():
                if record["digests"].get(level, {}).get(role) != digest:
                    raise ReplicheckError(f"{folder}: the {role} images ({self.inputs.get(role)}) are not what this "
                                          f"shard read (level {level}): they changed since, or the shard ran "
                                          f"with other settings; rerun the shards")

    def searches(self, level: str) -> LevelSearches:
        """One level's searches, each joined from the shards' slices."""
        loaded = []
        for folder in self.folders:
            path = folder / f"searches-{level}.npz"
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    loaded.append({name: arrays[name] for name in arrays.files})
            except (OSError, ValueError) as error:
                raise ReplicheckError(f"{path}: cannot read this part's searches ({error})") from None
        meta = self.records[0]["levels"][level]
        training_rows = loaded[0]["training_rows"]
        joined = {kind: _join(loaded, kind, meta["index"][kind]) for kind in SEARCHES}
        if meta["train_null_is_null"]:
            joined["train_null"] = joined["null"]
        return LevelSearches(joined["found"], joined["null"], joined["train_null"], joined["memorized"],
                             meta["gallery_size"], meta["has_holdout"], training_rows)

    def describe(self) -> dict:
        """The parts as summary.json records them."""
        return {"run_id": self.records[0]["run_id"], "shards": len(self.records),
                "parts": [{"folder": str(folder), "shard": record["shard"], "timings_s": record["timings_s"],
                           "cpu_s": record["cpu_s"]} for folder, record in zip(self.folders, self.records)]}


def _join(loaded: list[dict], kind: str, index: dict) -> Hits:
    """One search's hits from the shards' slices, in shard order (a shard whose slice was empty
    has no per-pair details: its columns are empty of the others' type)."""
    rows = np.concatenate([arrays[f"{kind}.rows"] for arrays in loaded])
    prefix = f"{kind}.value."
    names = list(dict.fromkeys(name[len(prefix):] for arrays in loaded for name in arrays if name.startswith(prefix)))
    values = {}
    for name in names:
        like = next(arrays[prefix + name] for arrays in loaded if prefix + name in arrays)
        column = np.concatenate([arrays.get(prefix + name, np.empty((0,) + like.shape[1:], like.dtype))
                                 for arrays in loaded])
        values[name] = column.astype(object) if column.dtype.kind == "U" else column
    return Hits(rows, values, index)


def load_parts(folders: list[str | Path]) -> Parts:
    """The part folders of one run, in shard order, after checking that they belong together:
    the same format, version and run id, shards 1..N each once."""
    if not folders:
        raise OptionError("parts", "give the part folders of the shards (scan --shard I/N --out PART)")
    records = {}
    for folder in map(Path, folders):
        path = folder / PART_FILE
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReplicheckError(f"{folder}: not a part folder (no {PART_FILE}); a shard that was killed writes "
                                  f"none: rerun it") from None
        except (OSError, ValueError) as error:
            raise ReplicheckError(f"{path}: cannot read it ({error})") from None
        if record.get("format") != PART_FORMAT or record.get("version") != __version__:
            raise ReplicheckError(f"{folder}: written by replicheck {record.get('version')}, format "
                                  f"{record.get('format')}; this is {__version__}, format {PART_FORMAT}: rerun the shard")
        shard = Shard.parse(record["shard"])
        if shard.index in records:
            raise ReplicheckError(f"{folder} and {records[shard.index][0]} are both shard {shard}")
        records[shard.index] = (folder, record, shard)
    first_folder, first, first_shard = records[min(records)]
    for folder, record, shard in records.values():
        if record["run_id"] != first["run_id"]:
            changed = changed_settings(record["options"], first["options"])
            what = f"settings differ: {', '.join(changed)}" if changed else \
                f"inputs differ: {record['inputs']} against {first['inputs']}"
            raise ReplicheckError(f"{folder} belongs to another run than {first_folder} ({what})")
        if shard.count != first_shard.count:
            raise ReplicheckError(f"{folder} is shard {shard} but {first_folder} is shard {first_shard}")
    missing = sorted(set(range(1, first_shard.count + 1)) - set(records))
    if missing:
        raise ReplicheckError(f"shard(s) {', '.join(f'{i}/{first_shard.count}' for i in missing)} missing: run them "
                              f"(scan ... --shard I/{first_shard.count}) and give their part folders too")
    ordered = [records[i] for i in sorted(records)]
    return Parts(tuple(folder for folder, _, _ in ordered), tuple(record for _, record, _ in ordered))
