"""The package's layout holds: no import cycle between its modules, and the paper's networks apart from the
speed kernels. Read from the source (ast), so function-level imports count as much as top-level ones."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "dcgan_tf"


def module_files() -> dict[str, str]:
    """Dotted module name -> source path, for every module of the package (a package is its __init__.py)."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(REPO, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                parts = os.path.relpath(os.path.join(folder, name), REPO)[:-3].split(os.sep)
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(folder, name)
    return modules


def imported_modules(path: str, module: str, known: set[str]) -> set[str]:
    """The package's modules that `module` (at `path`) imports anywhere in its source, functions included."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b`: b is a submodule of a, or a name defined in a.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a name inside a module: that module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = module_files()
    return {module: imported_modules(path, module, set(files)) for module, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_reader_sees_function_level_and_from_imports():
    graph = import_graph()
    assert "dcgan_tf.config" in graph["dcgan_tf.fast_path"]  # a top-level `from dcgan_tf.config import ...`
    assert "dcgan_tf.evaluation.callback" in graph["dcgan_tf.train"]  # imported inside make_callbacks
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def definitions(module: str) -> ast.Module:
    """The parsed source of one of the package's modules."""
    path = module_files()[module]
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def custom_kernel_marks(tree: ast.Module) -> list[str]:
    """What makes code a speed kernel: custom gradients, raw TensorFlow ops, layer or optimizer subclasses."""
    marks = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("custom_gradient", "raw_ops"):
            marks.append(f"line {node.lineno}: {node.attr}")
        elif isinstance(node, ast.ClassDef):
            marks.append(f"line {node.lineno}: class {node.name}")
    return marks


def test_models_hold_the_papers_networks_and_kernels_the_speed():
    assert custom_kernel_marks(definitions("dcgan_tf.models")) == []
    kernels = custom_kernel_marks(definitions("dcgan_tf.kernels"))
    for mark in ("custom_gradient", "raw_ops", "class FusedBatchNorm", "class Conv2D", "class Conv2DTranspose",
                 "class FusedAdam"):
        assert any(mark in found for found in kernels), mark


@pytest.mark.parametrize("module", ["dcgan_tf.models", "dcgan_tf.config"])
def test_building_reads_no_ambient_state(module):
    """Networks and the config read no machine or strategy state: callers pass resolved values down."""
    ambient = {"get_strategy", "list_physical_devices", "get_device_details", "cpu_flags", "gpu_capabilities",
               "choose_precision", "choose_jit"}
    used = {node.attr if isinstance(node, ast.Attribute) else node.id for node in ast.walk(definitions(module))
            if isinstance(node, (ast.Attribute, ast.Name))}
    assert not used & ambient, f"{module} reads {sorted(used & ambient)}"
