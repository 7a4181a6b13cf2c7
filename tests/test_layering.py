"""The package's import structure, read from the source with `ast` (nothing is imported):
no import cycles between modules, none between subpackages, no lower layer importing a
higher one, and the process environment touched by one module alone."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aar_ray"

# Lowest first. A part may import only parts of lower layers (and itself); parts that share a
# layer are independent of each other. `aar_ray` (the package's own __init__) is below them all.
LAYERS = [
    {"errors", "resources", "progress", "environment"},
    {"home"},
    {"testbeds", "sandbox", "forum"},
    {"lm"},
    {"engines"},
    {"models"},
    {"methods"},
    {"scoring"},
    {"tracking"},
    {"config"},
    {"experiments"},
    {"agents"},
    {"campaign"},
    {"cli"},
]

def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def part_of(module: str) -> str:
    """`aar_ray.models.causal_lm` -> `models`; `aar_ray.cli` -> `cli`; `aar_ray` -> `aar_ray`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_level_imports(body: list[ast.stmt]):
    """Import statements that run when the module is loaded: not those inside functions or
    classes, nor under `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from module_level_imports(node.body)
            yield from module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from module_level_imports(block)
        elif isinstance(node, ast.With):
            yield from module_level_imports(node.body)


def every_import(tree: ast.Module):
    return (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def imported_modules(importer: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The package modules an import statement loads: the named module, or for `from X import
    y` the submodule X.y when there is one, plus the packages above it that the importer is not
    already inside (Python runs their __init__ first)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = importer.split(".") if MODULES[importer].name == "__init__.py" else importer.split(".")[:-1]
            anchor = here[:len(here) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    loaded = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        while name:
            if not importer.startswith(name + ".") and name != importer:
                loaded.add(name)
            name = name.rpartition(".")[0]
    return loaded


def graph(imports) -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = {target for node in imports(tree) for target in imported_modules(name, node)}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def part_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    parts = {}
    for importer, targets in edges.items():
        for target in targets:
            if part_of(importer) != part_of(target):
                parts.setdefault(part_of(importer), set()).add(part_of(target))
    return parts


def layer_of(part: str) -> int:
    if part == "aar_ray":
        return -1
    for level, members in enumerate(LAYERS):
        if part in members:
            return level
    raise AssertionError(f"aar_ray.{part} is in no layer of {__name__}.LAYERS; add it where it belongs")


def test_no_module_imports_itself_back_when_loaded():
    assert cycles(graph(lambda tree: module_level_imports(tree.body))) == []


def test_no_two_subpackages_import_each_other_when_loaded():
    assert cycles(part_edges(graph(lambda tree: module_level_imports(tree.body)))) == [], \
        "import cycles between parts of aar_ray"


def test_lower_layers_never_import_higher_ones_even_lazily():
    upward = {(a, b) for a, targets in part_edges(graph(every_import)).items() for b in targets
              if layer_of(b) >= layer_of(a)}
    assert upward == set(), f"imports against the layers (lowest first): {LAYERS}"


def test_every_part_of_the_package_has_a_layer():
    unplaced = {part_of(m) for m in MODULES} - {"aar_ray"} - set().union(*LAYERS)
    assert unplaced == set(), f"add these to {__name__}.LAYERS where they belong"


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The walkers above on a made-up graph: what they must catch."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    two_parts = {"aar_ray.models.x": {"aar_ray.engines.y"}, "aar_ray.engines.y": {"aar_ray.models.z"}}
    assert cycles(part_edges(two_parts)) == [["engines", "models"]]
    lazy = ast.parse("def f():\n    import aar_ray.cli\nimport aar_ray.config\n")
    assert [ast.unparse(n) for n in module_level_imports(lazy.body)] == ["import aar_ray.config"]
    assert len(list(every_import(lazy))) == 2


# The one module that reads and sets environment variables (aar_ray/environment.py's table).
ENVIRONMENT_MODULE = "aar_ray.environment"


def environment_uses(tree: ast.Module) -> list[str]:
    """Reads and writes of the process environment: `os.environ`, `os.getenv`, `os.putenv`,
    `os.unsetenv`, and names imported from `os` that do the same."""
    touching = {"environ", "getenv", "putenv", "unsetenv", "environb", "getenvb"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in touching and ast.unparse(node.value) == "os":
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"line {node.lineno}: from os import {a.name}" for a in node.names if a.name in touching]
    return sorted(found, key=lambda use: int(use.split(":")[0].removeprefix("line ")))


def test_only_the_environment_module_reads_or_sets_environment_variables():
    offenders = {name: uses for name, path in MODULES.items() if name != ENVIRONMENT_MODULE
                 if (uses := environment_uses(ast.parse(path.read_text(), str(path))))}
    assert offenders == {}, "read or set environment variables through aar_ray.environment"


def test_the_environment_check_sees_reads_and_writes():
    code = ("import os\nfrom os import getenv\nos.environ.setdefault('A', '1')\n"
            "x = os.getenv('B')\nos.path.join('a')\n")
    assert environment_uses(ast.parse(code)) == [
        "line 2: from os import getenv", "line 3: os.environ", "line 4: os.getenv"]
