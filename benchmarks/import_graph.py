"""The package's import graph, read from the code: files, arrows, circles, and imports hidden in functions.

    python benchmarks/import_graph.py            # sdclr/ and stages/

An arrow is an ``import`` of a project module by a project file, wherever it is written. Circles
are counted twice: between files, and between *rooms*, where a room is a sub-package folder
(``sdclr/report/``) or a top-level module (``sdclr/config.py``), the scale at which a reader sees
the layers. With no circle between rooms every arrow runs down a floor (floor = the longest chain
of arrows below a room). Imports of project modules inside a function body are listed apart,
since they are the ones a reader (and a graph drawn from the top of files) misses.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path) -> list[tuple[Path, bool]]:
    """(project file imported, whether the import sits in a function body) for each import in ``path``."""
    tree = ast.parse(path.read_text())
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            found = module_file(name)
            if found is not None and found != path:
                out.append((found, id(node) in in_function))
    return out


def room(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return "/".join(rel.parts[:2]) + ("/" if len(rel.parts) > 2 else "")


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main() -> None:
    files = sorted([*ROOT.joinpath("sdclr").rglob("*.py"), *ROOT.joinpath("stages").glob("*.py")])
    file_edges: dict[str, set[str]] = {}
    room_edges: dict[str, set[str]] = {}
    hidden = []
    for f in files:
        for target, lazy in imports(f):
            a, b = str(f.relative_to(ROOT)), str(target.relative_to(ROOT))
            file_edges.setdefault(a, set()).add(b)
            if room(f) != room(target):
                room_edges.setdefault(room(f), set()).add(room(target))
            if lazy:
                hidden.append(f"{a} -> {b}")
    rooms = {room(f) for f in files}
    print(f"files {len(files)}, arrows between files {sum(map(len, file_edges.values()))}; "
          f"rooms {len(rooms)}, arrows between rooms {sum(map(len, room_edges.values()))}")
    for kind, edges in (("files", file_edges), ("rooms", room_edges)):
        found = circles(edges)
        print(f"circles between {kind}: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    print(f"project imports inside a function body: {len(hidden)}" + "".join(f"\n  {h}" for h in sorted(set(hidden))))


if __name__ == "__main__":
    main()
