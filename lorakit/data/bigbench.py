"""BIG-bench tasks without installing bigbench: fetch only the needed ``task.json`` files from its sdist.

``lorakit data fetch`` downloads the ``bigbench==1.0.0`` sdist with pip (no install, no
dependencies), streams ``benchmark_tasks/<task>/task.json`` members out of it into the cache
(:func:`bigbench_cache`) and :func:`read_task_json` turns one such file into a pool of
``(text, label)`` pairs. Which lorakit task is which BIG-bench folder is the task cards' business
(:func:`lorakit.data.tasks.bigbench_members`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .models import cache_dir, data_root
from ..errors import LorakitError
from ..fsutil import atomic_file

BIGBENCH_SDIST = "bigbench==1.0.0"


def bigbench_cache() -> Path:
    """Where ``lorakit data fetch`` puts BIG-bench ``task.json`` files."""
    root = data_root()
    if root is not None and (root / "bigbench").is_dir():
        return root / "bigbench"
    return cache_dir() / "bigbench"


def read_task_json(path: Path, strip_prefix: bool = False) -> list[tuple[str, str]]:
    """``(text, label)`` pairs of a BIG-bench ``task.json``: the single best-scored target is the label.

    Examples without ``target_scores`` or with a tie for the best score (an ambiguous gold label)
    are skipped; with ``strip_prefix`` the task's ``example_input_prefix`` is cut from each input.
    """
    raw = json.loads(path.read_text())
    prefix = raw.get("example_input_prefix", "")
    pool: list[tuple[str, str]] = []
    for ex in raw["examples"]:
        scores = ex.get("target_scores")
        if not scores:
            continue
        best = max(scores, key=scores.get)
        if list(scores.values()).count(scores[best]) != 1:
            continue  # ambiguous gold label
        text = ex["input"]
        if strip_prefix and prefix and text.startswith(prefix):
            text = text[len(prefix) :]
        pool.append((text.strip(), best.strip()))
    return pool


def read_generative_json(path: Path) -> list[tuple[str, str]]:
    """``(input, target)`` pairs of a generative BIG-bench ``task.json`` (examples with a ``target``).

    A list of targets counts as its first (the reference answer); examples with ``target_scores``
    (multiple choice) or an empty target are skipped. Inputs and targets are stripped.
    """
    raw = json.loads(path.read_text())
    pool: list[tuple[str, str]] = []
    for ex in raw["examples"]:
        target = ex.get("target")
        if isinstance(target, list):
            target = target[0] if target else None
        if not isinstance(target, str) or not target.strip() or "target_scores" in ex:
            continue
        pool.append((ex["input"].strip(), target.strip()))
    return pool


def extract_bigbench(sdist: str | os.PathLike, tasks: dict[str, str], dest: Path | None = None) -> dict[str, Path]:
    """Stream ``benchmark_tasks/<task>/task.json`` members out of a BIG-bench sdist into ``dest``.

    Each member is read fully, then written with :func:`lorakit.fsutil.atomic_file`, so an
    interrupted fetch or a broken archive leaves nothing half-written.
    """
    dest = Path(dest or bigbench_cache())
    wanted = {f"benchmark_tasks/{folder}/task.json": folder for folder in tasks.values()}
    found: dict[str, Path] = {}
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                for suffix, folder in wanted.items():
                    if member.name.endswith("/" + suffix) and folder not in found:
                        payload = tar.extractfile(member).read()  # read fully first: nothing written on a bad archive
                        with atomic_file(dest / folder / "task.json") as tmp:
                            tmp.write_bytes(payload)
                        found[folder] = dest / folder / "task.json"
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:  # a truncated .gz raises EOFError
        raise LorakitError(f"cannot read the BIG-bench sdist {sdist} ({exc}); delete it and fetch again") from None
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise LorakitError(f"BIG-bench sdist {sdist} lacks {missing}; is it bigbench 1.0.0?")
    return found


def download_sdist(folder: Path) -> str:
    """Download the BIG-bench sdist into ``folder`` with pip (no install, no deps); its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", BIGBENCH_SDIST, "-d", str(folder)]
    print(f"downloading {BIGBENCH_SDIST} sdist (358 MB, once): {' '.join(cmd[2:])}", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        if "No matching distribution" in result.stderr:  # reachable, but this index does not serve the release
            raise LorakitError(f"the package index has no {BIGBENCH_SDIST} sdist; pass a copy with --sdist FILE, or use "
                               "packaged tasks (`lorakit tasks`; the causal track's defaults need no fetch)")
        raise LorakitError(f"pip could not download {BIGBENCH_SDIST} ({result.stderr.strip().splitlines()[-1:]}); check the network")
    return str(next(Path(folder).glob("bigbench-*")))


def fetch_folders(folders: dict[str, str], sdist: str | None = None) -> None:
    """Extract ``{lorakit task: BIG-bench folder}`` into the cache from ``sdist``, downloaded first if ``None``."""
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            sdist = download_sdist(Path(tmp))
        extract_bigbench(sdist, folders)
