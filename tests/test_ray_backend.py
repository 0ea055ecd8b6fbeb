"""scan --backend ray on a real local cluster: a head and a worker node started with `ray start`
in processes of their own (one CPU each), the shards as Ray tasks, and the results byte-identical
to a single run's."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replicheck.cli import app

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'replicheck[ray]')")
pytestmark = pytest.mark.slow

TABLES = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, each with 1 CPU, stopped at the end."""
    command = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if command is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's sockets live under its temp folder, and a Unix socket path has at most 107 bytes: pytest's
    # folders (one level deeper in each test process of pytest-xdist) are too long for it
    temp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    _ray_start(command, env, "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp),
               *common)
    try:
        _ray_start(command, env, "--address", f"127.0.0.1:{port}", *common)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([command, "stop", "--force"], env=env, capture_output=True, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)


def _ray_start(command: str, env: dict, *options: str) -> None:
    """``ray start`` with ``options``; a failure shows what Ray said."""
    done = subprocess.run([command, "start", *options], env=env, capture_output=True, text=True, timeout=180)
    if done.returncode:
        raise AssertionError(f"ray start {' '.join(options)} failed:\n{done.stdout}\n{done.stderr}")


def test_a_scan_on_a_ray_cluster_writes_the_files_of_a_single_run(shard_inputs, cluster, tmp_path):
    common = [str(shard_inputs / "train"), str(shard_inputs / "synth"), "--holdout", str(shard_inputs / "holdout"),
              "--subject-regex", r"^(p\d+)_", "--grid", "64,64", "--training-sample", "60", "--no-dataset-tests",
              "--quiet"]
    runner = CliRunner()
    local = runner.invoke(app, ["scan", *common, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_ray = runner.invoke(app, ["scan", *common, "--out", str(tmp_path / "ray"), "--backend", "ray",
                                 "--address", cluster, "--shards", "2"])
    assert on_ray.exit_code == 0, on_ray.output
    for table in TABLES:
        assert (tmp_path / "local" / table).read_bytes() == (tmp_path / "ray" / table).read_bytes(), table
    assert on_ray.output.splitlines()[0] == local.output.splitlines()[0]  # the same headline
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    # read once, in 2 slices on the cluster: the driver joined them and read no image itself
    assert summary["prepared"]["slices"] == 2 and summary["sharded"]["shards"] == 2
    assert "read_and_preprocess" not in summary["timings_s"] and "join_prepared" in summary["timings_s"]
    for part in summary["sharded"]["parts"]:
        assert "read_and_preprocess" not in part["timings_s"]


def test_an_unreachable_cluster_is_one_clear_error(shard_inputs, tmp_path):
    result = CliRunner().invoke(app, ["scan", str(shard_inputs / "train"), str(shard_inputs / "synth"), "--out",
                                      str(tmp_path / "r"), "--backend", "ray", "--address", "127.0.0.1:1",
                                      "--quiet"])
    assert result.exit_code == 2 and "cannot reach a Ray cluster" in result.output
