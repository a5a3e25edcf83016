"""The package keeps its layers: every import (top-level or inside a function) follows refers.base.layers.

The checker reads each module's imports with ``ast`` (no module is imported), resolves them to
modules of the tree, and reports: an import of a layer above, a leaf (eval, prepare) imported by a
layer not allowed to or importing above its limit, a relative import, an import of a module that
does not exist, a module in no layer, and every cycle between modules. It is first shown to catch
each of these on a small synthetic tree, then run on the real package.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from refers.base import layers as declared

PACKAGE_DIR = Path(__file__).resolve().parents[2] / declared.PACKAGE

# Imports that other parts of issue 13 remove; each names its point. The test fails when one is no
# longer needed, so that this list only shrinks.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
    # (none left: the readers of issue 13 point 4 moved the image-root resolver from prepare/ into data/)
}


@dataclass(frozen=True)
class Import:
    """One import statement's target in a module: ``line`` of ``file``; ``level`` > 0 if relative."""

    file: Path
    line: int
    target: str
    level: int


def module_of(package_dir: Path, file: Path) -> str:
    """``<package_dir>/data/lists.py`` -> ``refers.data.lists``; a package's ``__init__`` is the package."""
    parts = file.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_imports(package_dir: Path) -> tuple[dict[str, list[Import]], dict[str, Path]]:
    """Every module of the tree -> the imports of its package (by name, unresolved), and module -> file."""
    files = {module_of(package_dir, f): f for f in sorted(package_dir.rglob("*.py"))}
    package = package_dir.name
    found: dict[str, list[Import]] = {}
    for module, file in files.items():
        is_package = file.name == "__init__.py"
        imports = []
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                imports += [Import(file, node.lineno, a.name, 0) for a in node.names
                            if a.name == package or a.name.startswith(package + ".")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # resolve ``from ..x import y`` against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                if prefix != package and not prefix.startswith(package + "."):
                    continue
                for alias in node.names:  # ``from refers.engine import train_state`` names a module
                    name = f"{prefix}.{alias.name}"
                    imports.append(Import(file, node.lineno, name if name in files else prefix, node.level))
        found[module] = imports
    return found, files


def _rank_of(module: str, layers, leaves) -> tuple[str, str | None]:
    """(layer or leaf name, 'layer'/'leaf'), by the longest matching prefix; ('', None) when unclaimed."""
    best, kind, length = "", None, -1
    entries = [(name, prefixes, "layer") for name, prefixes in layers]
    entries += [(name, prefixes, "leaf") for name, (prefixes, _) in leaves.items()]
    for name, prefixes, what in entries:
        for prefix in prefixes:
            root_only = "." not in prefix  # the package itself stands for its __init__ alone
            matches = module == prefix or (not root_only and module.startswith(prefix + "."))
            if matches and len(prefix) > length:
                best, kind, length = name, what, len(prefix)
    return best, kind


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def check(package_dir: Path, layers=declared.LAYERS, leaves=declared.LEAVES, leaf_uses=declared.LEAF_USES,
          exceptions: dict[tuple[str, str], str] | None = None) -> tuple[list[str], set[tuple[str, str]]]:
    """The layering violations of the tree under ``package_dir``, and the exceptions that were used.

    Returns:
        One line per violation (``file:line: what``), and the ``exceptions`` keys that matched one.
    """
    exceptions = exceptions or {}
    imports, files = read_imports(package_dir)
    order = [name for name, _ in layers]
    problems: list[str] = []
    used: set[tuple[str, str]] = set()
    graph: dict[str, set[str]] = {module: set() for module in files}
    for module in files:
        if _rank_of(module, layers, leaves)[1] is None:
            problems.append(f"{files[module]}: {module} is in no layer (declare it in refers/base/layers.py)")
    for module, found in imports.items():
        mine, my_kind = _rank_of(module, layers, leaves)
        for imp in found:
            where = f"{imp.file}:{imp.line}"
            if imp.level:
                problems.append(f"{where}: relative import in {module} (write it absolutely: {imp.target})")
            if imp.target not in files:
                problems.append(f"{where}: {module} imports {imp.target}, which is no module of the package")
                continue
            if imp.target != module:
                graph[module].add(imp.target)
            theirs, their_kind = _rank_of(imp.target, layers, leaves)
            if my_kind is None or their_kind is None or theirs == mine:
                continue
            wrong = None
            if their_kind == "leaf":
                if my_kind == "leaf" or mine not in leaves[theirs][1]:
                    wrong = f"the leaf {theirs} may be imported only by {', '.join(leaves[theirs][1])}"
            elif my_kind == "leaf":
                if order.index(theirs) > order.index(leaf_uses):
                    wrong = f"a leaf may import layers up to {leaf_uses}"
            elif order.index(theirs) > order.index(mine):
                wrong = "a layer above"
            if wrong is None:
                continue
            if (module, imp.target) in exceptions:
                used.add((module, imp.target))
                continue
            problems.append(f"{where}: {module} ({mine}) imports {imp.target} ({theirs}): {wrong}")
    for component in _cycles(graph):
        problems.append(f"import cycle: {' -> '.join(component)} -> {component[0]}")
    return problems, used


# --------------------------------------------------------------------------- the checker can fail


def _tree(root: Path, modules: dict[str, str]) -> Path:
    """Write ``{"data/a.py": source}`` under ``root/refers`` (with every package's __init__)."""
    package = root / declared.PACKAGE
    for rel, source in {"__init__.py": "", **modules}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = path.parent
        while folder != root:  # every folder on the way is a package
            (folder / "__init__.py").touch()
            folder = folder.parent
        path.write_text(source, encoding="utf-8")
    return package


def test_a_clean_synthetic_tree_passes(tmp_path):
    package = _tree(tmp_path, {
        "base/errors.py": "class UserError(Exception):\n    pass\n",
        "data/lists.py": "from refers.base.errors import UserError\n",
        "models/vit.py": "import refers.data.lists\n",
        "finetune/train.py": "from refers.eval import metrics\nfrom refers.models.vit import x\n",
        "eval/metrics.py": "from refers.data import lists\n",
        "prepare/nih.py": "from refers.data.lists import read\n",
        "cli/main.py": "def main():\n    from refers.prepare import nih\n    from refers.finetune import train\n",
    })
    assert check(package) == ([], set())


def test_the_checker_reports_backwards_imports_leaves_relative_imports_and_cycles(tmp_path):
    package = _tree(tmp_path, {
        "base/errors.py": "",
        "data/lists.py": "def read():\n    from refers.models import vit\n",      # upwards, in a function
        "models/vit.py": "from refers.data.images import open_grey\n",
        "data/images.py": "import refers.data.dicom\n",                            # images -> dicom -> images
        "data/dicom.py": "from refers.data.images import x\n",
        "engine/loop.py": "from refers.eval.metrics import auc\n",                # eval is for tasks and apps
        "eval/metrics.py": "from refers.engine import loop\n",                    # a leaf above its limit
        "finetune/data.py": "from refers.prepare.layout import locate\n",        # prepare is for apps
        "prepare/layout.py": "from .common import x\n",                           # relative
        "prepare/common.py": "",
        "bench/loader.py": "from refers.cli import prepare\n",                    # the library imports the CLI
        "cli/prepare.py": "import refers.nowhere\n",                              # no such module
        "stray.py": "",                                                            # in no layer
    })
    problems, used = check(package)
    text = "\n".join(problems)
    # the function-level import, with its file and line
    assert f"{package}/data/lists.py:2: refers.data.lists (data) imports refers.models.vit (models): a layer above" in text
    assert "refers.engine.loop (engine) imports refers.eval.metrics (eval): the leaf eval may be imported only by" in text
    assert "refers.eval.metrics (eval) imports refers.engine.loop (engine): a leaf may import layers up to data" in text
    assert "refers.finetune.data (tasks) imports refers.prepare.layout (prepare): the leaf prepare" in text
    assert "relative import in refers.prepare.layout (write it absolutely: refers.prepare.common)" in text
    assert "refers.bench.loader (apps) imports refers.cli.prepare (cli): a layer above" in text
    assert "refers.cli.prepare imports refers.nowhere, which is no module of the package" in text
    assert "refers.stray is in no layer" in text
    assert "import cycle: refers.data.dicom -> refers.data.images -> refers.data.dicom" in text
    assert len(problems) == 10, text
    assert used == set()
    # A listed exception silences exactly its import, and is reported as used.
    problems, used = check(package, exceptions={("refers.bench.loader", "refers.cli.prepare"): "test"})
    assert len(problems) == 9 and used == {("refers.bench.loader", "refers.cli.prepare")}


def test_every_longest_prefix_decides_and_the_package_root_is_its_init_alone():
    assert _rank_of("refers", declared.LAYERS, declared.LEAVES) == ("api", "layer")
    assert _rank_of("refers.engine.optim", declared.LAYERS, declared.LEAVES) == ("engine", "layer")
    assert _rank_of("refers.engine.pretrain_loop", declared.LAYERS, declared.LEAVES) == ("tasks", "layer")
    assert _rank_of("refers.eval.metrics", declared.LAYERS, declared.LEAVES) == ("eval", "leaf")
    assert _rank_of("refers.newthing", declared.LAYERS, declared.LEAVES) == ("", None)


# --------------------------------------------------------------------------- the real package


def test_the_package_keeps_its_layers():
    problems, used = check(PACKAGE_DIR, exceptions=KNOWN_EXCEPTIONS)
    assert problems == [], "\n".join(problems)
    stale = sorted(set(KNOWN_EXCEPTIONS) - used)
    assert not stale, f"no longer needed, remove from KNOWN_EXCEPTIONS: {stale}"


def test_a_backwards_import_added_to_the_real_package_is_caught(tmp_path):
    import shutil

    copy = tmp_path / declared.PACKAGE
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    lists = copy / "data" / "lists.py"
    lists.write_text(lists.read_text(encoding="utf-8") + "\n\ndef _late():\n    from refers.cli.main import main\n",
                     encoding="utf-8")
    problems, _ = check(copy, exceptions=KNOWN_EXCEPTIONS)
    line = len(lists.read_text(encoding="utf-8").splitlines())
    assert problems == [f"{lists}:{line}: refers.data.lists (data) imports refers.cli.main (cli): a layer above"]


def test_the_library_never_imports_the_command_line():
    imports, _ = read_imports(PACKAGE_DIR)
    offenders = [f"{imp.file}:{imp.line}" for module, found in imports.items()
                 if not module.startswith(("refers.cli", "refers.__main__"))
                 for imp in found if imp.target.startswith("refers.cli")]
    assert offenders == []
    assert len(imports) > 100  # the whole tree was read
