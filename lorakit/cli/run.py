"""``lorakit run``: the main job (train, merge and evaluate in one profile); see :func:`lorakit.benchmark.run_benchmark`."""

from __future__ import annotations

import argparse

from ..benchmark import run_benchmark
from ..results import format_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` and its options to the ``lorakit`` subparsers."""
    run = sub.add_parser("run", help="the main job: train, merge and evaluate in the current profile")
    run.add_argument("--profile", help="ci, cpu or gpu (default: LORAKIT_PROFILE, else gpu with CUDA, else cpu)")
    run.add_argument("--tasks", nargs="+", help="task names (default: the profile's)")
    run.add_argument("--methods", nargs="+", help="merge methods (default: the profile's)")
    run.add_argument("--inits", nargs="+", help="LoRA A initialisations: standard, osrm")
    run.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the profile's)")
    run.add_argument("--steps", type=int, help="training steps per adapter (default: the profile's)")
    run.add_argument("--task-seeds", choices=["shared", "per_task"],
                     help="shared (default): every task trains from the run's seed, so equal-shaped A inits "
                          "are identical; per_task: each task gets its own seed")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: the profile's, or LORAKIT_THREADS)")
    run.add_argument("--out", help="output folder (default: runs/<profile>-<time>)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(func=run_command)


def profile_overrides(args: argparse.Namespace) -> dict:
    """The profile fields given on the command line (``--threads``, ``--steps``, ``--task-seeds``)."""
    overrides = {}
    if args.threads:
        overrides["threads"] = args.threads
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.task_seeds:
        overrides["task_seeds"] = args.task_seeds
    return overrides


def run_command(args: argparse.Namespace) -> int:
    """``lorakit run``: run the grid, print the report table and where it was written."""
    results = run_benchmark(
        profile=args.profile, tasks=args.tasks, methods=args.methods, inits=args.inits, seeds=args.seeds,
        out=args.out, progress=not args.no_progress, command="lorakit " + " ".join(args.argv),
        **profile_overrides(args),
    )
    print()
    print(format_table(results))
    print(f"wrote {results['out']}/results.json, results.md and figures")
    return 0
