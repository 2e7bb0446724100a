"""Content-keyed caches under ``LORAKIT_CACHE``: the key of a config, and computed initial ``A`` kept on disk.

A trained adapter is cached under the hash of everything that changes it (:func:`cache_key`),
including a digest of its initial ``A`` when an init computes one (OSRM). That digest is of the
exact bits, and OSRM's ``A`` is the eigenvectors of feature covariances summed in floating point:
another thread count or batch size changes its last bits, so the adapters of a run on 2 threads
would miss the cache a 1-thread run filled, and be trained again. :func:`cached_init_A` keeps the
computed ``A`` on disk under a key of its *recipe* (the tasks' feature inputs, the model, modules,
rank and options: what changes it beyond rounding), so every later run starts from the same bits
and finds the same adapters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Mapping, Sequence

import torch

from ..data.models import cache_dir
from ..fsutil import atomic_file

#: bump when the code that computes an init's ``A`` changes what it produces
INIT_A_CACHE_VERSION = 1

InitA = dict[str, dict[str, torch.Tensor]]


def cache_key(config: Mapping) -> str:
    """A 20-hex-digit hash of a JSON-serialisable config (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]


def texts_digest(texts: Sequence[str]) -> str:
    """A 16-hex-digit hash of a list of strings, order kept (the feature inputs of a task)."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def cached_init_A(recipe: Mapping, compute: Callable[[], InitA], cache: bool = True) -> InitA:
    """``compute()`` (``{task: {module: A_t}}``) once per ``recipe``; later calls load the same tensors.

    The file is ``LORAKIT_CACHE/init_A/<recipe['init']>-<cache_key(recipe)>.pt``, written atomically;
    one that cannot be read is computed again. ``cache=False`` only computes.
    """
    if not cache:
        return compute()
    key = cache_key({**recipe, "version": INIT_A_CACHE_VERSION})
    path = cache_dir() / "init_A" / f"{recipe.get('init', 'init')}-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001  (a damaged file is recomputed, then replaced)
            pass
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        torch.save({t: {m: a.detach().cpu().contiguous() for m, a in mods.items()} for t, mods in result.items()},
                   tmp)
    return result


def tensor_digest(tensors: Mapping[str, torch.Tensor] | None) -> str | None:
    """A short content hash of named tensors (for cache keys)."""
    if not tensors:
        return None
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().float().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]
