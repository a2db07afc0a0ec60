"""The longest functions and methods of the package, a measure of how readable the house is.

    python benchmarks/longest_functions.py 15 sdclr stages

Length = the lines a definition spans (``end_lineno - lineno + 1``, decorators excluded), nested
definitions listed on their own too. Used for the before/after tables in benchmarks/results/.
"""

from __future__ import annotations

import ast
import pathlib
import sys


def definitions(root: pathlib.Path):
    """(length, "file:line", qualified name) of every function under ``root``."""
    for path in sorted(root.rglob("*.py")):
        yield from _walk(ast.parse(path.read_text()), path, "")


def _walk(node, path, prefix):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child.end_lineno - child.lineno + 1, f"{path}:{child.lineno}", prefix + child.name
            yield from _walk(child, path, prefix + child.name + ".")
        elif isinstance(child, ast.ClassDef):
            yield from _walk(child, path, prefix + child.name + ".")
        else:
            yield from _walk(child, path, prefix)


def main(argv: list[str]) -> None:
    most, roots = int(argv[0]), argv[1:]
    rows = [row for root in roots for row in definitions(pathlib.Path(root))]
    for length, where, name in sorted(rows, key=lambda r: (-r[0], r[1]))[:most]:
        print(f"{length:4d}  {where:40s} {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
