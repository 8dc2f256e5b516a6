"""The converters' library and command-line surface: one keyword API per source, every CLI built from it, flags
declared once in one documented spelling (the other accepted), one Hub-reference parser, `--debug`, and no import
cycle in convert/ or vit_hf/export."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm_variants import VARIANTS, H, make_timm, save_state

import convert.__main__ as front_door
from convert import google as convert_google
from convert import timm as convert_timm
from convert.common import OPTION_NAMES, ConversionError, converter_parser, keywords, run_cli
from convert.timm_hub import convert_timm_folder
from convert.transformers import convert_transformers_folder
from vit_hf.cli import hub_revision, no_transformers_bars, parse_hub_ref, respell_flags

REPO = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {
    "timm-file": convert_timm.convert_timm_file,
    "timm-folder": convert_timm_folder,
    "npz": convert_google.convert_npz_file,
    "transformers-folder": convert_transformers_folder,
}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every converter / export parser, as its CLI builds it."""
    from vit_hf.export.__main__ import build_parser as export_parser

    return {
        "convert": front_door.build_parser(),
        "convert.timm": converter_parser("python -m convert.timm", convert_timm.__doc__, "", "",
                                         convert_timm.add_timm_arguments),
        "convert.google": converter_parser("python -m convert.google", convert_google.__doc__, "", "",
                                           convert_google.add_google_arguments),
        "vit_hf.export": export_parser(),
    }


# ----------------------------------------------------------------------------------------------- the keyword API
def test_every_entry_point_has_the_same_shape():
    """(source, out_dir, *, the source's own keywords, **options) -> Path, for every format; the front door's table
    is these entry points."""
    assert front_door.CONVERTERS == ENTRY_POINTS
    for kind, entry in ENTRY_POINTS.items():
        params = list(inspect.signature(entry).parameters.values())
        assert [p.kind for p in params[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2, kind
        assert params[1].name == "out_dir", kind
        assert params[-1].kind is inspect.Parameter.VAR_KEYWORD, kind
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:-1]), kind
        assert inspect.signature(entry).return_annotation in (Path, "Path"), kind


def test_unknown_keyword_is_a_type_error_naming_the_entry_point(tmp_path):
    with pytest.raises(TypeError, match=r"convert_timm_file\(\) got unexpected keyword argument\(s\) heads"):
        convert_timm.convert_timm_file(tmp_path / "x.pth", tmp_path / "out", heads=4)
    with pytest.raises(TypeError, match=r"convert_transformers_folder\(\) got unexpected keyword argument\(s\) prefix"):
        convert_transformers_folder(tmp_path, tmp_path / "out", prefix="params/")


def test_keyword_call_writes_what_the_cli_writes(tmp_path, capsys):
    """convert_timm_file(src, out, num_heads=H, image_size=48) and `python -m convert.timm src out --num-heads H
    --image-size 48` write the same model."""
    src = save_state(make_timm(VARIANTS[0], seed=5).state_dict(), tmp_path / "w", "safetensors")
    assert convert_timm.convert_timm_file(src, tmp_path / "api", num_heads=H, image_size=48) == tmp_path / "api"
    with pytest.raises(SystemExit) as exc:
        run_cli(convert_timm.main, [str(src), str(tmp_path / "cli"), "--num-heads", str(H), "--image-size", "48"])
    assert exc.value.code == 0
    api, cli = (load_file(tmp_path / d / "model.safetensors") for d in ("api", "cli"))
    assert api.keys() == cli.keys() and all(torch.equal(api[k], cli[k]) for k in api)
    config = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("api", "cli")]
    assert config[0] == config[1] and config[0]["image_size"] in (48, [48, 48])


def test_format_flags_are_read_off_the_entry_points():
    """A flag belongs to the formats whose entry point takes it as a keyword; shared options belong to all."""
    assert front_door.FORMAT_FLAGS["model_name"] == ("timm-file",)
    assert front_door.FORMAT_FLAGS["use_ema"] == ("timm-file",)
    assert front_door.FORMAT_FLAGS["num_heads"] == ("timm-file", "timm-folder")
    assert front_door.FORMAT_FLAGS["gelu"] == ("npz",)
    for name, kinds in front_door.FORMAT_FLAGS.items():
        assert name not in OPTION_NAMES
        assert kinds == tuple(k for k, entry in ENTRY_POINTS.items() if name in keywords(entry))
    flags = {s for a in front_door.build_parser()._actions for s in a.option_strings}
    for name in (*front_door.FORMAT_FLAGS, *OPTION_NAMES):  # every keyword is a front-door flag, dashed
        if name not in ("source_repo", "source_commit"):  # set by the front door from SOURCE
            assert "--" + name.replace("_", "-") in flags, name


