#!/usr/bin/env python3
"""Which top-level modules of a crate import which (every `crate::` path, comments left
out), and the pairs that import each other. Usage: scripts/import-graph.py [platform/src]"""
import itertools
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "platform/src"
mods = {f[:-3] if f.endswith(".rs") else f for f in os.listdir(root)} - {"lib", "main"}


def used(text):
    out = set()
    for m in re.finditer(r"crate::(\{)?", text):
        i = m.end()
        if m.group(1):
            depth, j, cur, names = 1, i, "", []
            while depth > 0 and j < len(text):
                c = text[j]
                depth += c == "{"
                depth -= c == "}"
                if depth == 1 and c == ",":
                    names.append(cur)
                    cur = ""
                elif depth >= 1:
                    cur += c
                j += 1
            names.append(cur)
            out |= {n.strip().split("::")[0].strip("{} \n") for n in names}
        else:
            n = re.match(r"[a-z_]+", text[i:])
            if n:
                out.add(n.group(0))
    return out


edges = {}
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(d, f)
        top = os.path.relpath(path, root).split("/")[0].removesuffix(".rs")
        code = "\n".join(l for l in open(path).read().split("\n") if not l.strip().startswith("//"))
        for u in used(code):
            if u != top and u in mods:
                edges.setdefault(top, set()).add(u)
for k in sorted(edges):
    print(f"{k} -> {' '.join(sorted(edges[k]))}")
cycles = [(a, b) for a, b in itertools.combinations(sorted(mods), 2)
          if b in edges.get(a, ()) and a in edges.get(b, ())]
for a, b in cycles:
    print(f"cycle: {a} <-> {b}")
print(f"{len(cycles)} pair(s) importing each other")
