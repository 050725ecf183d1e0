"""The layout the docs promise: every module listed in docs/architecture.md, no module over 600 lines, no import
circles, and the core never imports the fashion-scenes harness."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lad_hf"
CORE = [p for p in PKG.rglob("*.py") if "fashion_scenes" not in p.parts and "metrics_module" not in p.parts]


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """Modules of lad_hf imported by ``path`` (top level and inside functions)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("lad_hf"):
                for alias in node.names:  # `from . import dinov2` imports a module
                    out.add(f"{mod}.{alias.name}" if (PKG.parent / (f"{mod}.{alias.name}".replace(".", "/") + ".py")).exists() else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lad_hf"))
    return out


def test_architecture_doc_lists_every_core_module_and_only_real_files():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(lad_hf/[\w/]+\.py)`", doc))
    assert named, "docs/architecture.md names no files"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"
    skip = {"__init__.py", "__main__.py", "errors.py", "constants.py"}
    unlisted = sorted(str(p.relative_to(ROOT)) for p in CORE if p.name not in skip and str(p.relative_to(ROOT)) not in named)
    assert not unlisted, f"modules missing from docs/architecture.md: {unlisted}"


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_no_import_circles_and_the_core_never_imports_the_harness():
    graph = {}
    for p in PKG.rglob("*.py"):
        graph[_module(p)] = {m for m in _imports(p) if m != _module(p)}
    for mod in [m for m in graph if "fashion_scenes" not in m]:
        assert not any("fashion_scenes" in d for d in graph[mod]), (mod, graph[mod])

    # a package's __init__ re-exports its modules: edges from a package to its own submodules are not circles
    def deps(m):
        return {d for d in graph.get(m, ()) if d in graph and not d.startswith(m + ".")}

    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in deps(m):
            if state.get(d) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]) if d in stack else d)
            if d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