def test_flag_given_for_another_format_is_refused(tmp_path, capsys):
    src = save_state(make_timm(VARIANTS[0], seed=5).state_dict(), tmp_path / "w", "safetensors")
    with pytest.raises(SystemExit) as exc:
        run_cli(front_door.main, [str(src), str(tmp_path / "out"), "--num-heads", str(H), "--gelu", "exact"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == "error: --gelu does not apply to a timm state dict (the SOURCE given): drop it\n"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- flags
def _add_argument_flags(path: Path) -> list[str]:
    """Option strings of the `add_argument(...)` calls in a source file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            out += [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
    return out


def test_each_flag_is_declared_once():
    """Across convert/ (and separately vit_hf/export) no option string is declared twice: the parsers share their
    declarations instead of copying them."""
    for files in (sorted((REPO / "convert").glob("*.py")), sorted((REPO / "vit_hf" / "export").glob("*.py"))):
        flags = [f for path in files for f in _add_argument_flags(path)]
        assert sorted(f for f in set(flags) if flags.count(f) > 1) == [], files[0].parent


def _value_for(action: argparse.Action) -> list[str]:
    if action.nargs == 0:
        return []
    value = str(action.choices[-1]) if action.choices else "1"
    return [value] * (3 if action.nargs == "+" else 1)


@pytest.mark.parametrize("cli", ["convert", "convert.timm", "convert.google", "vit_hf.export"])
def test_both_spellings_are_accepted_and_one_is_documented(cli):
    parser = parsers()[cli]
    help_text = parser.format_help()
    positional = ["a", "b"]
    for action in parser._actions:
        flags = [s for s in action.option_strings if s.startswith("--") and s != "--help"]
        if not flags:
            continue
        documented = flags[0]
        other = "--" + (documented[2:].replace("-", "_") if "-" in documented[2:] else documented[2:].replace("_", "-"))
        if other == documented:
            continue
        assert other not in help_text, (cli, other)
        value = _value_for(action)
        a = parser.parse_args([*positional, documented, *value])
        b = parser.parse_args([*positional, other, *value])
        assert a == b and getattr(a, action.dest) != action.default, (cli, documented)
        c = parser.parse_args([*positional, f"{other}={value[0]}"]) if len(value) == 1 else a
        assert c == a, (cli, other)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        front_door.build_parser().parse_args(["a", "b", "--num_heads", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert err == ("python -m convert: error: argument --num-heads: '0' must be a positive integer (see python -m "
                   "convert --help)\n")
    for cli, parser in parsers().items():
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["a", "b", "--no-such-flag"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err == (f"{parser.prog}: error: unrecognized arguments: --no-such-flag (see "
                                               f"{parser.prog} --help)\n"), cli


def test_respell_flags_for_a_parser_built_elsewhere():
    """How vit_hf.train's parser (underscore flags, transformers' convention) accepts the dashed spelling too."""
    p = argparse.ArgumentParser()
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--per_device_train_batch_size", type=int)
    argv = ["--push-to-hub", "--per-device-train-batch-size=4", "--", "--not-a-flag"]
    assert respell_flags(p, argv) == ["--push_to_hub", "--per_device_train_batch_size=4", "--", "--not-a-flag"]
    args = p.parse_args(respell_flags(p, argv[:2]))
    assert args.push_to_hub and args.per_device_train_batch_size == 4
    assert respell_flags(p, ["--unknown-flag", "x"]) == ["--unknown-flag", "x"]  # argparse names it
    assert p.parse_args(respell_flags(p, ["--per-device-train", "2"])).per_device_train_batch_size == 2  # abbreviated


# ----------------------------------------------------------------------------------------------- Hub references
def test_one_hub_reference_parser():
    assert parse_hub_ref("owner/name") == ("owner/name", None)
    assert parse_hub_ref("owner/name@v1.0") == ("owner/name", "v1.0")
    assert parse_hub_ref("./owner/name") is None and parse_hub_ref("a/b/c") is None and parse_hub_ref("x") is None
    assert hub_revision("owner/name@v1", None) == ("owner/name", "v1")
    assert hub_revision("owner/name", "v2") == ("owner/name", "v2")
    assert hub_revision("owner/name@v1", "v1") == ("owner/name", "v1")
    with pytest.raises(ValueError, match="names revision v1 but --revision says v2: give one"):
        hub_revision("owner/name@v1", "v2")
    import convert.source
    import vit_hf.export.source

    for module in (convert.source, vit_hf.export.source):  # both CLIs use this parser, no copy of their own
        assert module.parse_hub_ref is parse_hub_ref and module.hub_revision is hub_revision


@pytest.mark.parametrize("cli", ["convert", "vit_hf.export"])
def test_revision_given_twice_differently_is_one_line(cli, tmp_path, capsys):
    """Checked before anything is downloaded (the Hub is offline here: any request would fail differently)."""
    if cli == "convert":
        with pytest.raises(SystemExit) as exc:
            run_cli(front_door.main, ["owner/name@v1", str(tmp_path / "out"), "--revision", "v2"])
        code = exc.value.code
    else:
        from vit_hf.export.__main__ import main

        code = main(["owner/name@v1", str(tmp_path / "out"), "--revision", "v2"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: owner/name@v1 names revision v1 but --revision says v2: give one\n"


# ----------------------------------------------------------------------------------------------- progress bars
def bar_switches() -> tuple[bool, bool]:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()


def set_bar_switches(transformers_on: bool, hub_on: bool) -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    (hf_logging.enable_progress_bar if transformers_on else hf_logging.disable_progress_bar)()
    (enable_progress_bars if hub_on else disable_progress_bars)()  # after: transformers' switch sets the Hub's


@pytest.mark.parametrize("start", [(True, True), (True, False), (False, True), (False, False)])
def test_progress_bar_switches_are_given_back_as_they_were(start, tmp_path):
    """transformers' bars are off inside the block (the Hub's too, unless kept), and afterwards both switches are as
    the caller had them, in every combination (transformers' switch also sets the Hub's): for the shared context
    manager, and for the converter CLI and vit_hf.export's loading run in-process, as a notebook or a test runs them."""
    from vit_hf.export.source import load_source

    before = bar_switches()
    src = save_state(make_timm(VARIANTS[0], seed=5).state_dict(), tmp_path / "w", "safetensors")
    try:
        for keep_hub_bars in (False, True):
            set_bar_switches(*start)
            with no_transformers_bars(keep_hub_bars=keep_hub_bars):
                assert bar_switches() == (False, keep_hub_bars and start[1])
            assert bar_switches() == start
        set_bar_switches(*start)
        with pytest.raises(SystemExit) as exc:
            run_cli(convert_timm.main, [str(src), str(tmp_path / "vit"), "--num-heads", str(H)])
        assert exc.value.code == 0 and bar_switches() == start
        assert load_source(tmp_path / "vit", None).model is not None  # what vit_hf.export loads
        assert bar_switches() == start
    finally:
        set_bar_switches(*before)


