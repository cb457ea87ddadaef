#!/usr/bin/env python3
"""The walls of the layout, checked (a step of `make test`):

1. `hookline-core` has no I/O crate in its dependency tree (tokio, kube, rdkafka, reqwest,
   hyper, or any crate of theirs such as kube-core or hyper-util);
2. no binary crate depends on another (`hookline-controller`, `hookline-api`, `hookline-dispatcher`);
3. no module of a binary crate imports a module that imports it back (dispatcher,
   controller and api): a cycle of `use crate::…` / `super::…` paths between their files.

Prints what is wrong and exits 1, or prints one line per check and exits 0.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = re.compile(r"^(tokio|kube|rdkafka|reqwest|hyper)([-_].*)?$")


def tree(package: str) -> set[str]:
    out = subprocess.run(
        ["cargo", "tree", "--locked", "-p", package, "-e", "normal", "--prefix", "none"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def modules(src: Path) -> dict[str, Path]:
    """Module path (`pipeline::partitions`) -> file, for a crate's src/."""
    found = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts in (["lib"], ["main"]) or parts[-1].endswith("_tests") or parts[-1] == "tests":
            continue
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts and parts[0] == "bin":
            continue
        found["::".join(parts)] = f
    return found


def code(text: str) -> str:
    """The text without comments and without `#[cfg(test)]` modules at the end of a file."""
    text = re.sub(r"//[^\n]*", "", text)
    cut = text.find("#[cfg(test)]\nmod tests")
    return text if cut < 0 else text[:cut]


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {m: set() for m in mods}
    for m, f in mods.items():
        here = m.split("::")
        body = code(f.read_text())
        paths = []
        for match in re.finditer(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", body):
            paths.append(match.group(1).split("::"))
        # `super::x` from `a::b` (a file `a/b.rs`) is `a::x`; from `a` (`a/mod.rs`) it is `x`.
        parent = here[:-1]
        for match in re.finditer(r"\bsuper::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", body):
            paths.append(parent + match.group(1).split("::"))
        for match in re.finditer(r"\buse super::\{|\bsuper::[A-Z]", body):
            paths.append(parent)
        # Brace imports: `use crate::a::{b, c::d}` name modules a::b and a::c.
        for match in re.finditer(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*)\{([^}]*)\}", body):
            prefix = [p for p in match.group(1).split("::") if p]
            for item in match.group(2).split(","):
                item = item.strip().split("::")[0]
                if item and item[0].islower() and item != "self":
                    paths.append(prefix + [item])
                elif item == "self":
                    paths.append(prefix)
        # A child module used by its parent by its bare name: `mod x; use x::Y;`.
        for child in re.findall(r"\bmod ([a-z_][a-z0-9_]*);", body):
            rest = re.sub(r"\bmod " + child + ";", "", body)
            if re.search(r"\b" + child + "::", rest):
                paths.append(here + [child] if m else [child])
        for path in paths:
            for n in range(len(path), 0, -1):
                target = "::".join(path[:n])
                if target in mods:
                    if target != m:
                        graph[m].add(target)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    problems = []
    bad = sorted(c for c in tree("hookline-core") if FORBIDDEN.match(c))
    if bad:
        problems.append(f"hookline-core depends on I/O crates: {', '.join(bad)}")
    else:
        print("hookline-core: no tokio, kube, rdkafka, reqwest or hyper in its tree")
    for binary in ("hookline-controller", "hookline-api"):
        deps = tree(binary)
        for other in ("hookline-dispatcher", "hookline-controller", "hookline-api"):
            if other != binary and other in deps:
                problems.append(f"{binary} depends on {other}")
    if "hookline-dispatcher" in tree("hookline-controller"):
        problems.append("hookline-controller depends on hookline-dispatcher")
    else:
        print("hookline-controller: no dependency on hookline-dispatcher")
    for crate in ("dispatcher", "controller", "api"):
        found = cycles(edges(modules(ROOT / crate / "src")))
        if found:
            for comp in found:
                problems.append(f"{crate}: modules import each other: {' <-> '.join(comp)}")
        else:
            print(f"{crate}: no module cycle")
    for p in problems:
        print(f"check-layout: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
