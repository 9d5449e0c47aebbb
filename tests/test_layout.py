"""The house holds to its own rules: dvc.yaml's deps are what each stage imports, the training
keys are declared where they are defined, and the runtime side never reaches torch."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from imgpipe.params import DataParams, PreprocessParams
from imgpipe.training.settings import TrainConfig
from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
# Modules a stage imports that cannot change its outputs, so they are no dvc.yaml deps (the
# comment at the top of dvc.yaml says the same). What they import is not followed either.
NOT_DEPS = {
    "imgpipe.stage": "sets up logging and turns user errors into one line",
    "imgpipe.errors": "the exception type user errors are raised as",
    "imgpipe.params": "validates params.yaml; DVC tracks the values themselves",
}
# What each sub-package may import from imgpipe besides its own modules, errors and io
# (prefixes: a package name allows all of it), and whether it may reach the training stack.
# The runtime side (data, runtime, monitoring, serving) never does, not even lazily inside a
# function: `imgpipe predict` and the service start without torch by construction.
PLUMBING = ("imgpipe.errors", "imgpipe.io")
RULES: dict[str, tuple[tuple[str, ...], bool]] = {
    "imgpipe.data": ((), False),
    "imgpipe.runtime": (
        ("imgpipe.data.images", "imgpipe.data.layout", "imgpipe.data.video"),
        False,
    ),
    "imgpipe.monitoring": (
        ("imgpipe.data.images", "imgpipe.data.layout", "imgpipe.runtime"),
        False,
    ),
    "imgpipe.serving": (
        ("imgpipe", "imgpipe.data.images", "imgpipe.runtime", "imgpipe.monitoring.features"),
        False,
    ),
    # runtime.onnx_contract: the ONNX contract's names, for the backbone graph; and
    # runtime.feature_entries: the feature cache's entry names, which drift-baseline shares
    # (both torch-free).
    "imgpipe.training": (
        (
            "imgpipe.data.splits",
            "imgpipe.runtime.onnx_contract",
            "imgpipe.runtime.feature_entries",
        ),
        True,
    ),
    "imgpipe.evaluation": (("imgpipe.data.splits", "imgpipe.training"), True),
    "imgpipe.audit": (
        ("imgpipe.data.splits", "imgpipe.evaluation.pictures", "imgpipe.training"),
        True,
    ),
    "imgpipe.export": (
        (
            "imgpipe.data.splits",
            "imgpipe.evaluation.calibration",
            "imgpipe.runtime",
            "imgpipe.training",
        ),
        True,
    ),
}
TRAINING_STACK = {"torch", "torchvision", "timm", "onnx", "onnxscript", "dvclive", "dvc"}


def module_file(module: str) -> Path:
    path = SRC.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@cache
def imports_of(file: Path) -> tuple[set[str], set[str]]:
    """The imgpipe modules and the third-party top-level packages ``file`` imports anywhere
    (lazy imports inside functions included)."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("imgpipe."):
                module = name
                while not module_file(module).exists():  # `from imgpipe.x import function`
                    module = module.rsplit(".", 1)[0]
                ours.add(module)
            elif name != "imgpipe":
                theirs.add(name.split(".")[0])
    return ours, theirs


def closure(start: Path, skip: set[str] = frozenset()) -> set[str]:  # type: ignore[assignment]
    """Every imgpipe module ``start`` reaches, not following modules in ``skip``."""
    seen: set[str] = set()
    todo = list(imports_of(start)[0])
    while todo:
        module = todo.pop()
        if module in seen or module in skip:
            continue
        seen.add(module)
        todo += imports_of(module_file(module))[0]
    return seen - skip


