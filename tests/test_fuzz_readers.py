"""A short fuzzing pass over the readers (issue #19): byte flips, truncations, zeroed regions and
appended garbage in small valid files of every format must give an error naming the file or a
correct image; never another exception, a crash or a hang.

The mutations, the worker process that reads each mutant under a deadline and the classification
of outcomes are those of ``benchmarks/fuzz_readers.py``, which runs the long pass (1,000 cases per
format and more; its results are in ``benchmarks/results/fuzz_readers.json``). This suite runs its
first ``CASES_PER_FORMAT`` cases of seed 0 for every format.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from replicheck import images, readers

CASES_PER_FORMAT = 80
SEED = 0
TIMEOUT_S = 30.0  # a case that takes longer is a hang (cases take milliseconds; the machine may be busy)
FORMATS = ("png8", "png16", "jpeg", "bmp", "tiff", "tiff-3d", "nii", "nii.gz", "nrrd", "mha", "npy", "npz",
           "npz-compressed", "dicom-ct", "dicom-mr")


@pytest.fixture(scope="module")
def fuzz():
    """benchmarks/fuzz_readers.py as a module (the benchmark scripts import from their own folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
        import fuzz_readers

        yield fuzz_readers
        sys.modules.pop("fuzz_readers", None)


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-seeds")


@pytest.fixture(scope="module")
def seeds(fuzz, seed_folder):
    return fuzz.write_seeds(seed_folder)


def test_every_format_has_a_valid_file_that_reads_back(fuzz, seeds, seed_folder):
    """The unmutated files load as written, so that the mutants start from a readable file."""
    assert tuple(seeds) == FORMATS
    folder = seed_folder
    for name, seed in seeds.items():
        outcome, detail, _ = fuzz.check_file(str(folder / seed.file_name), seed.shape)
        assert outcome == "loaded", f"{name}: {detail}"
        if seed.expected is not None:
            ref = images.discover(folder / seed.file_name, role="training").refs[0]
            np.testing.assert_array_equal(readers.load(ref).array, seed.expected, err_msg=name)


def test_the_harness_reports_hangs_and_crashes(fuzz, tmp_path):
    worker = fuzz.Worker(tmp_path / "worker.log")
    try:
        assert worker.ask({"op": "sleep", "seconds": 0}, timeout=30)["outcome"] == "loaded"
        assert worker.ask({"op": "sleep", "seconds": 30}, timeout=0.5).startswith("hang")
        assert not worker.alive()
    finally:
        worker.close()
    worker = fuzz.Worker(tmp_path / "worker.log")
    try:
        assert worker.ask({"op": "abort"}, timeout=30).startswith("crash")
    finally:
        worker.close()


def test_mutants_give_a_clean_error_or_a_correct_image(fuzz, seeds, tmp_path, record_property):
    cases = fuzz.run_cases(seeds, tmp_path, seed=SEED, cases_per_format=CASES_PER_FORMAT, timeout=TIMEOUT_S)
    summary = fuzz.summarise(cases)
    record_property("fuzz_cases", summary["cases"])
    record_property("fuzz_outcomes", summary["outcomes"])
    print(f"\nreader fuzzing: {summary['cases']} cases ({CASES_PER_FORMAT} per format x {len(seeds)} formats): "
          f"{summary['outcomes']}")
    assert summary["cases"] == CASES_PER_FORMAT * len(FORMATS)
    assert {name: entry["cases"] for name, entry in summary["formats"].items()} == dict.fromkeys(FORMATS, CASES_PER_FORMAT)
    failures = [f"{f['format']} case {f['case']} ({f['mutation']}): {f['failure']}" for f in summary["failures"]]
    assert not failures, f"{len(failures)} of {summary['cases']} mutants failed:\n" + "\n".join(failures)
    # the pass is not vacuous: every format both refuses some mutants and loads others
    for name, entry in summary["formats"].items():
        assert entry["error"] > 0 and entry["loaded"] > 0, (name, entry)
