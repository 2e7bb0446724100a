"""``lorakit data export DIR``: the base model and the task data in one folder for an offline GPU run.

Layout of ``DIR`` (read back with ``LORAKIT_DATA=DIR``; see :func:`lorakit.data.models.resolve_model_path`
and :func:`lorakit.data.tasks.load_task`)::

    models/minilm/        config.json, tokenizer files, model.safetensors (fp16 unless fp16=False)
    pools/<task>.json.xz  each task's example pools exactly as the package readers return them
    tasks/*.yaml          every task card
    manifest.json         what is there: bytes and sha256 of every file, tasks, skipped tasks

Why whole pools: the splits are cut from the full pool with a fixed seed (``tasks.SPLIT_SEED``), so
the texts a split needs can only be chosen from all of them; the pools, xz-compressed, are what is
needed to give the same splits as the installed packages. The fp16 weights load in fp32 (the
exported ``config.json`` says ``"dtype": "float32"``; transformers 5 would otherwise pick the
checkpoint's fp16), so a model from the export differs from the packaged one only by fp16 rounding
of the weights.

The folder is written into a temporary sibling and renamed at the end, so a failed or interrupted
export leaves nothing half-written; an existing non-empty ``DIR`` is only replaced with
``overwrite=True``. An fp16 export larger than :data:`EXPORT_LIMIT_BYTES` (60 MB) is an error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import lzma
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from . import tasks as task_sources  # module, not names: read_pools is looked up at call time (tests patch it)
from .models import PACKAGED_MODELS, resolve_model_path
from ..errors import LorakitError
from ..fsutil import atomic_folder
from ..profiles import PROFILES
from .bigbench import bigbench_cache
from .tasks import cards_dir, get_card

#: Largest allowed export (fp16), in bytes (decimal megabytes: 60 MB).
EXPORT_LIMIT_BYTES = 60_000_000
#: Model files copied as they are (the weights are rewritten); absent optional files are skipped.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def default_export_tasks() -> list[str]:
    """The ``gpu`` profile's tasks: what a full GPU run needs."""
    return list(PROFILES["gpu"].tasks)


