"""``lorakit merge``: command-line and YAML front end of :func:`lorakit.adapters.merge_folders.merge_adapter_folders`.

::

    lorakit merge ADAPTER_DIR... --method M [--param key=value ...] [--weights w1 w2 ...] --out DIR
                  [--format adapter|merged] [--rank K] [--base MODEL] [--device cpu|cuda]
                  [--head-from I] [--dtype float32|bfloat16|float16] [--max-shard-size 2GB]
                  [--dry-run] [--summary-json FILE] [--overwrite] [--no-progress] [--config merge.yaml]

``--config`` reads a YAML mapping with the keyword names of ``merge_adapter_folders``
(:data:`CONFIG_KEYS`; ``params`` is a mapping). Options given on the command line override the
file (``--param`` entries are added to its ``params``; adapters on the command line replace
its list). Relative paths in the file are relative to the file's folder.

User errors raise :class:`~lorakit.errors.LorakitError`; ``lorakit.cli.main`` prints them as one
line ``error: ...`` and exits with status 2. SIGTERM is turned into ``KeyboardInterrupt`` while
a merge runs (:func:`terminate_as_interrupt`), so a killed merge cleans up its temporary output
like Ctrl-C does (``error: interrupted; nothing was written``, status 130).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import LorakitError
from ..merge import METHODS
from ..adapters.merge_folders import merge_adapter_folders
from ..adapters.plan import DTYPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``merge`` and its options to the ``lorakit`` subparsers."""
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
    merge.add_argument("--dtype", choices=list(DTYPES), default=None,
                       help="dtype of the written factors (adapter; default float32) or weights (merged; default the base's)")
    merge.add_argument("--max-shard-size", default=None, metavar="SIZE",
                       help="--format merged: shard the safetensors (e.g. 2GB, 500MB, 1GiB) with an index JSON")
    merge.add_argument("--dry-run", action="store_true",
                       help="check compatibility, print the plan and the memory it needs, write nothing")
    merge.add_argument("--summary-json", metavar="FILE", help="also write the summary (or the dry run's plan) to FILE")
    merge.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    merge.set_defaults(func=run_merge)


#: Keys of a ``--config`` YAML file: the keyword arguments of ``merge_adapter_folders``.
CONFIG_KEYS = (
    "adapters", "method", "params", "weights", "out", "format", "rank", "base", "device", "overwrite",
    "head_from", "progress", "dtype", "max_shard_size", "dry_run", "summary_json",
)


def parse_value(text: str) -> Any:
    """A ``--param`` value: ``true``/``false`` → bool, ``none``/``null`` → None, then int, float, else str."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["density=0.5", "base=ties"]`` → ``{"density": 0.5, "base": "ties"}``."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LorakitError(f"--param needs KEY=VALUE (e.g. --param density=0.5), got {item!r}")
        params[key.strip()] = parse_value(value.strip())
    return params


def _kind_ok(key: str, value: Any) -> bool:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    checks = {
        "adapters": lambda v: isinstance(v, list) and v and all(isinstance(a, str) for a in v),
        "params": lambda v: isinstance(v, dict),
        "weights": lambda v: isinstance(v, list) and all(number(w) for w in v),
        "rank": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "head_from": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "overwrite": lambda v: isinstance(v, bool),
        "progress": lambda v: isinstance(v, bool),
        "dry_run": lambda v: isinstance(v, bool),
        "max_shard_size": lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
    }
    return value is None or checks.get(key, lambda v: isinstance(v, str))(value)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a merge YAML file into keyword arguments (types checked, relative paths resolved)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise LorakitError(f"cannot read the config {path} ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise LorakitError(f"{path} is not valid YAML{line}; fix it (see `lorakit merge --help` for the keys)") from None
    if not isinstance(data, dict):
        raise LorakitError(f"{path} must hold a mapping of keys ({', '.join(CONFIG_KEYS)})")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise LorakitError(f"{path}: unknown key {', '.join(map(str, unknown))}; the keys are {', '.join(CONFIG_KEYS)}")
    if isinstance(data.get("adapters"), str):
        data["adapters"] = [data["adapters"]]
    for key, value in data.items():
        if not _kind_ok(key, value):
            raise LorakitError(f"{path}: {key} has the wrong type ({type(value).__name__}); see `lorakit merge --help`")
    here = path.parent
    if data.get("adapters"):
        data["adapters"] = [str(here / a) for a in data["adapters"]]
    for key in ("out", "summary_json"):
        if data.get(key):
            data[key] = str(here / data[key])
    if data.get("base") and (here / data["base"]).exists():
        data["base"] = str(here / data["base"])
    return data


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``merge_adapter_folders``: the YAML file, overridden by the command line."""
    options = load_config(args.config) if args.config else {}
    given = {
        "adapters": list(args.adapters) or None, "method": args.method, "weights": args.weights, "out": args.out,
        "format": args.format, "rank": args.rank, "base": args.base, "device": args.device,
        "head_from": getattr(args, "head_from", None), "dtype": getattr(args, "dtype", None),
        "max_shard_size": getattr(args, "max_shard_size", None), "summary_json": getattr(args, "summary_json", None),
    }
    options.update({k: v for k, v in given.items() if v is not None})
    options["params"] = {**(options.get("params") or {}), **parse_params(args.param)}
    options["overwrite"] = bool(options.get("overwrite")) or args.overwrite
    options["dry_run"] = bool(options.get("dry_run")) or getattr(args, "dry_run", False)
    if getattr(args, "no_progress", False):
        options["progress"] = False
    options = {k: v for k, v in options.items() if v is not None}
    if not options.get("method"):
        raise LorakitError(f"pass --method (one of {', '.join(METHODS)})")
    if not options.get("adapters"):
        raise LorakitError("pass one or more PEFT adapter folders (or a --config file with adapters)")
    if not options.get("out") and not options["dry_run"]:
        raise LorakitError("pass --out DIR, the folder to write the merged adapter or model to")
    return options


