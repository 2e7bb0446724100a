"""Deterministic train / validation / test splits of a task's pools, shared by both task kinds.

Splits are cut with ``random.Random(f"{SPLIT_SEED}-{name}")``: independent of the training seed and of
the global RNG, so every run, seed and profile sees the same examples, and a smaller profile's split
is a prefix of a larger one's.
"""

from __future__ import annotations

import random

from ..profiles import get_profile

SPLIT_SEED = 1234  # fixed: splits never depend on the training seed


def _split(pool: list, fractions: tuple[float, float], rng: random.Random) -> tuple[list, list, list]:
    pool = list(pool)
    rng.shuffle(pool)
    n = len(pool)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return pool[:n_train], pool[n_train : n_train + n_val], pool[n_train + n_val :]


def cut_splits(name: str, train_pool, test_pool) -> tuple[list, list, list]:
    """Train / val / test rows of a task's pools: 60/20/20 of one pool (or the train pool and halves of
    the test pool) shuffled with :data:`SPLIT_SEED` and the name; rows whose text is in an earlier split
    are removed from validation and test."""
    rng = random.Random(f"{SPLIT_SEED}-{name}")
    if test_pool is None:
        train, val, test = _split(train_pool, (0.6, 0.2), rng)
    else:
        train = list(train_pool)
        rng.shuffle(train)
        _, val, test = _split(test_pool, (0.0, 0.5), rng)
    seen = {t for t, _ in train}
    val = [x for x in val if x[0] not in seen]
    seen |= {t for t, _ in val}
    test = [x for x in test if x[0] not in seen]
    return train, val, test


def profile_split_sizes(profile, train: int | None, val: int | None, test: int | None) -> tuple:
    """Split sizes: the given ones, the profile's where one is None (no profile: None, i.e. all)."""
    if profile is None:
        return train, val, test
    p = get_profile(profile)
    return (p.train_examples if train is None else train, p.val_examples if val is None else val,
            p.test_examples if test is None else test)
