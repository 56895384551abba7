"""The package's structure: no import cycles, dependencies pointing down, no system named in shared code.

Imports are read with `ast` from the source (function-level imports included, so a cycle cannot hide
inside a function), resolved to modules of `t2v_jax`; `from package import name` counts as importing
the submodule when `name` is one.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, "t2v_jax")


def _module_files(package_dir=PACKAGE_DIR) -> dict:
    """{dotted module name: path} of every .py file under the package."""
    modules = {}
    for folder, _, files in os.walk(package_dir):
        for file in files:
            if file.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, file), os.path.dirname(package_dir))
                name = relative[:-3].replace(os.sep, ".")
                modules[name.removesuffix(".__init__")] = os.path.join(folder, file)
    return modules


def import_graph(package_dir=PACKAGE_DIR) -> dict:
    """{module: set of project modules it imports}."""
    modules = _module_files(package_dir)
    graph = {}
    for name, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.split(".") if is_package else name.split(".")[:-1]
                    parent = parent[: len(parent) - (node.level - 1)]
                    base = ".".join(parent + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            edges.update(target for target in targets if target in modules and target != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "t2v_jax.systems.latent_diffusion" in graph["t2v_jax.systems"]  # the walk sees the registry
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    """Two modules importing each other, one of them inside a function, are reported."""
    package = tmp_path / "t2v_jax"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "config.py").write_text("from t2v_jax.models import vq\n")
    (package / "models" / "vq.py").write_text("def check():\n    from t2v_jax.config import require\n")
    (package / "leaf.py").write_text("import os\n")
    cycle = find_cycle(import_graph(str(package)))
    assert cycle is not None and set(cycle) == {"t2v_jax.config", "t2v_jax.models.vq"}


# Layers a module may not import from: (importer prefix, forbidden prefix, why).
FORBIDDEN = [
    ("t2v_jax.models", "t2v_jax.config", "models take their config sections, not the validator"),
    ("t2v_jax.models", "t2v_jax.train", "models sit below training"),
    ("t2v_jax.models", "t2v_jax.pipelines", "models sit below pipelines"),
    ("t2v_jax.models", "t2v_jax.systems", "models sit below systems"),
    ("t2v_jax.layers", "t2v_jax.models", "layers sit below models"),
    ("t2v_jax.diffusion", "t2v_jax.models", "diffusion math knows no model"),
    ("t2v_jax.pipelines", "t2v_jax.train", "pipelines sample; loading trained stages is the system's job"),
    ("t2v_jax.pipelines.text_to_video", "t2v_jax.systems", "a pipeline serves systems, not the reverse"),
    ("t2v_jax.pipelines.flashvideo", "t2v_jax.systems", "a pipeline serves systems, not the reverse"),
    ("t2v_jax.pipelines.allegro", "t2v_jax.systems", "a pipeline serves systems, not the reverse"),
    ("t2v_jax.parallel", "t2v_jax.train.stages", "programs take the system's stage as an argument"),
    ("t2v_jax.train", "t2v_jax.pipelines", "training needs no pipeline"),
]


@pytest.mark.parametrize("importer,forbidden,why", FORBIDDEN)
def test_dependencies_point_down(importer, forbidden, why):
    graph = import_graph()
    offending = sorted((module, target) for module, targets in graph.items() if module.startswith(importer)
                       for target in targets if target.startswith(forbidden))
    assert not offending, f"{why}: {offending}"


def test_the_checks_module_is_a_leaf():
    assert import_graph()["t2v_jax.checks"] == set()


SHARED_FILES = ["t2v_jax/config.py", "t2v_jax/train/run.py", "t2v_jax/pipelines/load.py", "scripts/benchmark.py",
                "scripts/eval.py", "t2v_jax/train/trainer.py", "t2v_jax/pipelines/base.py", "t2v_jax/checks.py"]


@pytest.mark.parametrize("path", SHARED_FILES)
def test_shared_code_names_no_system(path):
    """Shared code looks the system up in the registry; it never compares a system's name."""
    with open(os.path.join(ROOT, path)) as f:
        source = f.read()
    assert not re.findall(r"flashvideo|latent_diffusion|allegro", source, re.IGNORECASE), path
