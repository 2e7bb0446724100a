"""Time the course notebooks in one profile, the way a learner would run them, and write a JSON record.

Executes each selected notebook from its source (``notebooks/src``) in a fresh kernel, in order,
without writing the notebook: the committed notebooks keep their ``ci`` outputs. Records each
notebook's wall time, the kernel's CPU time (user + system, from ``resource.getrusage``), and its
slowest cells.

``--fresh-cache DIR`` starts from an empty lorakit cache (``LORAKIT_CACHE=DIR``), as on a new laptop,
so every adapter the notebooks need is trained inside the timed run. Only the BIG-bench downloads
(``lorakit data fetch``, a one-time step before the course) are copied in from the current cache.

    LORAKIT_PROFILE=cpu python tools/time_notebooks.py --fresh-cache /tmp/fresh 00 01 02 03 04 05 \\
        --out data/reference/notebook-runtime/cpu-2026-12-02.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_notebooks import SRC, parse  # noqa: E402

RUSAGE = ("import resource, json\n"
          "_u = resource.getrusage(resource.RUSAGE_SELF)\n"
          "print(json.dumps({'cpu_s': _u.ru_utime + _u.ru_stime}))")


def _cell_seconds(cell) -> float | None:
    t = cell.get("metadata", {}).get("execution", {})
    start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
    if not (start and end):
        return None
    parse_t = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (parse_t(end) - parse_t(start)).total_seconds()


def time_notebook(src: Path, timeout: int) -> dict:
    """Execute one notebook source; ``{wall_s, cpu_s, slowest: [{cell, seconds, first_line}]}``."""
    from nbclient import NotebookClient

    nb = parse(src)
    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(RUSAGE))
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(SRC.parent)}}).execute()
    wall = time.time() - t0
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    cpu = json.loads(out.strip().splitlines()[-1])["cpu_s"]
    cells = [(k, _cell_seconds(c), c.source.splitlines()[0] if c.source else "")
             for k, c in enumerate(nb.cells[:n_cells]) if c.cell_type == "code"]
    slowest = sorted((c for c in cells if c[1] is not None), key=lambda c: -c[1])[:5]
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "slowest": [{"cell": k, "seconds": round(s, 1), "first_line": line[:80]} for k, s, line in slowest]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="notebook stems or their prefixes (00, 01, ...)")
    ap.add_argument("--fresh-cache", help="start from an empty lorakit cache in this folder (BIG-bench copied in)")
    ap.add_argument("--cache", help="continue with this lorakit cache as it is (e.g. the --fresh-cache of an "
                    "earlier, interrupted run: the learner's sequence goes on)")
    ap.add_argument("--append", action="store_true",
                    help="add to the record already at --out (its earlier notebooks and commands are kept)")
    ap.add_argument("--out", required=True, help="the JSON record to write")
    ap.add_argument("--timeout", type=int, default=7200)
    args = ap.parse_args(argv)
    sources = [s for s in sorted(SRC.glob("*.py")) if not s.stem.startswith("solutions")
               and any(s.stem.startswith(n) for n in args.names)]
    if not sources:
        print(f"no notebook source matches {args.names}", file=sys.stderr)
        return 1
    if args.cache:
        os.environ["LORAKIT_CACHE"] = str(Path(args.cache).resolve())
    if args.fresh_cache:
        from lorakit.data.models import cache_dir

        fresh = Path(args.fresh_cache)
        if fresh.exists() and any(fresh.iterdir()):
            print(f"{fresh} is not empty; give --fresh-cache a new folder", file=sys.stderr)
            return 1
        fresh.mkdir(parents=True, exist_ok=True)
        if (cache_dir() / "bigbench").is_dir():
            shutil.copytree(cache_dir() / "bigbench", fresh / "bigbench")
        os.environ["LORAKIT_CACHE"] = str(fresh.resolve())
    import torch

    from lorakit.fsutil import atomic_file

    record = {
        "what": "wall and kernel CPU time of each course notebook executed top to bottom in a fresh kernel",
        "profile": os.environ.get("LORAKIT_PROFILE", "default"),
        "cache": "fresh (every adapter trained inside the timed run)" if args.fresh_cache else "existing",
        "threads_env": {k: os.environ.get(k) for k in ("LORAKIT_THREADS", "OMP_NUM_THREADS")},
        "command": "python tools/time_notebooks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "notebooks": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        earlier = json.loads(out.read_text())
        record["notebooks"] = {**earlier["notebooks"], **record["notebooks"]}
        record["command"] = earlier["command"] + " && " + record["command"]
        record["cache"] = earlier["cache"] + (f"; continued with --cache {args.cache}" if args.cache else "")
        record["date"] = earlier["date"] + " to " + record["date"]
    for src in sources:
        print(f"executing {src.stem} ...", flush=True)
        record["notebooks"][src.stem] = time_notebook(src, args.timeout)
        nbs = record["notebooks"]
        record["total_wall_s"] = round(sum(v["wall_s"] for v in nbs.values()), 1)
        record["total_cpu_s"] = round(sum(v["cpu_s"] for v in nbs.values()), 1)
        with atomic_file(out) as tmp:  # written after every notebook, so a stopped run keeps what it timed
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        print(f"  {src.stem}: wall {nbs[src.stem]['wall_s']:.0f} s, CPU {nbs[src.stem]['cpu_s']:.0f} s", flush=True)
    print(f"total: wall {record['total_wall_s'] / 60:.1f} min, CPU {record['total_cpu_s'] / 60:.1f} min → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
