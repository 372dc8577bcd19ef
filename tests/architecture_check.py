"""The house rules of the package, checked from its source: run `python tests/architecture_check.py`.

Three rules keep onebert a place the next engineer finds their way in (issue 13):
- no import cycle, neither between modules nor between subpackages, counting every import: a lazy one
  inside a function or one under `if TYPE_CHECKING:` still makes the importing module depend on the
  imported one, and a cycle means neither can be read, tested or moved without the other;
- no function longer than MAX_FUNCTION_LINES;
- task logic lives in `onebert/tasks/`: elsewhere at most MAX_TASK_NAME_COMPARISONS comparisons of a
  task name with a string (`task == "qa"`, `spec.task in ("ner", ...)`).

The script prints what breaks a rule and exits 1, so it serves both people and
`tests/test_architecture.py`.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "onebert"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_FUNCTION_LINES = 80
MAX_TASK_NAME_COMPARISONS = 5
TASK_NAMES = frozenset({"classification", "regression", "ner", "qa", "pretraining", "multiple_choice",
                        "multiple-choice", "token-classification", "text-classification", "question-answering"})


@dataclass
class ModuleInfo:
    name: str
    path: Path  # relative to the folder that holds the package
    tree: ast.Module
    imports: set[str] = field(default_factory=set)  # the onebert modules it imports, anywhere in it


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: ModuleInfo, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    is_package = module.path.name == "__init__.py"
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: ModuleInfo, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The onebert modules an import statement loads (`from pkg import mod` loads pkg.mod)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        source = _resolve(module, node)
        names = [source] + [f"{source}.{alias.name}" for alias in node.names]
    for name in names:
        if name in known:
            found.add(name)
    return found


def _collect_imports(module: ModuleInfo, known: set[str]) -> None:
    for node in ast.walk(module.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module.imports |= _targets(module, node, known) - {module.name}


def load_modules(root: Path = ROOT) -> dict[str, ModuleInfo]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        modules[name] = ModuleInfo(name, path.relative_to(root.parent),
                                   ast.parse(path.read_text(encoding="utf-8"), str(path)))
    known = set(modules)
    for module in modules.values():
        _collect_imports(module, known)
    return modules


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles)


def subpackage_of(name: str) -> str:
    """onebert.train.loop -> onebert.train; top-level modules (onebert.cli) stand for themselves."""
    parts = name.split(".")
    return ".".join(parts[:2])


def module_cycles(modules: dict[str, ModuleInfo]) -> list[list[str]]:
    return find_cycles({name: m.imports for name, m in modules.items()})


def subpackage_cycles(modules: dict[str, ModuleInfo]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        source = subpackage_of(name)
        if source == PACKAGE:
            continue  # the lazy top-level API (onebert/__init__) names everything by design
        edges = graph.setdefault(source, set())
        edges |= {subpackage_of(t) for t in module.imports} - {source, PACKAGE}
    return find_cycles(graph)


def long_functions(modules: dict[str, ModuleInfo], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(f"{module.path}:{node.lineno} {node.name} ({length} lines)")
    return sorted(found)


def _is_task_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in TASK_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task_name(element) for element in node.elts)
    return False


def task_name_comparisons(modules: dict[str, ModuleInfo]) -> list[str]:
    """`x == "qa"`, `x != "ner"`, `x in ("classification", ...)` outside onebert/tasks/."""
    found = []
    for module in modules.values():
        if module.name == f"{PACKAGE}.tasks" or module.name.startswith(f"{PACKAGE}.tasks."):
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops) and \
                        any(_is_task_name(operand) for operand in operands):
                    found.append(f"{module.path}:{node.lineno} {ast.unparse(node)}")
            elif isinstance(node, ast.match_case) and _is_task_name(getattr(node.pattern, "value", None)):
                found.append(f"{module.path}:{node.pattern.lineno} case {ast.unparse(node.pattern)}")
    return sorted(found)


def report() -> int:
    modules = load_modules()
    problems = 0
    for cycle in module_cycles(modules):
        print("module import cycle:", " <-> ".join(cycle))
        problems += 1
    for cycle in subpackage_cycles(modules):
        print("subpackage import cycle:", " <-> ".join(cycle))
        problems += 1
    for line in long_functions(modules):
        print(f"function over {MAX_FUNCTION_LINES} lines:", line)
        problems += 1
    comparisons = task_name_comparisons(modules)
    for line in comparisons:
        print("task-name comparison outside onebert/tasks:", line)
    if len(comparisons) > MAX_TASK_NAME_COMPARISONS:
        print(f"{len(comparisons)} task-name comparisons outside onebert/tasks/ (at most {MAX_TASK_NAME_COMPARISONS})")
        problems += 1
    print(f"{len(modules)} modules; {problems} rule(s) broken")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(report())
