"""The package's architecture: imports point one way, nothing imports in a circle, and the public
API loads without torch, faiss or numba.

Every ``import`` and ``from ... import`` of the package is read from the source, also those
inside functions (an import deferred for speed still ties two modules together). A module may
import modules of its own layer or of a lower one; within a layer the modules must not import
each other in a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "replicheck"

# Lowest first. A subpackage is one component (``levels`` covers replicheck.levels.*).
LAYERS = (
    ("_version", "records", "config", "workspace", "files", "progress", "stopwatch"),
    ("readers", "images", "pseudonyms", "preprocess", "store", "kernels", "align", "measures", "mask_measures", "index", "shards", "transforms",
     "embedders", "segmenters"),
    ("levels", "search", "calibrate", "collect", "decide", "memorization", "gate", "volumes", "assemble", "parts", "prepared"),
    ("pipeline", "report", "train", "bench", "demo", "ray_backend"),
    ("__init__",),  # the public API: replicheck.scan, ScanConfig, ScanResult
    ("cli",),
)
HEAVY = ("torch", "faiss", "numba", "ray")


def modules() -> dict[str, Path]:
    """Dotted module name (without the package) -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    here = [] if name == "__init__" else name.split(".")
    base = here if is_package else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = prefix + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "replicheck":
                module = node.module.split(".")[1:]
            else:
                continue
            targets = [module + [alias.name] for alias in node.names] + [module]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".")[1:] for alias in node.names if alias.name.split(".")[0] == "replicheck"]
        for target in targets:
            resolved = _resolve(target, known)
            if resolved is not None and resolved != name:
                found.add(resolved)
                break
    return found


def _resolve(parts: list[str], known: dict[str, Path]) -> str | None:
    """The longest known module named by ``parts`` (``from .levels import voxel`` -> levels.voxel)."""
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return "__init__" if not parts else None


def layer_of(module: str) -> int:
    component = module.split(".")[0]
    for number, layer in enumerate(LAYERS):
        if component in layer:
            return number
    raise AssertionError(f"replicheck.{module} belongs to no layer of tests/test_imports.py; add it where it fits")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_point_down_the_layers():
    wrong = [f"replicheck.{source} (layer {layer_of(source)}) imports replicheck.{target} (layer {layer_of(target)})"
             for source, targets in graph().items() for target in targets if layer_of(target) > layer_of(source)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_graph_reader_sees_imports_inside_functions():
    edges = graph()
    assert "pipeline" in edges["__init__"]  # imported inside replicheck.scan()
    assert "levels.voxel" in edges["levels"]  # imported inside a level factory
    assert "report" in edges["pipeline"]  # imported inside ScanResult.write (and at the top)


def _loaded(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = [line for line in done.stderr.splitlines() if line.startswith("loaded:")][-1]
    return [m for m in line.removeprefix("loaded:").split(",") if m]


def test_importing_the_package_loads_no_heavy_library():
    assert _loaded("import replicheck\nassert callable(replicheck.scan) and replicheck.ScanConfig") == []


@pytest.mark.parametrize("argv", [["--help"], ["scan", "--help"], ["train", "deepssim", "--help"], ["--version"]])
def test_the_command_line_help_loads_no_heavy_library(argv):
    code = (f"sys.argv = ['replicheck'] + {argv!r}\n"
            "from replicheck.cli import main\n"
            "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code")
    assert _loaded(code) == []


def test_the_result_class_comes_with_the_pipeline():
    assert "torch" in _loaded("import replicheck\nreplicheck.ScanResult")
