"""Layering: the DSL and validation are pure; import-linter contracts hold. The repository is self-contained,
names and step paths are spelt in one module, and docs/architecture.md names the modules as they are. Size: no
function over 80 lines and no class over 120, counted with `ast` from the `def` or `class` line to the last line of
the body (docstrings, comments and blank lines included; decorators not); nested functions and methods count on
their own, named like `Class.method` or `outer.inner`."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from flujo_dagster import names

ROOT = Path(__file__).resolve().parent.parent


def _modules_after_import(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def test_dsl_imports_neither_dagster_nor_pydantic_ai() -> None:
    loaded = _modules_after_import("flujo_dagster.dsl")
    assert "flujo_dagster.dsl" in loaded
    assert not {m for m in loaded if m == "dagster" or m.startswith("dagster.")}
    assert not {m for m in loaded if m == "pydantic_ai" or m.startswith("pydantic_ai.")}


def test_validation_imports_neither_dagster_nor_pydantic_ai() -> None:
    loaded = _modules_after_import("flujo_dagster.validation")
    assert "flujo_dagster.validation" in loaded
    assert "dagster" not in loaded and "pydantic_ai" not in loaded


def test_top_level_package_defers_dagster_until_used() -> None:
    loaded = _modules_after_import("flujo_dagster")
    assert "dagster" not in loaded
    code = "import sys, flujo_dagster; flujo_dagster.build_definitions; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 4 kept, 0 broken." in out.stdout


# --- the repository is self-contained; conventions have one owner ---------------------------------------------------

PACKAGE = ROOT / "flujo_dagster"
NAMES = PACKAGE / "names.py"


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in out.stdout.split("\0") if name]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):  # binary (screenshots), or deleted but not yet staged
        return None


def test_no_tracked_file_cites_a_file_outside_the_repository() -> None:
    outside = ("DESIGN" + ".md", "../" + "shared")  # split: this file is tracked too
    texts = {p: _text(p) for p in _tracked_files() if p.name != "CHANGELOG.md"}
    assert len(texts) > 100 and ROOT / "docs" / "architecture.md" in texts
    cited = sorted(
        f"{p.relative_to(ROOT)}: {word}" for p, text in texts.items() if text for word in outside if word in text
    )
    assert cited == []


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are statements of their own: docstrings (module, class, function,
    attribute), which may mention a tag in prose."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in `path` that is not a docstring, f-string parts included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_string_scan_sees_literals_and_skips_docstrings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Writes `flujo/kind`."""\nTAG = "flujo/x"\nLABEL = f"flujo/{TAG}"\n', encoding="utf-8")
    assert [text for _, text in _string_constants(sample)] == ["flujo/x", "flujo/"]


def test_flujo_tags_are_spelt_only_in_the_names_module() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _package_modules()
        if path != NAMES
        for line, text in _string_constants(path)
        if text.startswith("flujo/")
    ]
    assert found == []
    assert any(text.startswith("flujo/") for _, text in _string_constants(NAMES))


def test_step_paths_are_built_only_in_the_names_module() -> None:
    """Every step path is built by `names.step_path` and its siblings: no other module spells the separator,
    so none can build a path of its own or split one back into parts."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in _package_modules()
        if path != NAMES
        for line, text in _string_constants(path)
        if names.PATH_SEPARATOR in text
    ]
    assert found == []


def test_step_paths() -> None:
    loop = names.step_path("digest", "loop", "refine")
    assert loop == "digest > loop:refine"
    assert names.step_path(names.iteration_path(loop, 2), "agent", "draft") == "digest > loop:refine > i2 > agent:draft"
    assert names.child_path("digest", "schedule") == "digest > schedule"
    assert names.item_path("digest > map:each", 0) == "digest > map:each > [0]"
    assert names.key_path("digest", "topic") == "digest > key:topic"
    assert names.element_path("digest > map:each > approval:ok", "i3") == "digest > map:each > approval:ok [i3]"


def test_op_kinds_round_trip_as_plain_strings() -> None:
    tags = names.op_tags(names.OpKind.APPROVAL, "p > approval:review")
    assert tags == {names.KIND: "approval", names.STEP_PATH: "p > approval:review"}
    assert type(tags[names.KIND]) is str  # Dagster's serializer refuses enum members in op tags
    assert names.op_kind(tags) is names.OpKind.APPROVAL
    assert names.op_kind({}) is None and names.op_kind({names.KIND: "not_ours"}) is None
    assert names.OpKind.inline("loop") is names.OpKind.INLINE_LOOP


# --- docs/architecture.md names the package's modules as they are ----------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _doc_name(module: Path) -> str:
    """How docs/architecture.md names a module: its path in the package, adapter modules from inside adapter/."""
    relative = module.relative_to(PACKAGE).as_posix()
    return relative.removeprefix("adapter/")


def test_architecture_names_every_module() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    modules = [m for m in _package_modules() if m.name != "__init__.py"]
    assert len(modules) > 50
    missing = [_doc_name(m) for m in modules if not re.search(rf"(?<![\w/]){re.escape(_doc_name(m))}", text)]
    assert missing == [], "docs/architecture.md does not say where these modules fit"


def test_architecture_names_no_module_that_is_gone() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w/]+\.py)`", text))
    assert {"compile/compiler.py", "names.py"} <= named
    bases = (ROOT, PACKAGE, PACKAGE / "adapter")
    gone = sorted(n for n in named if not any((base / n).is_file() for base in bases))
    assert gone == []


# --- size: no function over 80 lines, no class over 120 ---------------------------------------------------------------

MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 120

ALLOWED: frozenset[str] = frozenset()
"""Temporary exceptions while code is being split, as `<module path in the package>:<qualified name>`, each with a
comment saying why. Empty: the interpreter, the approval tally and gate op and the two ledgers, listed while they
were being split, are all under the limits now."""


def sizes(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, str, int]]:
    """Every function and class under `tree`: (kind, qualified name, lines), outermost first."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{node.name}"
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            assert node.end_lineno is not None
            yield kind, name, node.end_lineno - node.lineno + 1
            yield from sizes(node, f"{name}.")
        else:
            yield from sizes(node, prefix)


