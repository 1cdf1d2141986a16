#!/usr/bin/env python3
"""Layers call only downward: no folder of src/ includes a header of a folder that (directly or
through others) includes one of its own. Prints every include edge that closes a cycle, with a
file that makes it, and exits 1 when there is one.

  python3 scripts/check_layers.py
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
INCLUDE = re.compile(r'#include "([a-z_]+)/')


def folder_edges(src: Path) -> dict[str, dict[str, str]]:
    """folder -> {folder it includes: one file that does}"""
    edges: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".h", ".cpp", ".inc"):
            continue
        folder = path.relative_to(src).parts[0]
        for line in path.read_text(errors="replace").splitlines():
            m = INCLUDE.match(line)
            if m and m.group(1) != folder:
                edges[folder].setdefault(m.group(1), str(path.relative_to(src.parent)))
    return edges


def reaches(edges, start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        here = todo.pop()
        if here == goal:
            return True
        if here not in seen:
            seen.add(here)
            todo.extend(edges.get(here, {}))
    return False


def main() -> int:
    edges = folder_edges(SRC)
    cycles = [(a, b, f) for a, out in sorted(edges.items()) for b, f in sorted(out.items())
              if reaches(edges, b, a)]
    for a, b, f in cycles:
        print(f"check_layers: {a}/ includes {b}/ ({f}), and {b}/ reaches back to {a}/")
    if cycles:
        print("check_layers: move what both use into the lower folder (see ../shared/style.md)")
        return 1
    print(f"check_layers: {len(edges)} folders, no include cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
