"""The floors of the package (ARCHITECTURE.md), enforced by reading every module's imports.

The rules are checked on the source text (`ast`), so a lazy import inside a function counts as much as one at the
top: what a module may import does not depend on when it imports it. Only the torch-free rule looks at the
module-level imports alone, because lazy imports are how the PyTorch parts stay out of the torch-free path.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "soli_hf"

#: The transformers-style model files: they travel beside the weights (`trust_remote_code`), so they import each
#: other and third-party packages only.
MODEL_FILES = {
    "soli_hf.configuration_soli",
    "soli_hf.modeling_soli",
    "soli_hf.processing_soli",
    "soli_hf.image_processing_soli",
    "soli_hf.image_transforms_soli",
    "soli_hf.tokenization_soli",
    "soli_hf.losses_soli",
    "soli_hf.pipeline_soli",
    # the dual-encoder Q-Former captioner (it reuses SOLI's image processing, losses' constants and pipeline)
    "soli_hf.configuration_dual_qformer",
    "soli_hf.modeling_dual_qformer",
    "soli_hf.processing_dual_qformer",
    "soli_hf.pipeline_dual_qformer",
    # the AlignCap region captioner (it reuses the dual-encoder family's encoders and soft prompt, SOLI's LSTM)
    "soli_hf.configuration_aligncap",
    "soli_hf.modeling_aligncap",
    "soli_hf.processing_aligncap",
    "soli_hf.pipeline_aligncap",
    "soli_hf.object_evidence_aligncap",
}
#: What may sit at the package root: the model files, the registration, the public loaders and the CLI.
ROOT_MODULES = MODEL_FILES | {"soli_hf", "soli_hf.registration", "soli_hf.captioner", "soli_hf.hub"}
ROOT_PACKAGES = {"batch", "bench", "cli", "data", "evaluation", "metrics", "onnx", "storage", "training"}
#: Floors: a module may import its own floor and the floors below it, never one above.
FLOORS = {
    "model": 0,
    "storage": 0,
    "metrics": 0,
    "data": 1,
    "onnx": 1,
    "captioner": 2,
    "training": 3,
    "evaluation": 3,
    "batch": 3,
    "bench": 4,
    "cli": 5,
}
#: Upper floors that a lower one may still use: the training loop and the evaluation report write their tables,
#: plots and peak memory with the measuring wing's writers (bench never imports them back).
ALLOWED_UPWARD = {("training", "bench"), ("evaluation", "bench")}
#: What the torch-free path (a Raspberry Pi with onnxruntime only) loads, and the packages it must not load.
TORCH_FREE = ("soli_hf.onnx.runtime", "soli_hf.captioner")
HEAVY = ("torch", "transformers", "accelerate", "datasets", "optimum", "torchvision")


@dataclass(frozen=True)
class Import:
    module: str  # the imported module, absolute
    line: int
    top_level: bool  # at module level (not inside a function or class body)
    relative: bool  # `from .x import y`


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> Iterator[Import]:
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    # `if TYPE_CHECKING:` blocks never run: their imports are left out.
    type_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for child in ast.walk(node)
    }
    top_level = {id(node) for node in tree.body}
    top_level |= {id(child) for node in tree.body if isinstance(node, ast.If | ast.Try) for child in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, id(node) in top_level, False)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:  # `from . import x` and `from .pkg import module` import a module
                candidate = f"{prefix}.{alias.name}"
                yield Import(
                    candidate if candidate in MODULES else prefix, node.lineno, id(node) in top_level, node.level > 0
                )


IMPORTS = {name: list(_imports(name)) for name in MODULES}


def _internal(imports: list[Import]) -> set[str]:
    return {i.module for i in imports if i.module in MODULES and i.module != "soli_hf"}


def floor(name: str) -> str:
    """The floor of a soli_hf module."""
    if name in MODEL_FILES or name == "soli_hf.registration":
        return "model"
    if name == "soli_hf.captioner":
        return "captioner"
    if name == "soli_hf.hub":
        return "cli"  # publishing, used by the CLI and scripts
    return name.split(".")[1]


def test_the_package_root_holds_only_model_files_loaders_and_the_cli() -> None:
    root_modules = {name for name in MODULES if name.count(".") == 1 and not MODULES[name].name == "__init__.py"}
    assert root_modules <= ROOT_MODULES, f"modules at the root that belong in a floor: {root_modules - ROOT_MODULES}"
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert packages <= ROOT_PACKAGES, f"unexpected packages: {packages - ROOT_PACKAGES}"


@pytest.mark.parametrize("name", sorted(MODEL_FILES))
def test_model_files_import_only_each_other(name: str) -> None:
    # Beside the weights the package is not installed: only relative imports of the other model files resolve.
    wrong = [
        i for i in IMPORTS[name] if i.module.startswith("soli_hf") and (i.module not in MODEL_FILES or not i.relative)
    ]
    assert not wrong, f"{name} imports {[(i.module, i.line) for i in wrong]}: model files travel alone"


def test_floors_import_only_downwards() -> None:
    wrong = []
    for name, imports in IMPORTS.items():
        if name == "soli_hf":
            continue
        for imported in _internal(imports):
            low, high = floor(name), floor(imported)
            if FLOORS[high] > FLOORS[low] and (low, high) not in ALLOWED_UPWARD:
                wrong.append(f"{name} ({low}) imports {imported} ({high})")
    assert not wrong, "\n".join(wrong)


def test_the_measuring_wing_is_never_imported_by_the_model_data_metrics_or_onnx() -> None:
    wrong = [
        f"{name} imports {imported}"
        for name, imports in IMPORTS.items()
        for imported in _internal(imports)
        if imported.startswith("soli_hf.bench") and floor(name) in ("model", "storage", "metrics", "data", "onnx")
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {name: _internal(imports) for name, imports in IMPORTS.items()}
    # A package's __init__ re-exports its submodules: an import of a submodule by its own package is not a cycle.
    for name in graph:
        graph[name] = {m for m in graph[name] if not (MODULES[name].name == "__init__.py" and m.startswith(name))}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                cycles.append(" -> ".join(path[path.index(child) :] + [child]))
            elif child not in state:
                visit(child, path + [child])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("start", TORCH_FREE)
def test_the_torch_free_path_imports_no_torch_at_module_level(start: str) -> None:
    seen, todo, heavy = set(), [start], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for i in IMPORTS[name]:
            if not i.top_level:
                continue
            if i.module.split(".")[0] in HEAVY:
                heavy.append(f"{name}:{i.line} imports {i.module}")
            elif i.module in MODULES:
                todo.append(i.module)
        parent = name.rpartition(".")[0]
        # Importing a submodule runs its packages' __init__ first. The root's own imports of the PyTorch classes are
        # behind `_pytorch_stack_available()` (SOLI_HF_NO_TORCH=1 or no torch installed: skipped), which
        # tests/test_onnx.py checks by running the runtime in a process without torch.
        if parent in MODULES and parent != "soli_hf":
            todo.append(parent)
    assert not heavy, "\n".join(heavy)


def test_the_rules_see_the_imports() -> None:
    """The reader finds relative, absolute and lazy imports (so the rules above cannot pass by reading nothing)."""
    captioner = {i.module: i.top_level for i in IMPORTS["soli_hf.captioner"]}
    assert captioner["soli_hf.image_transforms_soli"] is True
    assert captioner["soli_hf.onnx.runtime"] is False  # inside OnnxCaptioner.from_pretrained
    assert "torch" in {i.module for i in IMPORTS["soli_hf.modeling_soli"]}
    assert floor("soli_hf.bench.latency") == "bench" and floor("soli_hf.modeling_soli") == "model"