def too_long(source: str) -> list[tuple[str, str, int]]:
    """The functions over MAX_FUNCTION_LINES and the classes over MAX_CLASS_LINES in `source`."""
    limits = {"function": MAX_FUNCTION_LINES, "class": MAX_CLASS_LINES}
    return [(kind, name, lines) for kind, name, lines in sizes(ast.parse(source)) if lines > limits[kind]]


def test_no_function_over_80_lines_and_no_class_over_120_in_the_package() -> None:
    offenders = [
        f"{module}:{name} is a {kind} of {lines} lines"
        for path in _package_modules()
        for module in [path.relative_to(PACKAGE).as_posix()]
        for kind, name, lines in too_long(path.read_text(encoding="utf-8"))
        if f"{module}:{name}" not in ALLOWED
    ]
    assert not offenders, (
        f"over {MAX_FUNCTION_LINES} lines (functions) or {MAX_CLASS_LINES} (classes); split them:\n"
        + "\n".join(offenders)
    )


def _function(name: str, lines: int, indent: str = "", keyword: str = "def") -> str:
    """The source of a function of exactly `lines` lines."""
    return f"{indent}{keyword} {name}():\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))


def _class(name: str, lines: int, members: str = "") -> str:
    """The source of a class of exactly `lines` lines, `members` included."""
    padding = lines - 1 - members.count("\n")
    return f"class {name}:\n{members}" + "".join(f"    y{i} = {i}\n" for i in range(padding))


def test_the_size_check_counts_nested_functions_methods_and_classes() -> None:
    source = (
        _function("long", 81)
        + _function("short", 80)
        + _class("Fits", 120, members=_function("method", 81, indent="    ", keyword="async def"))
        + _class("Big", 121)
        + "def outer():\n"
        + _function("inner", 81, indent="    ")
    )
    assert too_long(source) == [
        ("function", "long", 81),
        ("function", "Fits.method", 81),
        ("class", "Big", 121),
        ("function", "outer", 82),
        ("function", "outer.inner", 81),
    ]


def test_decision_tags_and_step_key_parts_have_one_owner() -> None:
    assert names.decision_tag("review") == "flujo/decision/review"
    assert names.decision_tag("each__review[i3]", "Ann") == "flujo/decision/each__review[i3]/Ann"
    assert names.decision_gate(names.decision_tag("each__review[i3]", "Ann")) == "each__review[i3]"
    assert names.decision_gate(names.decision_tag("review")) == "review"
    assert names.decision_gate("flujo/awaiting/review") is None
    assert names.step_key_parts("digest", True, names.INPUTS_OP) == ("digest_graph", "flujo_inputs")
    assert names.step_key("digest", True, names.INPUTS_OP) == "digest_graph.flujo_inputs"
    assert names.step_key_parts("digest", False, names.INPUTS_OP) == ("flujo_inputs",)


# --- docs/reliability.md cites only tests that exist ------------------------------------------------------------

RELIABILITY = ROOT / "docs" / "reliability.md"
CITATION = re.compile(r"\btests/([\w/]+\.py)(?:::(\w+))?")
"""`tests/<file>.py`, or `tests/<file>.py::<test>` (a parametrized test's `[id]` is not part of the name)."""


def _test_names(path: Path) -> set[str]:
    """The test functions pytest would collect by name: module-level ones and methods of classes."""
    tree = ast.parse(path.read_text())
    tops = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    methods = [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body if isinstance(m, ast.FunctionDef)]
    return {f.name for f in [*tops, *methods] if f.name.startswith("test_")}


def _missing_citations(text: str) -> list[str]:
    """The citations in `text` whose file does not exist, or whose file defines no test of that name."""
    missing = []
    for cited in CITATION.finditer(text):
        path = ROOT / "tests" / cited.group(1)
        if not path.is_file() or (cited.group(2) is not None and cited.group(2) not in _test_names(path)):
            missing.append(cited.group(0))
    return missing


def test_every_test_the_reliability_table_cites_exists() -> None:
    text = RELIABILITY.read_text()
    assert len(CITATION.findall(text)) > 50  # the table was read
    assert _missing_citations(text) == []


def test_the_citation_check_sees_a_missing_file_or_test() -> None:
    text = (
        "| a | b | c | `tests/test_config.py`, `tests/test_config.py::test_dagster_home_is_read_when_asked` |\n"
        "| a | b | c | `tests/test_nope.py`, `tests/test_config.py::test_nope`, `tests/test_config.py::_reads` |\n"
    )
    assert _missing_citations(text) == [
        "tests/test_nope.py",
        "tests/test_config.py::test_nope",
        "tests/test_config.py::_reads",
    ]
