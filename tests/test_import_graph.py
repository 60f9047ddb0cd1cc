"""The package's import graph has no circle (DESIGN: arrows one way).

Every `import` in keras_kd/ counts, those inside functions included: a
function-level import hides a circle from Python at import time, not from a
reader. The edges are read from the source (nothing is imported), so the test
runs in either Keras flavour.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_kd"


def _modules(root):
    """`{dotted name: path}` of every module of the package under `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _package_of(name, modules):
    """The package a module belongs to (itself for a package's __init__)."""
    path = modules[name]
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _targets(name, node, modules):
    """The package's modules that one import statement of `name` loads."""
    top = next(iter(modules)).split(".")[0]
    if isinstance(node, ast.Import):
        dotted = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: resolve against the importer's package
            base = _package_of(name, modules).split(".")
            base = base[: len(base) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        dotted = [
            f"{module}.{alias.name}"
            if f"{module}.{alias.name}" in modules
            else module
            for alias in node.names
        ]
    found = set()
    for target in dotted:
        if not target.startswith(top + "."):
            continue
        while target not in modules:
            target = target.rpartition(".")[0]
        found.add(target)
        # Importing a.b.c runs the __init__ of a.b too, unless the importer
        # is inside a.b (then that package is already being initialised).
        parent = target.rpartition(".")[0]
        while parent and parent != top:
            if not (name == parent or name.startswith(parent + ".")):
                found.add(parent)
            parent = parent.rpartition(".")[0]
    # The top-level package is the facade that imports everything.
    found.discard(top)
    found.discard(name)
    return found


def import_graph(root=PACKAGE):
    """`{module: set of modules it imports}`, function-level imports included."""
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(name, node, modules)
        graph[name] = edges
    return graph


def find_circle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state = {}  # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                circle = visit(nxt)
                if circle:
                    return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            circle = visit(node)
            if circle:
                return circle
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "keras_kd.distiller.model" in graph and "keras_kd.online" in graph
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_online_builds_on_the_distiller_never_the_other_way():
    graph = import_graph()
    distiller = {m for m in graph if m.startswith("keras_kd.distiller")}
    assert "keras_kd.distiller" in graph["keras_kd.online"]
    for module in distiller:
        assert "keras_kd.online" not in graph[module], module


def _write(root, files):
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "from pkg import a\n",
            "a.py": "from pkg import b\n",
            "b.py": "def f():\n    from pkg.sub import c\n",
            "sub/__init__.py": "",
            "sub/c.py": "import pkg.a\n",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert find_circle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


@pytest.mark.parametrize(
    "files, edges",
    [
        # a package's own modules import siblings through it: no edge to it
        (
            {
                "__init__.py": "",
                "sub/__init__.py": "from pkg.sub.m import X\n",
                "sub/m.py": "from pkg.sub import n\n",
                "sub/n.py": "",
            },
            {"pkg.sub": {"pkg.sub.m"}, "pkg.sub.m": {"pkg.sub.n"}, "pkg.sub.n": set()},
        ),
        # importing a module of another package runs that package's __init__
        (
            {
                "__init__.py": "",
                "x.py": "from pkg.sub.m import X\n",
                "sub/__init__.py": "",
                "sub/m.py": "X = 1\n",
            },
            {"pkg.x": {"pkg.sub", "pkg.sub.m"}, "pkg.sub": set(), "pkg.sub.m": set()},
        ),
    ],
)
def test_edges_follow_what_python_runs(tmp_path, files, edges):
    _write(tmp_path / "pkg", files)
    graph = import_graph(tmp_path / "pkg")
    graph.pop("pkg")
    assert graph == edges
    assert find_circle(graph) is None
