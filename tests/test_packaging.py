"""pyproject.toml says what onebert needs: every library onebert/ imports is a core dependency, in an extra, or
in the standard library; every package a feature extra installs is one onebert/ uses; `all` has every feature.

A missing entry breaks a user's `pip install onebert[...]` with an ImportError far from the cause; a stale one
makes every install pull in (sometimes hundreds of MB of) packages nothing imports.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "onebert"
# tomllib is missing from 3.10's stdlib_module_names; onebert imports it only on 3.11+ (tomli before).
STDLIB = set(sys.stdlib_module_names) | {"tomllib"}
# import name -> distribution name, where the two differ.
DIST_OF_MODULE = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "intel_extension_for_pytorch": "intel-extension-for-pytorch",
}
# submodules of a dependency that need another distribution installed (they import it themselves).
DIST_OF_SUBMODULE = {"torch.utils.tensorboard": "tensorboard"}
# distributions a feature needs that onebert/ does not import itself, and why.
USED_INDIRECTLY = {"onnx": "torch.onnx.export imports it to write the .onnx file"}
# imports that no extra can pin, and why (the code says how to install them when they are missing).
INSTALLED_BY_HAND = {"intel-extension-for-pytorch": "--ipex: its build must match the installed torch exactly"}
# imports under onebert/ that only benchmarks/ and tests/ reach, so they sit in `bench` and `test`, and why.
BENCH_ONLY = {"openvino": "onebert.export.openvino_runner, called by benchmarks/bench_export.py and tests only"}
# extras for the test suite and benchmarks/: they may list what only tests/ or benchmarks/ import.
NOT_FEATURES = {"test", "bench", "all"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(spec: str) -> tuple[str, set[str]]:
    """'fastapi>=0.110' -> ('fastapi', set()); 'onebert[serve,export]' -> ('onebert', {'serve', 'export'})."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    assert match, f"pyproject.toml: cannot read the requirement {spec!r}"
    extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
    return _norm(match.group(1)), extras


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# functions that import the module named by their first argument (records.py's _optional wraps import_module).
DYNAMIC_IMPORTERS = {"import_module", "_optional"}


def _is_dynamic_import(node: ast.AST) -> bool:
    """`importlib.import_module("pyarrow.parquet")` or `_optional("datasets", ...)`: a string-literal import."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    first = node.args[0]
    return func in DYNAMIC_IMPORTERS and isinstance(first, ast.Constant) and isinstance(first.value, str)


def _imports() -> dict[str, set[str]]:
    """distribution -> the files under onebert/ that import it (lazy imports inside functions count)."""
    found: dict[str, set[str]] = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif _is_dynamic_import(node):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "onebert" or top in STDLIB:
                    continue
                dists = {_norm(DIST_OF_MODULE.get(top, top))}
                dists |= {_norm(d) for sub, d in DIST_OF_SUBMODULE.items() if f"{name}.".startswith(f"{sub}.")}
                for dist in dists:
                    found.setdefault(dist, set()).add(str(file.relative_to(REPO)))
    return found


def _feature_extras(project: dict) -> dict[str, list[str]]:
    return {k: v for k, v in project["optional-dependencies"].items() if k not in NOT_FEATURES}


def test_every_library_onebert_imports_is_a_dependency_or_in_a_feature_extra():
    project = _project()
    declared = {_requirement(r)[0] for r in project["dependencies"]}
    for specs in _feature_extras(project).values():
        declared |= {_requirement(r)[0] for r in specs}
    extras = project["optional-dependencies"]
    for extra in ("bench", "test"):
        listed = {_requirement(r)[0] for r in extras[extra]}
        assert listed >= set(BENCH_ONLY), f"the `{extra}` extra must list the benchmark-only imports {BENCH_ONLY}"
    declared |= set(BENCH_ONLY)
    missing = {d: sorted(files) for d, files in _imports().items() if d not in declared and d not in INSTALLED_BY_HAND}
    assert not missing, f"imported under onebert/ but in no dependency list of pyproject.toml: {missing}"


def test_every_core_and_feature_extra_package_is_imported_by_onebert():
    project = _project()
    imported = set(_imports()) | set(USED_INDIRECTLY)
    lists = {"dependencies": project["dependencies"], **_feature_extras(project)}
    unused = {name: sorted(d for d in (_requirement(r)[0] for r in specs) if d not in imported)
              for name, specs in lists.items()}
    unused = {name: dists for name, dists in unused.items() if dists}
    assert not unused, (f"pyproject.toml installs packages that nothing under onebert/ imports: {unused} "
                        "(a test- or benchmark-only package belongs in the `test` or `bench` extra)")


def test_all_extra_names_every_feature_extra_and_test_names_only_real_extras():
    extras = _project()["optional-dependencies"]
    in_all = set()
    for spec in extras["all"]:
        name, sub = _requirement(spec)
        assert name == "onebert", f"the `all` extra lists {spec!r}: it should only name onebert's own extras"
        in_all |= sub
    assert in_all == set(_feature_extras(_project())), "`all` must name every feature extra, and only those"
    for spec in extras["test"]:
        name, sub = _requirement(spec)
        assert name != "onebert" or sub <= set(extras), f"the `test` extra names extras that do not exist: {spec!r}"


def test_demo_help_runs_with_no_optional_package_importable():
    # Every package of an extra is made unimportable: `onebert demo --help` must need the core dependencies only.
    extras = _project()["optional-dependencies"]
    module_of = {_norm(d): m for m, d in DIST_OF_MODULE.items()}
    blocked = sorted({module_of.get(_requirement(r)[0], _requirement(r)[0].replace("-", "_"))
                      for specs in extras.values() for r in specs if _requirement(r)[0] != "onebert"})
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None  # import raises ImportError\n"
            "sys.argv = ['onebert', 'demo', '--help']\n"
            "import runpy; runpy.run_module('onebert', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: onebert demo" in result.stdout
