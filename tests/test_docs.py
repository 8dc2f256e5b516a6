"""Every command in README.md and docs/*.md is run or checked, and the tracked files cite only what exists.

Conventions (docs/testing.md):
- Fenced `bash` and `python` blocks are run by default: the README first, then docs/*.md in name order, all in one
  temporary folder (the docs use the `out/vit-tiny` the README converts), one Python namespace per page.
  `python -m MODULE ARGS` runs the module in-process as `runpy` does (`sys.argv` set) and must exit 0;
  `python -c CODE` executes CODE; a Python block is executed.
- A block whose first line starts with `# checked, not run:` (followed by why, and which test runs it) is checked
  instead: every command's module exists and its own argparse parser accepts every flag (the whole command when it
  has no `...` or UPPER-CASE placeholder); accelerate's launch parser accepts the launch flags; `make` targets exist;
  `pip install` extras exist; repository paths exist. A checked Python block compiles and every name it imports
  exists.
- Inline `python -m ...` / `accelerate launch ...` spans in the prose get the same check, and so does every command
  of bench/README.md (none is run there: benchmarks).

The heavy commands are run elsewhere: the training commands by tests/test_train*.py, test_fsdp.py, test_multinode.py,
test_streaming.py and test_hub_datasets.py; exports by tests/test_export.py; Hub conversions by
tests/test_convert_source.py and test_convert_push.py; `python -m bench` suites by tests/test_bench.py (`--quick`).
`make demo` runs nowhere end to end (minutes); its training command is parsed here with vit_hf.train's parser.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import tokenize
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Pages other branches write at the same time as this one; links to them are kept, and the merge brings them.
NOT_YET_HERE = {"families.md", "faults-training.md", "faults-convert.md"}
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CHECKED = "# checked, not run:"
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str

    @property
    def checked(self) -> bool:
        return self.text.lstrip().startswith(CHECKED)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) in ("bash", "sh", "python")
    ]


def shell_commands(text: str) -> list[list[str]]:
    """One token list per command line: continuations joined, comments dropped."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            commands.append(tokens)
    return commands


def split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        key, value = tokens[0].split("=", 1)
        env[key] = value
        tokens = tokens[1:]
    return env, tokens


def is_placeholder(token: str) -> bool:
    return token == "..." or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", token))


# ------------------------------------------------------------------------------------------------- argparse parsers
class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


@contextlib.contextmanager
def _capturing_parsers():
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = original


def _run_module(module: str) -> None:
    """`python -m module` in this process. runpy warns that the module was imported before (by a test or an earlier
    command): expected here, the module runs again in a fresh `__main__` namespace as in a new interpreter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        runpy.run_module(module, run_name="__main__", alter_sys=False)


def module_parser(module: str) -> argparse.ArgumentParser:
    """The parser `python -m module` builds, caught at its first parse: the module's own code builds it."""
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    cwd, argv = os.getcwd(), sys.argv
    sys.argv = [module, "--help"]
    try:
        with _capturing_parsers(), contextlib.redirect_stdout(io.StringIO()):
            _run_module(module)
    except _Captured as caught:
        return caught.parser
    finally:
        sys.argv = argv
        os.chdir(cwd)
    raise AssertionError(f"python -m {module} parsed no arguments")


def check_with_parser(parser: argparse.ArgumentParser, args: list[str], what: str, flags: list[str] | None = None,
                      full: bool = True) -> None:
    """Every flag (of `flags`, default all of `args`) is the parser's; with no placeholder, all of `args` parses."""
    complete = full and not any(is_placeholder(a) for a in args)
    args = [a for a in args if a != "..."]
    for token in args if flags is None else flags:
        if token.startswith("-") and not re.fullmatch(r"-\d.*", token):
            flag = token.split("=", 1)[0]
            assert flag in parser._option_string_actions, f"{what}: {flag} is not a flag of {parser.prog}"
    if not complete:
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            raise AssertionError(f"{what}: {parser.prog} refuses {shlex.join(args)}: {err.getvalue()}") from e


