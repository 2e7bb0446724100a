"""``lorakit tasks`` (list the task cards) and ``lorakit data fetch|export`` (task data on disk)."""

from __future__ import annotations

import argparse

from ..data.export import export_data
from ..data.tasks import fetch_bigbench, task_cards


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``tasks`` and ``data`` (with ``fetch`` and ``export``) to the ``lorakit`` subparsers."""
    tasks = sub.add_parser("tasks", help="list the known tasks")
    tasks.set_defaults(func=tasks_command)

    data = sub.add_parser("data", help="fetch or export task data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    fetch = dsub.add_parser("fetch", help="extract BIG-bench task files into the cache (downloads the sdist once)")
    fetch.add_argument("tasks", nargs="*", help="BIG-bench task names (default: all)")
    fetch.add_argument("--sdist", help="a local bigbench-1.0.0.tar.gz instead of downloading")
    fetch.set_defaults(func=fetch_command)
    export = dsub.add_parser("export", help="write the model and task data into one folder for an offline GPU run")
    export.add_argument("dir")
    export.add_argument("--tasks", nargs="+")
    export.add_argument("--fp32", action="store_true", help="keep the model in fp32 (default fp16)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=export_command)


def tasks_command(args: argparse.Namespace) -> int:
    """``lorakit tasks``: one line per task card (name, title, source package, licence)."""
    cards = task_cards()
    width = max(len(n) for n in cards)
    for name, card in sorted(cards.items()):
        kind = " [generative]" if card.generative else ""
        print(f"{name:<{width}}  {card.title}{kind} — {card.source.get('package', '')} — {card.licence}")
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    """``lorakit data fetch [TASK...] [--sdist FILE]``: BIG-bench task files into the cache."""
    paths = fetch_bigbench(args.tasks, sdist=args.sdist)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """``lorakit data export DIR``: model and task data in one folder (:func:`lorakit.data.export.export_data`)."""
    path = export_data(args.dir, tasks=args.tasks, fp16=not args.fp32, overwrite=args.overwrite)
    print(f"exported to {path}; use it with LORAKIT_DATA={path}")
    return 0
