"""``scan --backend ray``: a sharded scan (:mod:`replicheck.shards`) on a Ray cluster, in two waves.

First N tasks each read, preprocess and represent one slice of every input
(:func:`replicheck.pipeline.prepare_slice`, :mod:`replicheck.prepared`) and return the slice
folder as bytes, kept in Ray's object store. Then N tasks each fetch all slices, join them and
run one shard's searches (:func:`replicheck.pipeline.run_shard`), returning the part folder as
bytes. The driver fetches the slices and parts into a scratch folder and merges them
(:func:`replicheck.pipeline.merge_into`), so every image is read once on the cluster, the nodes
need no shared place to write, and the results are those of a single run, byte for byte. The
inputs must be readable at the same paths on every node (a shared file system, as on any
cluster), and replicheck installed there (``pip install 'replicheck[ray]'``).

Ray is imported only here, and only when this backend is asked for.
"""

from __future__ import annotations

import socket
from pathlib import Path

from .config import ScanConfig
from .pipeline import ScanResult, merge_into, prepare_slice, run_shard
from .progress import Progress
from .records import ReplicheckError
from .shards import Shard
from .workspace import scratch

CONNECT_SECONDS = 5


def scan_on_ray(out: str | Path, train, synthetic, holdout, config: ScanConfig, *, shards: int | None = None,
                address: str | None = None, labels: str | Path | None = None,
                command: str | None = None) -> ScanResult:
    """A scan whose reading and searches run as ``shards`` Ray tasks each (default: one per CPU
    of the cluster) on the cluster at ``address`` (None: a Ray started on this machine), written
    into ``out``."""
    ray = _import_ray()
    inputs = [None if source is None else str(Path(source).resolve()) for source in (train, synthetic, holdout)]
    started_here = not ray.is_initialized()
    if started_here:
        _check_reachable(ray, address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ReplicheckError(f"--address {address}: cannot reach a Ray cluster there ({error})") from None
    try:
        count = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
        options = {**config.flat_options(), "progress": False}
        progress = Progress(config.progress)
        prepare = ray.remote(num_cpus=1, max_retries=2, num_returns=2)(_prepare_slice_task)
        search = ray.remote(num_cpus=1, max_retries=2)(_run_shard_task)
        made = [prepare.remote(inputs, options, index, count) for index in range(1, count + 1)]
        names = _names(ray, [name for name, _ in made], progress.step(f"ray: reading {count} slices", count))
        slices = list(zip(names, [files for _, files in made]))
        pending = {search.remote(inputs, options, index, count, slices): index for index in range(1, count + 1)}
        advance = progress.step(f"ray: {count} shards", count)
        with scratch("ray") as folder:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(done[0])
                _unpack(_result(ray, done[0], f"shard {Shard(index, count)}"), folder / f"part_{index}")
                advance()
            _fetch_slices(ray, slices, folder / "prepared")
            return merge_into(out, [folder / f"part_{index}" for index in range(1, count + 1)],
                              num_workers=config.num_workers, progress=config.progress, labels=labels,
                              command=command, prepared=folder / "prepared")
    finally:
        if started_here:
            ray.shutdown()


def _prepare_slice_task(inputs: list, options: dict, index: int, count: int) -> tuple[str, dict[str, bytes]]:
    """On a cluster node: one slice of the inputs, its folder returned as two objects: its name
    (small: the driver waits on it) and its files (file name -> bytes: only the shards fetch them)."""
    train, synthetic, holdout = inputs
    config = ScanConfig.from_options(**options)
    with scratch("slice") as folder:
        written = prepare_slice(train, synthetic, holdout, config, Shard(index, count), folder)
        return written.name, _pack(written)


def _run_shard_task(inputs: list, options: dict, index: int, count: int, slices: list[tuple]) -> dict[str, bytes]:
    """On a cluster node: the slices fetched one at a time and joined, then one shard's searches,
    its part folder returned as file name -> bytes."""
    import ray

    train, synthetic, holdout = inputs
    config = ScanConfig.from_options(**options)
    with scratch("shard") as folder:
        _fetch_slices(ray, slices, folder / "prepared")
        return _pack(run_shard(train, synthetic, holdout, config, Shard(index, count), folder / "part",
                               prepared=folder / "prepared"))


def _fetch_slices(ray, slices: list[tuple], folder: Path) -> None:
    """The slices' folders under ``folder``, fetched one at a time (so that memory holds one slice)."""
    folder.mkdir()
    for index, (name, files) in enumerate(slices, start=1):
        _unpack(_result(ray, files, f"slice {Shard(index, len(slices))}"), folder / name)


def _names(ray, references: list, advance) -> list[str]:
    """The slices' names as their tasks finish: every slice is read before any search starts, and
    the first failure is raised as ours."""
    pending, names = {reference: index for index, reference in enumerate(references)}, [None] * len(references)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(done[0])
        names[index] = _result(ray, done[0], f"slice {Shard(index + 1, len(references))}")
        advance()
    return names


def _result(ray, reference, what: str):
    """A task's output, or its error as ours (a task that a lost node killed is retried by Ray)."""
    try:
        return ray.get(reference)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if isinstance(getattr(error, "cause", None), ReplicheckError) else None
        if cause is not None:
            raise ReplicheckError(f"{what}: {cause}") from None
        raise ReplicheckError(f"{what} failed on the cluster: {str(error).splitlines()[0]}") from None
    except ray.exceptions.RayError as error:  # a lost object, a node out of memory, a crashed worker
        raise ReplicheckError(f"{what}: the cluster lost it ({type(error).__name__}: "
                              f"{(str(error).splitlines() or [''])[0]})") from None


def _pack(folder: Path) -> dict[str, bytes]:
    """A task's output folder as file name -> bytes, for the object store (:func:`_unpack` writes it back)."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _unpack(files: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / Path(name).name).write_bytes(data)


def _check_reachable(ray, address: str | None) -> None:
    """A HOST:PORT that takes no connection is refused at once (Ray itself retries for minutes).
    Ray reads a loopback host as this node's address, so that is tried too."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    hosts = [host] + ([ray.util.get_node_ip_address()] if host in ("localhost", "127.0.0.1", "::1") else [])
    problem = None
    for candidate in hosts:
        try:
            socket.create_connection((candidate, int(port)), timeout=CONNECT_SECONDS).close()
            return
        except OSError as error:
            problem = error.strerror or str(error)
    raise ReplicheckError(f"--address {address}: cannot reach a Ray cluster there ({problem}); start one with "
                          f"ray start --head, or leave --address out to run Ray on this machine")


def _import_ray():
    try:
        import ray
        import ray.util
    except ImportError:
        raise ReplicheckError("--backend ray needs Ray: pip install 'replicheck[ray]' (after torch)") from None
    return ray
