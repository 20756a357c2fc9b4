#!/usr/bin/env python3
"""Finds import circles between the modules of a Rust crate.

Usage: circles.py DIR   (DIR is the crate's source root, e.g. server/src)

Each file is one module: `DIR/lib.rs` or `DIR/main.rs` is the crate root,
`a/mod.rs` and `a.rs` are module `a`, `a/b.rs` is `a::b`. Every
`crate::x::y::...` path in a file (in `use` items and in expressions) is
an edge to the longest module prefix that names a file. Comments, string
literals, visibilities (`pub(crate)`) and test code (`#[cfg(test)]`
items, `tests.rs` and `*_tests.rs` files) are skipped. Exits 1 and prints each circle found, else
prints the module count and exits 0. Standard library only.
"""

import os
import re
import sys

ROOTS = ("lib.rs", "main.rs")


def module_of(root, path):
    rel = os.path.relpath(path, root)
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod" or (len(parts) == 1 and parts[0] + ".rs" in ROOTS):
        parts = parts[:-1]
    return tuple(parts)


def strip(text):
    """Text without comments, string literals and char literals."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 20]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 12]) or re.match(r"'\\u\{[0-9a-fA-F]+\}'", text[i:i + 12]):
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            i += len(m.group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def paths_in(text):
    """Every `crate::...` path, with `use crate::a::{b, c::d}` groups expanded."""
    found = []
    for m in re.finditer(r"(?<![\w$])crate((?:\s*::\s*\w+)*)(\s*::\s*\{)?", text):
        if re.search(r"pub\s*\(\s*(in\s+)?$", text[max(0, m.start() - 12):m.start()]):
            continue  # a visibility, `pub(crate)` or `pub(in crate::a)`
        head = [p for p in re.split(r"\s*::\s*", m.group(1).strip()) if p]
        if m.group(2):
            # A brace group: take each member's leading path.
            depth, i, start = 1, m.end(), m.end()
            while i < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            group = text[start:i - 1]
            for member in split_group(group):
                found.append(head + leading(member))
        else:
            found.append(head)
    return found


def split_group(group):
    parts, depth, cur = [], 0, ""
    for ch in group:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def leading(member):
    member = re.split(r"\s+as\s+", member)[0]
    member = member.split("{")[0]
    return [p for p in re.split(r"\s*::\s*", member) if p and p not in ("self", "*")]


def without_test_code(text):
    """`text` (already stripped) less every `#[cfg(test)]` item: unit tests
    may import anything, and are not part of the module graph."""
    out, i = [], 0
    while True:
        k = text.find("#[cfg(test)]", i)
        if k < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:k])
        j = k + len("#[cfg(test)]")
        depth = 0
        while j < len(text):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif c == ";" and depth == 0:
                j += 1
                break
            j += 1
        i = j


def is_test_file(name):
    """Files that only hold unit tests (`tests.rs`, `*_tests.rs`)."""
    return name == "tests.rs" or name.endswith("_tests.rs")


def graph(root):
    modules = {}
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".rs") and not is_test_file(f):
                path = os.path.join(base, f)
                modules[module_of(root, path)] = path
    edges = {m: set() for m in modules}
    for mod, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            text = without_test_code(strip(fh.read()))
        for parts in paths_in(text):
            target = ()
            for k in range(len(parts), 0, -1):
                if tuple(parts[:k]) in modules:
                    target = tuple(parts[:k])
                    break
            if target != mod:
                edges[mod].add(target)
    return modules, edges


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "crate" if not mod else "crate::" + "::".join(mod)


def one_circle(comp, edges):
    """A shortest circle through the component's first module."""
    members, start = set(comp), comp[0]
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print("usage: circles.py DIR", file=sys.stderr)
        return 2
    modules, edges = graph(sys.argv[1])
    found = cycles(edges)
    for comp in found:
        circle = one_circle(comp, edges)
        print("circle: " + " -> ".join(name(m) for m in circle))
        print("  (modules in it: " + ", ".join(name(m) for m in comp) + ")")
    if found:
        return 1
    print(f"no circles among {len(modules)} modules in {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
