"""The part of a document generated from code: between a BEGIN and an END marker, the rest written by hand.
scripts/search_reference.py and scripts/event_reference.py print it, write it in place (--write) or check it
(--check, exit 1 when the committed text differs)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def committed(text: str, begin: str, end: str) -> str:
    """The generated part of the document's text (BEGIN to END, both included)."""
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[start:stop]


def main(argv: list[str] | None, *, doc: Path, begin: str, end: str, generate: Callable[[], str],
         description: str, script: str) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", action="store_true", help="replace the generated part of the doc")
    parser.add_argument("--check", action="store_true", help="exit 1 when the doc is out of date")
    args = parser.parse_args(argv)
    fresh = generate()
    if not (args.write or args.check):
        print(fresh)
        return 0
    text = doc.read_text(encoding="utf-8")
    old = committed(text, begin, end)
    if args.check:
        if old != fresh:
            print(f"{doc} is out of date: run python {script} --write", file=sys.stderr)
            return 1
        return 0
    doc.write_text(text.replace(old, fresh), encoding="utf-8")
    return 0
