"""What every ``python -m components.<step>`` command shares: one
clear line for a user error (exit 2) instead of a traceback, and terminal progress bars."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable, Sequence


class UserError(Exception):
    """Bad input or a failed check: the message says what was wrong and what to do."""


def main(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace, list[str]], object],
         argv: Sequence[str] | None = None, allow_extra: bool = False) -> int:
    """Parse, run, and turn UserError/FileNotFoundError/ValueError into one line on stderr."""
    if allow_extra:
        # Unknown --options pass through (to Beam); a stray positional word is a typo.
        args, extra = parser.parse_known_args(argv)
        if extra and not extra[0].startswith("--"):
            parser.error(f"unexpected argument {extra[0]!r}")
    else:
        args, extra = parser.parse_args(argv), []
    try:
        run(args, extra)
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar on a terminal; silent (but still iterating) when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False)


def is_terminal() -> bool:
    return sys.stderr.isatty()


def add_options(parser: argparse.ArgumentParser, settings_class, skip: Iterable[str] = ()) -> None:
    """One ``--option`` per field of the dataclass ``settings_class``: its name, type and default
    come from the field and its help from ``field(metadata={"help": ...})``, so a setting is
    declared once. List fields take comma-separated values from ``metadata["choices"]``."""
    import dataclasses

    for f in dataclasses.fields(settings_class):
        if f.name in skip or not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = csv_choice(f.metadata["choices"]) if isinstance(default, list) else type(default)
        shown = ",".join(default) if isinstance(default, list) else default
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default,
                            help=(f.metadata.get("help", "") + f" (default: {shown})").strip())


def to_options(settings) -> list[str]:
    """The command-line options that ``add_options`` declared, filled from a settings dataclass
    (the inverse of ``options_to``): to run the same settings in another process."""
    import dataclasses

    out = []
    for f in dataclasses.fields(settings):
        if f.init:
            value = getattr(settings, f.name)
            out += ["--" + f.name.replace("_", "-"), ",".join(value) if isinstance(value, list) else str(value)]
    return out


def options_to(settings_class, args: argparse.Namespace, **given):
    """The dataclass built, by keyword, from the parsed options that ``add_options`` declared."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)
              if f.init and hasattr(args, f.name) and f.name not in given}
    return settings_class(**values, **given)


def csv_choice(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        wrong = [v for v in values if v not in choices]
        if wrong or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated subset of {', '.join(choices)}")
        return values
    return parse