def select_tasks(tasks: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Tasks to export and ``{task: why skipped}``.

    With ``tasks=None`` (the gpu profile's tasks) a BIG-bench task whose ``task.json`` is not in
    the cache (``lorakit data fetch``) is skipped; a task named explicitly must be there.
    """
    explicit = tasks is not None
    names = list(dict.fromkeys(tasks if explicit else default_export_tasks()))
    chosen, skipped = [], {}
    for name in names:
        card = get_card(name)  # LorakitError for an unknown name
        if card.source.get("kind") == "bigbench" and not (bigbench_cache() / card.source["task"] / "task.json").is_file():
            if explicit:
                raise LorakitError(f"task {name!r} comes from BIG-bench: run `lorakit data fetch {name}` before exporting it")
            skipped[name] = f"BIG-bench cache missing (run `lorakit data fetch {name}` first)"
            continue
        chosen.append(name)
    return chosen, skipped


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model(dest: Path, alias: str = "minilm", fp16: bool = True) -> dict[str, Any]:
    """Copy a packaged model's config and tokenizer into ``dest`` and rewrite its weights (fp16 by default).

    Floating-point tensors are cast to fp16 (``fp16=True``) or kept; other tensors (``position_ids``)
    are kept. ``config.json`` gets ``"dtype": "float32"`` so ``from_pretrained`` loads fp32 as
    from the package. Returns ``{"alias", "source", "weights_dtype", "load_dtype"}``.
    """
    if alias not in PACKAGED_MODELS or PACKAGED_MODELS[alias]["kind"] != "encoder":
        raise LorakitError(f"only the packaged encoder models can be exported, not {alias!r}")
    src = Path(resolve_model_path(alias))
    weights = src / "model.safetensors"
    if not weights.is_file():
        raise LorakitError(f"model {alias!r} at {src} has no model.safetensors; reinstall it ({alias})")
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    config = json.loads((src / "config.json").read_text())
    config["dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = load_file(str(weights))
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return {"alias": alias, "source": str(src), "weights_dtype": str(dtype).replace("torch.", ""), "load_dtype": "float32"}


def write_pools(path: Path, train: Sequence, test: Sequence | None) -> None:
    """One task's pools as xz-compressed JSON (the format :func:`lorakit.data.tasks.read_exported_pools` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, "train": [list(x) for x in train], "test": None if test is None else [list(x) for x in test]}
    with lzma.open(path, "wt", encoding="utf-8", preset=6) as fh:
        json.dump(payload, fh, ensure_ascii=False, separators=(",", ":"))


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``root`` except the manifest."""
    return {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST
    }


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise LorakitError(f"{target} is a file; choose a folder name for the export")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise LorakitError(f"{target} already exists; pass --overwrite to replace it, or choose a new folder")


def export_data(
    dir: str | os.PathLike,
    tasks: Sequence[str] | None = None,
    fp16: bool = True,
    overwrite: bool = False,
    model: str = "minilm",
    max_bytes: int | None = None,
    log: Callable[[str], Any] = print,
) -> Path:
    """Export the base model and the task pools into ``dir`` (see the module docstring); returns its path.

    Args:
        tasks: task names (default: the gpu profile's tasks; BIG-bench ones only if cached, and
            any whose package is missing here are skipped with a note; named tasks must load).
        fp16: store the weights in fp16 (loaded back as fp32); ``False`` keeps fp32 (91 MB).
        overwrite: replace an existing non-empty ``dir``.
        max_bytes: size limit (default :data:`EXPORT_LIMIT_BYTES` for fp16, none for fp32, whose
            model alone exceeds it); a larger result raises LorakitError and writes nothing.
        log: where notes (skipped tasks, sizes) go.
    """
    target = Path(dir).expanduser().resolve()
    _check_target(target, overwrite)
    if max_bytes is None and fp16:
        max_bytes = EXPORT_LIMIT_BYTES
    names, skipped = select_tasks(tasks)
    for name, why in skipped.items():
        log(f"note: skipping {name}: {why}")
    with atomic_folder(target) as tmp:  # a failed or interrupted export leaves nothing behind
        model_info = write_model(tmp / "models" / model, model, fp16)
        task_info = export_pools(tmp, names, skipped, explicit=tasks is not None, log=log)
        copy_cards(tmp)
        files = write_manifest(tmp, model, model_info, task_info, skipped)
        total = check_size(tmp, files, max_bytes, log)
    log(f"{len(task_info)} task(s), model {model} ({model_info['weights_dtype']}), {_mb(total)} in {target}")
    return target


def export_pools(
    root: Path, names: Sequence[str], skipped: dict[str, str], explicit: bool, log: Callable[[str], Any]
) -> dict[str, dict[str, Any]]:
    """Write ``pools/<task>.json.xz`` for each task; returns the manifest's ``tasks`` entries.

    A default task (``explicit=False``) whose source is missing here is added to ``skipped``
    with a note; a task named explicitly must load.
    """
    task_info = {}
    for name in names:
        log(f"exporting {name}")
        try:
            train, test = task_sources.read_pools(name)
        except LorakitError as exc:
            if explicit:
                raise
            skipped[name] = str(exc)
            log(f"note: skipping {name}: {exc}")
            continue
        write_pools(root / "pools" / f"{name}.json.xz", train, test)
        task_info[name] = {
            "file": f"pools/{name}.json.xz",
            "train_pool": len(train),
            "test_pool": None if test is None else len(test),
        }
    return task_info


def copy_cards(root: Path) -> None:
    """Copy every task card into ``root/tasks``."""
    (root / "tasks").mkdir()
    for card in sorted(cards_dir().glob("*.yaml")):
        shutil.copyfile(card, root / "tasks" / card.name)


def write_manifest(
    root: Path, model: str, model_info: Mapping[str, Any], task_info: Mapping[str, Any], skipped: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Write ``manifest.json`` (bytes and sha256 of every file, model, tasks, skipped); returns its file table."""
    files = file_table(root)
    manifest = {
        "format": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lorakit": __version__,
        "usage": "LORAKIT_DATA=<this folder> lorakit run ...",
        "model": dict(model_info) | {"folder": f"models/{model}"},
        "tasks": dict(task_info),
        "skipped": dict(skipped),
        "total_bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return files


def check_size(root: Path, files: Mapping[str, Mapping[str, Any]], max_bytes: int | None, log: Callable[[str], Any]) -> int:
    """The export's size in bytes; over ``max_bytes`` is a LorakitError, an fp32 export over the fp16 limit a note."""
    total = _folder_bytes(root)
    model_bytes = sum(f["bytes"] for k, f in files.items() if k.startswith("models/"))
    if max_bytes is not None and total > max_bytes:
        raise LorakitError(
            f"the export would be {_mb(total)} (model {_mb(model_bytes)}, task data {_mb(total - model_bytes)}), "
            f"over the {_mb(max_bytes)} limit; export fewer tasks with --tasks"
        )
    if max_bytes is None and total > EXPORT_LIMIT_BYTES:
        log(f"note: the export is {_mb(total)}, over the {_mb(EXPORT_LIMIT_BYTES)} of an fp16 export")
    return total


def verify_export(dir: str | os.PathLike) -> dict[str, Any]:
    """Check every file of an export against its manifest (size and sha256); returns the manifest."""
    root = Path(dir)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        raise LorakitError(f"{root} has no readable {MANIFEST}; is it a `lorakit data export` folder?") from None
    for rel, info in manifest["files"].items():
        path = root / rel
        if not path.is_file():
            raise LorakitError(f"{path} is missing from the export; export again")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise LorakitError(f"{path} does not match its manifest (size or sha256); export again")
    return manifest
