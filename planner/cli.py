"""`vdi planner ...`: score samples, run a workload against a manager, sweep user counts (docs/planner.md)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from planner.scoring import DEFAULT_THRESHOLD_S, DEFINITIONS, PlannerInputError, parse_samples, score_runs


def _cmd_score(args: argparse.Namespace) -> int:
    source = "stdin" if args.file == "-" else args.file
    try:
        if args.file == "-":
            samples = parse_samples(sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as handle:
                samples = parse_samples(handle)
        result = score_runs(samples, args.threshold_a, args.threshold_b, args.definition)
    except OSError as exc:
        print(f"vdi planner score: cannot read {source}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except PlannerInputError as exc:
        print(f"vdi planner score: {source} {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def build_parser(prog: str = "vdi planner") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Measure how many users a platform supports "
                                                            "(View Planner's method; docs/planner.md).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("score", help="score response-time samples given as JSON Lines",
                       description="Read samples, one JSON object a line: {\"users\": 96, \"desktop\": \"d1\", "
                                   "\"group\": \"A\", \"operation\": \"word-modify\", \"seconds\": 0.41}; print the "
                                   "score, each user count's Group A and B p95 (nearest rank) and whether it passed.")
    p.add_argument("file", help="the samples (JSON Lines); - for stdin")
    p.add_argument("--threshold-a", type=float, default=DEFAULT_THRESHOLD_S, help="Group A p95 threshold, s (1.5)")
    p.add_argument("--threshold-b", type=float, default=DEFAULT_THRESHOLD_S, help="Group B p95 threshold, s (1.5)")
    p.add_argument("--definition", choices=DEFINITIONS, default="run",
                   help="run: the largest passing user count (the paper); desktop: the most desktops passing "
                        "on their own p95")
    p.set_defaults(func=_cmd_score)
    from planner.runner import add_commands

    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
