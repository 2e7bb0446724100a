"""``lorakit`` command line: run, tasks, data fetch, bench, merge.

Every user error prints one line ``error: ...`` and exits with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .errors import LorakitError


def _cmd_run(args: argparse.Namespace) -> int:
    from .benchmark import format_table, run_benchmark

    overrides = {}
    if args.threads:
        overrides["threads"] = args.threads
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.task_seeds:
        overrides["task_seeds"] = args.task_seeds
    results = run_benchmark(
        profile=args.profile, tasks=args.tasks, methods=args.methods, inits=args.inits, seeds=args.seeds,
        out=args.out, progress=not args.no_progress, command="lorakit " + " ".join(args.argv), **overrides,
    )
    print()
    print(format_table(results))
    print(f"wrote {results['out']}/results.json, results.md and figures")
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import task_cards

    cards = task_cards()
    width = max(len(n) for n in cards)
    for name, card in sorted(cards.items()):
        print(f"{name:<{width}}  {card.title} — {card.source.get('package', '')} — {card.licence}")
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from .tasks import fetch_bigbench

    paths = fetch_bigbench(args.tasks, sdist=args.sdist)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _cmd_data_export(args: argparse.Namespace) -> int:
    from .export import export_data

    path = export_data(args.dir, tasks=args.tasks, fp16=not args.fp32, overwrite=args.overwrite)
    print(f"exported to {path}; use it with LORAKIT_DATA={path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench_cli import run_bench

    return run_bench(args)


def _cmd_merge(args: argparse.Namespace) -> int:
    from .merge_cli import run_merge

    return run_merge(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description="Learn, derive and run LoRA model merging.")
    sub = parser.add_subparsers(dest="command", required=True)

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
    run.set_defaults(func=_cmd_run)

    tasks = sub.add_parser("tasks", help="list the known tasks")
    tasks.set_defaults(func=_cmd_tasks)

    data = sub.add_parser("data", help="fetch or export task data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    fetch = dsub.add_parser("fetch", help="extract BIG-bench task files into the cache (downloads the sdist once)")
    fetch.add_argument("tasks", nargs="*", help="BIG-bench task names (default: all)")
    fetch.add_argument("--sdist", help="a local bigbench-1.0.0.tar.gz instead of downloading")
    fetch.set_defaults(func=_cmd_data_fetch)
    export = dsub.add_parser("export", help="write the model and task data into one folder for an offline GPU run")
    export.add_argument("dir")
    export.add_argument("--tasks", nargs="+")
    export.add_argument("--fp32", action="store_true", help="keep the model in fp32 (default fp16)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=_cmd_data_export)

    bench = sub.add_parser("bench", help="time merge methods against peft's functions")
    bench.add_argument("--llm-shapes", action="store_true", help="Llama-3-8B adapter shapes (r=16, 7 modules, 32 layers)")
    bench.add_argument("--layers", type=int, help="limit the number of layers (LLM shapes)")
    bench.add_argument("--tasks", type=int, default=8, dest="n_tasks", help="number of adapters")
    bench.add_argument("--methods", nargs="+")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--device", default=None)
    bench.add_argument("--out", default="bench.json")
    bench.set_defaults(func=_cmd_bench)

    merge = sub.add_parser("merge", help="merge PEFT adapter folders into one adapter or merged model")
    merge.add_argument("adapters", nargs="*", help="PEFT adapter folders")
    merge.add_argument("--method", default=None)
    merge.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    merge.add_argument("--weights", nargs="+", type=float)
    merge.add_argument("--out")
    merge.add_argument("--format", choices=["adapter", "merged"], default=None, help="adapter (default) or merged")
    merge.add_argument("--rank", type=int, help="truncate the merged adapter to this rank by SVD")
    merge.add_argument("--base", help="base model (needed for --format merged)")
    merge.add_argument("--device", default=None, help="cpu (default) or cuda")
    merge.add_argument("--config", help="a YAML file with the same keys")
    merge.add_argument("--overwrite", action="store_true")
    merge.add_argument("--head-from", type=int, help="keep this adapter's head (0 = the first); default: drop heads of several adapters")
    merge.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    merge.set_defaults(func=_cmd_merge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