# ----------------------------------------------------------------------------------------------- --debug
@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, tmp_path, monkeypatch, capsys):
    argv = [str(tmp_path / "missing.pth"), str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        run_cli(front_door.main, argv)
    assert exc.value.code == 2 and "no such file or folder" in capsys.readouterr().err
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("VIT_HF_DEBUG", "1")
    with pytest.raises(ConversionError, match="no such file or folder"):
        run_cli(front_door.main, argv)
    from vit_hf.export import ExportError
    from vit_hf.export.__main__ import main as export_main

    with pytest.raises(ExportError, match="no such folder"):
        export_main([str(tmp_path / "missing"), str(tmp_path / "onnx"), *(["--debug"] if how == "flag" else [])])


# ----------------------------------------------------------------------------------------------- imports
def _import_graph(*packages: str) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports, at any depth of its code (imports inside functions and under
    TYPE_CHECKING count)."""
    modules = {}
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = base.split(".")[: len(base.split(".")) - node.level + 1] if node.level else []
                root = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [root, *(f"{root}.{a.name}" for a in node.names)]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None




def test_no_import_cycle_in_convert_or_export():
    graph = _import_graph("convert", "vit_hf/export")
    graph = {k: {t for t in v if t in graph} for k, v in graph.items()}
    assert _cycle(graph) is None
    assert "convert.google" not in graph["convert.google_verify"] and "convert.google_verify" in graph["convert.google"]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None



def test_fault_table_names_a_test_for_every_row():
    """docs/faults-convert.md: every row names `FILE::TEST`, and that test exists."""
    import re

    table = (REPO / "docs" / "faults-convert.md").read_text()
    rows = [ln for ln in table.splitlines() if re.match(r"\| [CE]\d+ ", ln)]
    assert len(rows) >= 30
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row)
        assert named, row
        for file, test in named:
            tree = ast.parse((REPO / "tests" / file).read_text())
            assert test in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, (file, test)
