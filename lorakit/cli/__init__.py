"""``lorakit`` command line: run, tasks, data fetch/export, bench, merge, diagnose.

Each subcommand lives in its own module, which adds its parser and does the work:
:mod:`~lorakit.cli.run` (``run``), :mod:`~lorakit.cli.data` (``tasks``, ``data fetch``,
``data export``), :mod:`~lorakit.cli.bench` (``bench``), :mod:`~lorakit.cli.merge` (``merge``)
and :mod:`~lorakit.cli.diagnose` (``diagnose``).

Every user error prints one line ``error: ...`` and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import LorakitError
from . import bench, data, diagnose, merge, run


def build_parser() -> argparse.ArgumentParser:
    """The ``lorakit`` parser: one subparser per subcommand, in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(prog="lorakit", description="Learn, derive and run LoRA model merging.")
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    data.add_parsers(sub)
    bench.add_parser(sub)
    merge.add_parser(sub)
    diagnose.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: this process's), run the subcommand, turn user errors into one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except LorakitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; use a smaller profile (--profile ci) or fewer tasks", file=sys.stderr)
        return 2
