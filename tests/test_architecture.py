"""The house rules of issue 13, checked on the real package (see tests/architecture_check.py).

The first three tests hold the package to the rules; the last ones prove the checker sees a
breach, on a small package written for the purpose, so the rules cannot pass by not looking.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import architecture_check as arch


def test_no_import_cycle_between_modules_or_subpackages():
    modules = arch.load_modules()
    assert arch.module_cycles(modules) == []
    assert arch.subpackage_cycles(modules) == []


def test_no_function_over_80_lines():
    assert arch.long_functions(arch.load_modules()) == []


def test_task_logic_stays_in_the_tasks_package():
    comparisons = arch.task_name_comparisons(arch.load_modules())
    assert len(comparisons) <= arch.MAX_TASK_NAME_COMPARISONS, "\n".join(comparisons)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "onebert"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return package


def test_checker_finds_lazy_and_type_checking_cycles_and_long_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/one.py": "from onebert.a.two import thing\n",
        "a/two.py": "def thing():\n    from onebert.a import one\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from onebert.c import C\n",
        "c.py": "from . import b\n",
        "tasks/__init__.py": "def f(task):\n    return task == 'qa'\n",
        "long.py": f"def long():\n{body}\n",
        "switch.py": "def g(task):\n    if task == 'ner' or task in ('qa', 'x'):\n        return 1\n",
    })
    modules = arch.load_modules(package)
    assert arch.module_cycles(modules) == [["onebert.a.one", "onebert.a.two"], ["onebert.b", "onebert.c"]]
    assert arch.subpackage_cycles(modules) == [["onebert.b", "onebert.c"]]
    assert [line.split()[1] for line in arch.long_functions(modules)] == ["long"]
    comparisons = arch.task_name_comparisons(modules)
    assert len(comparisons) == 2 and all(line.startswith("onebert/switch.py:2") for line in comparisons)