def check_python_m(module: str, args: list[str], what: str, full: bool = True) -> None:
    if is_placeholder(module):
        return
    if module == "pytest":
        for path in args:
            if re.search(r"/|\.py\b", path):
                assert (ROOT / path.split("::")[0]).exists(), f"{what}: {path} does not exist"
        return
    if module == "bench":  # a dispatcher: `bench SUITE ARGS` hands ARGS to the suite's module
        import bench.__main__ as bench_main

        suite, args = (args[0], args[1:]) if args else ("", [])
        if suite in ("-h", "--help"):
            return
        if suite == "all":  # the sequence takes two switches of its own and passes the rest to every suite
            suite, args = "forward", [a for a in args if a not in ("--no-gate", "--quick")] + ["--quick"]
        if is_placeholder(suite) or not suite:
            return
        assert suite in bench_main.SUITES, f"{what}: unknown bench suite {suite!r}"
        module = bench_main.SUITES[suite][0]
    assert importlib.util.find_spec(module) is not None, f"{what}: no module {module}"
    check_with_parser(module_parser(module), args, what, full=full)


def check_command(tokens: list[str], what: str, full: bool = True) -> None:
    """`full`: the tokens are the whole command (a code block), not a mention in prose (an inline span)."""
    _, tokens = split_env(tokens)
    head = tokens[0]
    if head in ("python", "python3") and tokens[1] == "-m":
        check_python_m(tokens[2], tokens[3:], what, full)
    elif head in ("python", "python3") and tokens[1] == "-c":
        compile(tokens[2], what, "exec")
    elif head == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        assert tokens[1] == "launch", what
        rest = tokens[2:]
        if "-m" in rest:
            i = rest.index("-m")
            launch = [a for a in rest[:i] if a != "..."]
            check_with_parser(launch_command_parser(), [*launch, "-m", rest[i + 1], "ARGS"], what, flags=launch)
            check_python_m(rest[i + 1], rest[i + 2:], what, full)
        else:
            check_with_parser(launch_command_parser(), rest, what)
    elif head == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        for target in tokens[1:]:
            assert target in targets, f"{what}: no make target {target!r}"
    elif head == "pip":
        section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
        extras = re.findall(r"^([\w-]+) = \[", section, re.M)  # (tomllib is Python 3.11+; the package supports 3.10)
        for spec in tokens[2:]:
            for extra in re.findall(r"\[([^\]]*)\]", spec):
                for name in extra.split(","):
                    assert name in extras, f"{what}: no extra {name!r} in pyproject.toml"
    else:
        raise AssertionError(f"{what}: no check for the command {head!r}")
    for token in tokens:
        if re.match(r"(vit_hf|convert|bench|tests|docs|\.ci)/", token):
            assert (ROOT / token.split("::")[0]).exists(), f"{what}: {token} does not exist"


def check_python_block(block: Block) -> None:
    tree = ast.parse(block.text, block.where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{block.where}: {node.module} has no {alias.name}"


# ------------------------------------------------------------------------------------------------------ running
def run_command(tokens: list[str], what: str, monkeypatch) -> None:
    env, tokens = split_env(tokens)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert tokens[:1] in (["python"], ["python3"]), f"{what}: only python commands run here; mark it checked"
    if tokens[1] == "-c":
        exec(compile(tokens[2], what, "exec"), {"__name__": "__main__"})
        return
    assert tokens[1] == "-m", what
    cwd, argv = os.getcwd(), sys.argv
    sys.argv = [tokens[2], *tokens[3:]]
    try:
        _run_module(tokens[2])
    except SystemExit as e:
        assert e.code in (0, None), f"{what}: exit status {e.code}"
    finally:
        sys.argv = argv
        os.chdir(cwd)


def run_page(page: Path, monkeypatch) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only spins when the machine is busy
    try:
        _run_blocks(page, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _run_blocks(page: Path, monkeypatch) -> None:
    namespace: dict = {"__name__": "__main__"}
    for block in code_blocks(page):
        if block.checked:
            continue
        if block.lang == "python":
            exec(compile(block.text, block.where, "exec"), namespace)
        else:
            for tokens in shell_commands(block.text):
                run_command(tokens, f"{block.where}: {shlex.join(tokens)}", monkeypatch)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder every page runs in, after the README's own snippets ran there (they write out/vit-tiny)."""
    path = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        run_page(ROOT / "README.md", mp)
    return path


def test_readme_snippets_run(workdir):
    assert (workdir / "out/vit-tiny/config.json").is_file() and (workdir / "out/vit-tiny/README.md").is_file()


@pytest.mark.parametrize("page", [p.name for p in PAGES[1:]])
def test_docs_snippets_run(page, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    run_page(ROOT / "docs" / page, monkeypatch)


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in PAGES])
def test_checked_snippets_are_valid(page):
    """Blocks marked `# checked, not run:` name why, and every command in them would start as written."""
    for block in code_blocks(ROOT / page):
        if not block.checked:
            continue
        why = block.text.lstrip().splitlines()[0][len(CHECKED):].strip()
        assert why, f"{block.where}: say why the block is not run, and which test runs it"
        if block.lang == "python":
            check_python_block(block)
        else:
            for tokens in shell_commands(block.text):
                check_command(tokens, f"{block.where}: {shlex.join(tokens)}")


INLINE = re.compile(r"`((?:[A-Z_]+=\S+ )*(?:python -m|accelerate launch) [^`]+)`")


@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in PAGES])
def test_inline_commands_are_valid(page):
    text = FENCE.sub("", (ROOT / page).read_text())
    for m in INLINE.finditer(text):
        tokens = [t.strip("[]") for t in shlex.split(m.group(1))]
        tokens = [t for t in tokens if t and t != "|"]
        check_command(tokens, f"{page}: `{m.group(1)}`", full=False)


