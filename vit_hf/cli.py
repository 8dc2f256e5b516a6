"""What every command line of the project shares (`python -m convert`, `convert.timm`, `convert.google`,
`vit_hf.export`, and `vit_hf.train` through `respell_flags`): both flag spellings, one-line usage errors, `--debug`,
and the Hub reference `owner/name[@revision]`.

- Flags: each is declared once, in one spelling (`--image-size` in the converters, `--push_to_hub` in the training
  script, as transformers' examples spell theirs); the other spelling (`--image_size`, `--push-to-hub`) is accepted
  too and never shown in `--help`.
- Errors: a usage error is one line naming the flag, exit status 2 (argparse's own status); `--debug`, or
  `VIT_HF_DEBUG=1` in the environment, shows the traceback of any refused run, for a bug report.

Not imported by `import vit_hf` or by the remote-code files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Iterator, Sequence

DEBUG_ENV = "VIT_HF_DEBUG"
DEBUG_HELP = f"show the full traceback of an error (for a bug report; also {DEBUG_ENV}=1)"
# owner/name[@revision], as the Hub spells repo ids (a path that exists locally is never read as one)
HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[^\s@]+))?$")


def parse_hub_ref(text: str) -> tuple[str, str | None] | None:
    """`owner/name` or `owner/name@rev` -> (repo id, revision or None); anything else -> None."""
    m = HUB_REF.match(text)
    return (m.group("repo"), m.group("rev")) if m else None


def hub_revision(text: str, revision: str | None) -> tuple[str, str | None]:
    """(repo id, revision) of a Hub reference and a `--revision` flag, which may name the revision once or agree;
    a disagreement is a ValueError naming both."""
    repo, rev = parse_hub_ref(text) or (text, None)
    if rev and revision and rev != revision:
        raise ValueError(f"{text} names revision {rev} but --revision says {revision}: give one")
    return repo, rev or revision


def respell_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`argv` with each long flag the parser does not know, but knows with `_` and `-` swapped, in the parser's
    spelling (`--image_size 32` -> `--image-size 32`, `--push-to-hub=x` -> `--push_to_hub=x`; abbreviations too, as
    argparse allows them). Values and unknown flags are left as they are (argparse reports those).

    For a parser built elsewhere (the training script): `parser.parse_args(respell_flags(parser, sys.argv[1:]))`.
    """
    known = {s for s in parser._option_string_actions if s.startswith("--")}  # every option string argparse holds
    out, options_done = [], False
    for token in argv:
        if options_done or not token.startswith("--") or token == "--":
            options_done = options_done or token == "--"
            out.append(token)
            continue
        flag, eq, value = token.partition("=")
        if not any(k.startswith(flag) for k in known):  # neither a flag nor an abbreviation argparse would take
            for other in ("--" + flag[2:].replace("_", "-"), "--" + flag[2:].replace("-", "_")):
                if any(k.startswith(other) for k in known):
                    flag = other
                    break
        out.append(flag + eq + value)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with both flag spellings accepted (`respell_flags`) and a usage error in one line that says
    where the flags are listed."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(respell_flags(self, args), namespace)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """`--debug` among the arguments (either spelling needs none) or `VIT_HF_DEBUG` set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def no_transformers_bars(keep_hub_bars: bool = False) -> Iterator[None]:
    """transformers' progress bars ("Loading weights", "Writing model shards") off for the block: a command that loads
    and saves small things several times would print a bar each. `keep_hub_bars` leaves the Hub's download bars on
    (long downloads show progress). Afterwards each switch is as it was: transformers' switch also sets the Hub's, and
    a caller (a test, a notebook) may have either one off."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    if keep_hub_bars and hub_bars:
        enable_progress_bars()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        (enable_progress_bars if hub_bars else disable_progress_bars)()
