#!/usr/bin/env python3
"""Import circles between a crate's top-level modules.

    scripts/circles.py src          # the library
    scripts/circles.py server/src   # the server

Each top-level module (`foo.rs`, or `foo/` with its submodules) is a node;
each `crate::foo` path in its code (not in comments, not in its
`#[cfg(test)] mod tests` or `tests.rs` files, which may import anything) is
an edge. The crate root (`lib.rs`/`main.rs`) re-exports and is left out.
Prints the edges and exits 1 if they contain a cycle.
"""
import pathlib
import re
import sys

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def code_lines(text):
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        # Unit tests sit at the end of a file, after `#[cfg(test)] mod tests`.
        if s == "#[cfg(test)]" and i + 1 < len(lines) and lines[i + 1].strip().startswith("mod tests"):
            return
        if s.startswith("//"):
            continue
        yield line.split("//", 1)[0] if "\"" not in line else line


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: circles.py SRC_DIR")
    root = pathlib.Path(sys.argv[1])
    edges = {}
    for f in sorted(root.rglob("*.rs")):
        rel = f.relative_to(root)
        if rel.name in ("lib.rs", "main.rs") and len(rel.parts) == 1:
            continue
        if rel.name == "tests.rs" or "tests" in rel.parts[:-1]:
            continue
        module = rel.parts[0].removesuffix(".rs")
        targets = edges.setdefault(module, set())
        for line in code_lines(f.read_text()):
            for m in PATH.finditer(line):
                if m.group(1) != module:
                    targets.add(m.group(1))
    for module in edges:
        edges[module] &= set(edges)
    for module in sorted(edges):
        print(f"{module} -> {', '.join(sorted(edges[module])) or '-'}")

    # Depth-first search for a back edge.
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in edges and not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if not state.get(node):
            cycle = visit(node)
            if cycle:
                print("cycle: " + " -> ".join(cycle), file=sys.stderr)
                sys.exit(1)
    print("no cycle")


if __name__ == "__main__":
    main()