def test_bench_readme_commands_are_valid():
    """bench/README.md's commands are all checked, none run: they measure for minutes to hours (tests/test_bench.py
    runs every suite with `--quick`)."""
    page = ROOT / "bench/README.md"
    for block in code_blocks(page):
        for tokens in shell_commands(block.text):
            check_command(tokens, f"{block.where}: {shlex.join(tokens)}")
    for m in INLINE.finditer(FENCE.sub("", page.read_text())):
        tokens = [t for t in (t.strip("[]") for t in shlex.split(m.group(1))) if t and t != "|"]
        check_command(tokens, f"bench/README.md: `{m.group(1)}`", full=False)


def test_make_demo_trains_with_flags_the_trainer_accepts():
    """`make demo` is `python -m vit_hf.demo`; its training command is parsed with vit_hf.train's own parser."""
    assert re.search(r"^demo:.*\n\t\$\(PY\) -m vit_hf\.demo$", (ROOT / "Makefile").read_text(), re.M)
    assert re.search(r"^test:.*\n\t.*-m pytest", (ROOT / "Makefile").read_text(), re.M)
    assert "make test" in (ROOT / ".ci/run").read_text()
    from vit_hf.demo.__main__ import COMMON, RECIPES

    parser = module_parser("vit_hf.train")
    for name, recipe in RECIPES.items():
        check_with_parser(parser, ["--dataset_name", "data", "--output_dir", "out", *recipe, *COMMON], f"demo {name}")


def test_links_resolve():
    for page in [*PAGES, ROOT / "bench/README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if file.name in NOT_YET_HERE and not file.exists():
                continue  # written by other branches at the same time; the merge brings them
            assert file.exists(), f"{page.relative_to(ROOT)}: link to {target} (no such file)"
            if anchor and file.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
                assert anchor in slugs, f"{page.relative_to(ROOT)}: link to {target} (no such heading)"


def test_code_maps_name_existing_paths():
    """The `text` code maps: a line's first word naming a file or folder exists (indented: inside the folder above)."""
    checked = []
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m.group(1) != "text":
                continue
            folder = ""
            for line in m.group(2).splitlines():
                word = line.split()[0] if line.strip() else ""
                if not re.fullmatch(r"[\w.-]+(/[\w.-]*)?", word) or not re.search(r"/|\.py$|\.md$|^Makefile$", word):
                    continue
                indented = line.startswith(" ")
                path = folder + word if indented else word
                folder = folder if indented else word
                assert (ROOT / path).exists(), f"{page.relative_to(ROOT)}: the code map names {path}: no such path"
                checked.append(path)
    assert len(checked) > 20, checked


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# -------------------------------------------------------------------------------------- what the tracked files cite
def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / p for p in out.stdout.split("\0") if p and (ROOT / p).is_file()]


TEXT = ("*.py", "*.md", "*.sh", "*.toml", "Makefile", ".ci/*")
TOP = sorted({p.relative_to(ROOT).parts[0] for p in tracked()} | {"reference"})
# Offending lines in files other helpers own right now; the lead applies the fixes listed in the docs branch's report
# after merging, and then empties this table (an entry that no longer matches fails, so it cannot linger).
PENDING: dict[str, list[str]] = {}


def _offences(pattern: re.Pattern, files: list[Path], ok=lambda m, path: False) -> list[str]:
    found = []
    for path in files:
        if path == Path(__file__).resolve():
            continue  # this file names what it looks for
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in pattern.finditer(line):
                if not ok(m, path):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return found


def _without_pending(found: list[str]) -> list[str]:
    def pending(entry: str) -> bool:
        file, text = entry.split(":", 1)[0], entry.split(": ", 1)[1]
        return any(snippet in text for snippet in PENDING.get(file, []))

    return [entry for entry in found if not pending(entry)]