def _number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return str(value)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary printed after a merge (or a dry run's plan): layers, method and parameters,
    rank, energy kept (or memory needed), head, notes, time."""
    params = ", ".join(f"{k}={_number(v)}" for k, v in summary["params"].items())
    weights = " ".join(_number(w) for w in summary["weights"])
    what = "PEFT adapter" if summary["format"] == "adapter" else "merged model"
    dtype = f" ({summary['dtype']})" if summary.get("dtype") else ""
    dry = summary.get("dry_run")
    lines = [
        f"{'dry run: would merge' if dry else 'merged'} {len(summary['adapters'])} adapter(s) with "
        f"{summary['method']} ({params})",
        f"  weights      {weights}",
        f"  layers       {summary['layers']}",
        f"  {'would write' if dry else 'written    '}  {what}{dtype} → {summary['out'] if summary['out'] else '(nothing)'}",
    ]
    if summary.get("base_class"):
        lines.append(f"  base         {summary['base_class']}")
    if summary["format"] == "adapter":
        rank = summary["rank"]
        ranks = str(rank["min"]) if rank["min"] == rank["max"] else f"{rank['min']}–{rank['max']}"
        if dry:
            lines.append(f"  rank         at most {ranks} per layer ({summary['refactor']})")
        else:
            energy = summary["energy"]
            lines += [
                f"  rank         {ranks} per layer ({summary['refactor']}); {summary['lora_parameters']:,} LoRA parameters",
                f"  energy kept  min {energy['min']:.6f}, mean {energy['mean']:.6f}",
            ]
    if dry:
        mem = summary["memory"]
        parts = [f"adapters {_bytes(mem['adapters'])}", f"largest layer {_bytes(mem['layer'])}"]
        parts += [f"base model {_bytes(mem['base'])}"] if mem["base"] else []
        lines += [f"  memory       about {_bytes(mem['peak'])} ({', '.join(parts)})",
                  f"  output       about {_bytes(mem['output'])} on disk"]
    lines.append(f"  head         {summary['head']}")
    lines += [f"  note         {note}" for note in summary["notes"]]
    lines.append(f"  time         {summary['seconds']:.2f} s on {summary['device']}")
    return "\n".join(lines)


@contextlib.contextmanager
def terminate_as_interrupt():
    """While the block runs, SIGTERM raises ``KeyboardInterrupt`` (Python's default kills the process
    without running any cleanup, which would leave the temporary output folder behind). A second
    SIGTERM during the cleanup is ignored so the cleanup finishes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_merge(args: argparse.Namespace) -> int:
    """``lorakit merge``: merge (or plan, with --dry-run), print the summary, return 0 (errors raise LorakitError)."""
    options = options_from_args(args)
    with terminate_as_interrupt():
        summary = merge_adapter_folders(**options)
    print(format_summary(summary))
    return 0
