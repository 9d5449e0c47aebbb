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

from imgpipe.config import TrainConfig
from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"
# Modules a stage imports that cannot change its outputs, so they are no dvc.yaml deps (the
# comment at the top of dvc.yaml says the same). What they import is not followed either.
NOT_DEPS = {
    "imgpipe.runner": "sets up logging and turns user errors into one line",
    "imgpipe.errors": "the exception type user errors are raised as",
    "imgpipe.params": "validates params.yaml; DVC tracks the values themselves",
}
# The runtime side: what serves, predicts and monitors the exported model. None of it may
# import the training stack, not even lazily inside a function.
RUNTIME = {
    "imgpipe.errors", "imgpipe.io", "imgpipe.layout", "imgpipe.images", "imgpipe.runtime",
    "imgpipe.classify", "imgpipe.features", "imgpipe.drift", "imgpipe.serving",
}  # fmt: skip
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


def test_runtime_side_never_imports_the_training_stack() -> None:
    for module in sorted(RUNTIME):
        files = {module_file(module)}
        if module_file(module).name == "__init__.py":
            files |= set(module_file(module).parent.glob("*.py"))
        for file in files:
            reached = closure(file) | {module}
            outside = {m for m in reached if m != "imgpipe" and not m.startswith(tuple(RUNTIME))}
            assert outside == set(), f"{file.name} reaches training modules {outside}"
            third_party = set().union(*(imports_of(module_file(m))[1] for m in reached))
            third_party |= imports_of(file)[1]
            assert third_party & TRAINING_STACK == set(), f"{file.name} imports {third_party}"


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
