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


# ---------------------------------------------------------------------------------------------------------
# Flags: only a CLI's main() reads absl's FLAGS (the library takes explicit arguments); benchmarks are leaves.

BENCHMARKS = {"dcgan_tf.bench", "dcgan_tf.scale_bench", "dcgan_tf.flops"}


def flags_reads(tree: ast.Module) -> list[str]:
    """Each reference to absl's FLAGS outside main() and the `flags_parser=` hook that app.run hands argv to.

    At module level only `FLAGS = flags.FLAGS` and flag definitions may name it.
    """
    parsers = {kw.value.id for node in ast.walk(tree) if isinstance(node, ast.Call) for kw in node.keywords
               if kw.arg == "flags_parser" and isinstance(kw.value, ast.Name)}
    found = []

    def is_flags(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "FLAGS") or (
            isinstance(node, ast.Attribute) and node.attr == "FLAGS") or (
            isinstance(node, ast.alias) and node.name == "FLAGS")

    def allowed_at_module_level(statement: ast.stmt) -> bool:
        if isinstance(statement, ast.Assign):  # FLAGS = flags.FLAGS
            targets = statement.targets
            return len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id == "FLAGS" and \
                isinstance(statement.value, ast.Attribute) and statement.value.attr == "FLAGS"
        call = statement.value if isinstance(statement, ast.Expr) else None  # flags.DEFINE_x(..., flag_values=FLAGS)
        return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
            call.func.attr.startswith(("DEFINE", "mark_flag"))

    def visit(node: ast.AST, function: str | None) -> None:
        if function is None and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function = getattr(node, "name", "<lambda>")  # the outermost function owns what it encloses
        if is_flags(node) and function not in {"main", *parsers}:
            found.append(f"line {node.lineno}: FLAGS in {function + '()' if function else 'module-level code'}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    for statement in tree.body:
        if not allowed_at_module_level(statement):
            visit(statement, None)
    return found


def test_the_flags_reader_finds_reads_outside_main():
    source = ("from absl import app, flags\nFLAGS = flags.FLAGS\nflags.DEFINE_integer('n', 1, 'n', flag_values=FLAGS)\n"
              "def load(x=flags.FLAGS):\n    return FLAGS.n\n"
              "def main(argv):\n    return [FLAGS.n for _ in argv]\n"
              "def parse(argv):\n    return FLAGS(argv)\n"
              "app.run(main, flags_parser=parse)\nLIMIT = FLAGS.n\n")
    assert flags_reads(ast.parse(source)) == ["line 4: FLAGS in load()", "line 5: FLAGS in load()",
                                              "line 11: FLAGS in module-level code"]


def test_only_main_reads_absl_flags():
    reads = {}
    for top in (PACKAGE, "serving"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        found = flags_reads(ast.parse(f.read(), filename=path))
                    if found:  # the functions, each once
                        reads[os.path.relpath(path, REPO)] = sorted({read.split(": ", 1)[1] for read in found})
    assert not reads, ("only main() may read absl FLAGS; pass the values to the library as arguments: "
                       f"{reads}")


def test_benchmarks_are_leaves_outside_the_training_import_graph():
    graph = import_graph()
    assert BENCHMARKS <= set(graph)
    importers = {module: sorted(imports & BENCHMARKS) for module, imports in graph.items()
                 if imports & BENCHMARKS and module not in BENCHMARKS}
    assert not importers, f"only benchmarks may import benchmarks: {importers}"
    training = {"dcgan_tf.train", "dcgan_tf.gan", "dcgan_tf.models", "dcgan_tf.input_pipeline", "dcgan_tf.callbacks",
                "dcgan_tf.checkpointing", "dcgan_tf.export", "dcgan_tf.custom_loop", "dcgan_tf.distribute"}
    reached, todo = set(), [m for m in graph if m in training or m.startswith("dcgan_tf.evaluation")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph.get(module, ()))
    assert "dcgan_tf.gan" in reached and "dcgan_tf.evaluation.fid" in reached  # the walk sees the graph
    assert not reached & BENCHMARKS, f"the training import graph reaches {sorted(reached & BENCHMARKS)}"
