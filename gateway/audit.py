"""``python -m gateway.audit verify FILE``: is an access audit (or a model's decision history)
whole? It walks the hash chain (``components.core.audit``) and names the first line that does
not follow from the one before it, or the end a cut tail left; exit 0 when whole, 1 when not.

``python -m gateway.audit read FILE [--since T] [--until T]``: the events of a time window, one
JSON object a line (times in ISO 8601 with a zone).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

from components.core import audit, cli


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gateway.audit", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check the hash chain of an audit file or a history.jsonl")
    verify.add_argument("file")
    read = sub.add_parser("read", help="the events of a time window")
    read.add_argument("file")
    read.add_argument("--since", type=datetime.datetime.fromisoformat)
    read.add_argument("--until", type=datetime.datetime.fromisoformat)
    return ap


def _run(args, _) -> int:
    if args.command == "verify":
        verdict = audit.verify(args.file)
        if verdict.ok:
            print(f"{args.file}: whole, {verdict.lines} lines chained")
            return 0
        print(f"{args.file}: BROKEN at line {verdict.broken_line} of {verdict.lines}: {verdict.reason}")
        return 1
    for event in audit.read(args.file, args.since, args.until):
        print(json.dumps(event, sort_keys=True))
    return 0


def main(argv=None) -> int:
    outcome = {}
    code = cli.main(build_parser(), lambda a, e: outcome.setdefault("code", _run(a, e)), argv)
    return code or outcome.get("code", 0)


if __name__ == "__main__":
    sys.exit(main())
