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
