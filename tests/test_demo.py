"""The demo on pydicom-data finds every known copy and flags no unseen patient."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_demo_finds_every_known_copy_and_no_unseen_patient(tmp_path, pydicom_data):
    from replicheck.demo import KNOWN_COPIES, NOVEL_SYNTHETIC, run_demo

    lines = []
    result = run_demo(tmp_path, progress=False, echo=lines.append)
    table = result.synthetic.set_index("id")
    for copy, original in KNOWN_COPIES:
        assert table.loc[copy, "replica"] and table.loc[copy, "voxel_nearest"] == original
    novel = table[table.index.str.startswith(NOVEL_SYNTHETIC)]
    assert not novel["replica"].any()
    assert f"Known copies found: {len(KNOWN_COPIES)} of {len(KNOWN_COPIES)}" in "\n".join(lines)
    assert (tmp_path / "results" / "summary.json").is_file()