def dvc_stages() -> dict[str, dict[str, Any]]:
    stages: dict[str, dict[str, Any]] = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())[
        "stages"
    ]
    return stages


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_yaml_deps_are_exactly_what_the_stage_imports(stage: str) -> None:
    declared = dvc_stages()[stage]
    script = re.search(r"python (stages/\S+\.py)", declared["cmd"])
    assert script, declared["cmd"]
    imported = {
        module_file(m).relative_to(REPO_ROOT).as_posix()
        for m in closure(REPO_ROOT / script.group(1), skip=set(NOT_DEPS))
    }
    listed = {d for d in declared["deps"] if d.startswith("src/")}
    assert script.group(1) in declared["deps"]
    assert imported - listed == set(), f"{stage} imports these but dvc.yaml does not list them"
    assert listed - imported == set(), f"{stage} lists these in dvc.yaml but does not import them"


def test_train_params_in_dvc_yaml_are_the_training_config() -> None:
    listed = set(dvc_stages()["train"]["params"])
    assert listed == set(TrainConfig.model_fields)


@pytest.mark.parametrize(
    ("stage", "section", "schema", "cannot_change_output"),
    [
        ("download", "data", DataParams, set()),
        ("preprocess", "preprocess", PreprocessParams, {"workers"}),
    ],
)
def test_data_params_in_dvc_yaml_are_their_schema_section(
    stage: str, section: str, schema: type[BaseModel], cannot_change_output: set[str]
) -> None:
    """A key added to the schema but not to the stage's params would never trigger a rerun."""
    listed = set(dvc_stages()[stage]["params"])
    keys = {f"{section}.{name}" for name in set(schema.model_fields) - cannot_change_output}
    assert listed == keys


def allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def package_files(package: str) -> list[Path]:
    return sorted(module_file(package).parent.glob("*.py"))


def test_every_module_lives_in_a_sub_package_with_rules_or_is_plumbing() -> None:
    top = {p.stem for p in (SRC / "imgpipe").glob("*.py")} - {"__init__"}
    assert top == {"cli", "errors", "io", "params", "report", "stage"}
    packages = {p.parent.name for p in (SRC / "imgpipe").glob("*/__init__.py")}
    assert {f"imgpipe.{name}" for name in packages} == set(RULES)


@pytest.mark.parametrize("package", sorted(RULES))
def test_sub_package_imports_only_what_its_rule_allows(package: str) -> None:
    prefixes, training_stack = RULES[package]
    for file in package_files(package):
        ours, theirs = imports_of(file)
        outside = {m for m in ours if not allowed(m, (package, *PLUMBING, *prefixes))}
        assert outside == set(), f"{file.name} imports {outside}, outside {package}'s rule"
        if not training_stack:
            reached = closure(file)
            third_party = theirs.union(*(imports_of(module_file(m))[1] for m in reached))
            assert third_party & TRAINING_STACK == set(), f"{file.name} reaches {third_party}"


@pytest.mark.parametrize("package", sorted(RULES))
def test_sub_package_init_runs_no_code(package: str) -> None:
    """Python runs a package's __init__.py on every import of its modules: it stays a docstring."""
    tree = ast.parse(module_file(package).read_text(encoding="utf-8"))
    code = [
        n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    ]
    assert code == [], f"{package}/__init__.py runs code"


def test_plumbing_imports_nothing_of_imgpipe() -> None:
    for module in PLUMBING:
        assert imports_of(module_file(module))[0] == set(), module


def test_no_import_cycles() -> None:
    modules = {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for p in SRC.rglob("*.py")
    }
    for module in sorted(modules):
        assert module not in closure(module_file(module)), f"{module} imports itself, in a cycle"


def pins(lock: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", lock.read_text(), re.MULTILINE)
    return {name.lower(): version for name, version in found}


def test_serve_lock_is_the_full_locks_versions_without_the_training_stack() -> None:
    serve, full = pins(REPO_ROOT / "requirements-serve.lock"), pins(REPO_ROOT / "requirements.lock")
    assert {"fastapi", "uvicorn", "onnxruntime", "pillow", "numpy"} <= set(serve)
    assert set(serve) & {"torch", "torchvision", "timm", "onnx", "pandas", "dvc"} == set()
    assert {name: v for name, v in serve.items() if full.get(name) != v} == {}
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    serve_stage = dockerfile[dockerfile.index("AS serve") :]
    assert "pip install -r requirements-serve.lock" in serve_stage