def test_pending_entries_still_match():
    for file, snippets in PENDING.items():
        text = (ROOT / file).read_text()
        for snippet in snippets:
            assert snippet in text, f"{file}: {snippet!r} was fixed: remove it from PENDING"


def test_cited_repository_paths_exist():
    tops = "|".join(re.escape(t) for t in TOP if not t.startswith(".") or t == ".ci")
    pattern = re.compile(rf"(?<![\w/.:<-])((?:{tops})/[\w./<>*{{}}-]*[\w>*}}])")

    def ok(m, path):
        cited = m.group(1)
        module, _, attr = cited.rpartition(".")  # tests/npz_factory.Variant: a module's attribute
        return (
            any(base.exists() for base in (ROOT / cited, path.parent / cited, ROOT / f"{module}.py"))
            or re.search(r"[<*{]", cited) is not None
            or Path(cited).name in NOT_YET_HERE
        )

    found = _offences(pattern, tracked(*TEXT), ok)
    assert not _without_pending(found), "paths the repository does not hold:\n" + "\n".join(_without_pending(found))


def test_nothing_shipped_to_the_hub_names_a_path_outside_the_package():
    shipped = [*sorted((ROOT / "vit_hf").glob("*_vit_hf.py")), ROOT / "model_card.md"]
    pattern = re.compile(
        r"(?<![\w.])(?:[\w.-]+/)+[\w.-]+\.(?:py|md|sh|json|toml|txt)\b"  # a file path
        r"|\b(?:tests|bench|docs|convert|reference)/"  # a folder of the repository, not of the package
    )
    found = _without_pending(_offences(pattern, shipped))
    assert not found, "paths outside the package in what the Hub receives:\n" + "\n".join(found)


def test_no_issue_numbers_in_code_or_docs():
    pattern = re.compile(r"(?i)\bissues?\s*#?\d+|\bissue\s+\d+'s\b")
    found = _without_pending(_offences(pattern, tracked(*TEXT)))
    assert not found, "issue numbers (say what the code does instead):\n" + "\n".join(found)


@functools.cache
def _top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[-1] in ("py", "md", "json", "sh", "txt", "png") or parts[-1].startswith("__"):
        return True  # a file name (convert.json) or a module's dunder
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            if i == len(parts):
                return True
            rest = parts[i]
            return rest in _top_level_names(module) or (base.is_dir() and (base / f"{rest}.py").exists())
    return False


def test_qualified_module_names_exist():
    """`vit_hf.x.y`, `convert.x`, `bench.x` in comments, docstrings and docs name modules and attributes that exist."""
    pattern = re.compile(r"(?<![\w./-])((?:vit_hf|convert|bench)(?:\.[A-Za-z_]\w*)+)(?![\w/-]|\.(?:py|md)\b)")
    found = _offences(pattern, tracked(*TEXT), lambda m, path: _resolves(m.group(1)))
    found = _without_pending(found)
    assert not found, "names of modules or attributes that do not exist:\n" + "\n".join(found)


VARIABLE_NAMES = {"args", "model"}  # sibling modules named like the variables every comment talks about


def test_sibling_module_names_exist():
    """`loop.default_num_workers` in a comment or docstring of vit_hf/train/args.py names vit_hf/train/loop.py: the
    sibling module must define it. Only names that look defined (with `_` or a capital) are checked, and sibling names
    that are also installed libraries (`timm`, `transformers`) are skipped."""
    found = []
    for path in tracked("*.py"):
        siblings = {p.stem for p in path.parent.glob("*.py")} - {"__init__", "__main__"}
        siblings = {s for s in siblings - VARIABLE_NAMES if importlib.util.find_spec(s) is None}
        if not (path.parent / "__init__.py").exists() or not siblings:
            continue
        pattern = re.compile(rf"(?<![\w.])({'|'.join(sorted(siblings))})\.([A-Za-z_]\w*)")
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            docstring = tok.type == tokenize.STRING and re.match(r"[rRuU]?(\"\"\"|\'\'\')", tok.string)
            if tok.type != tokenize.COMMENT and not docstring:
                continue
            for m in pattern.finditer(tok.string):
                sibling, name = m.groups()
                if re.search(r"_|[A-Z]", name) and name not in _top_level_names(path.parent / f"{sibling}.py"):
                    found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {m.group(0)}")
    found = _without_pending(found)
    assert not found, "names a sibling module does not define:\n" + "\n".join(found)
