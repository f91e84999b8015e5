"""The benchmarks use the relay as code outside it would: through its public modules and
public names. A private name of the relay's (a module, function, method, class, constant
or attribute whose name starts with an underscore) used from bench/ ties the benchmarks
to internals that change without notice; where the bench needs something, the relay has
a public name for it (``MediaSockets.read_ready``, ``FastOpusForwarder.on_datagram``,
``relay.media.fastloop``'s endpoint functions, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

import bench
import relay

RELAY = Path(relay.__file__).parent
BENCH = Path(bench.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def relay_private_names(root: Path = RELAY) -> set[str]:
    """Every private name the relay defines: modules (compiled ones too), functions,
    methods, classes, module and class constants, and the attributes its objects set on
    themselves (``self._x = ...``)."""
    names = {path.name.split(".")[0] for path in root.rglob("*") if path.is_file()}
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return {name for name in names if _private(name)}


def private_uses(bench_dir: Path, private: set[str]) -> list[str]:
    """``file:line: what`` for every private relay name a bench module imports or reads."""
    found: list[str] = []
    for path in sorted(bench_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relay"):
                module = node.module or ""
                found += [f"{where}: {module}" for part in module.split(".") if _private(part)]
                found += [f"{where}: {module}.{a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}: {a.name}"
                    for a in node.names
                    if a.name.startswith("relay") and any(map(_private, a.name.split(".")))
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{where}: .{node.attr}")
    return found


def test_the_bench_uses_no_private_name_of_the_relay() -> None:
    private = relay_private_names()
    assert {"_fastloop", "_read_ready_compiled", "_on_decrypted"} <= private  # it sees them
    assert private_uses(BENCH, private) == []
