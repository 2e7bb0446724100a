# %% [markdown]
# # 06 — solutions
#
# Reference answers to the exercises of `06_full_merge`, checked by the same checkers, on the same
# committed reference run as the notebook: the `cpu`-profile run under `data/reference/` with the
# most seeds (`nb06.reference_for_exercises()`).

# %%
import numpy as np
from lorakit.course import exercises
from lorakit.course.exercises import nb06
from lorakit.stats.paired import paired_bootstrap

ref_ex = nb06.reference_for_exercises()
print(f"exercises use profile {ref_ex['profile']}, seeds {ref_ex['seeds']}")

# %% [markdown]
# **1.** One resample: draw $S$ seeds with replacement (one draw for every task: a seed is one run
# of the whole pipeline), then per task $n_t$ example indices with replacement, one draw used for
# every drawn seed and for both methods (the test split is the same in every seed, and pairing
# makes an example both methods get right, or wrong, cancel). The statistic is the mean over tasks
# of the accuracy difference; the CI its 2.5 % and 97.5 % quantiles over the resamples. Vectorized
# over the resamples: per task, every seed's mean on the drawn examples, `(R, S)`, then the drawn
# seeds picked out of it (a plain loop over resamples gives the same CI, only slower).

# %%
# NBVAL_CHECK_OUTPUT
def my_paired_bootstrap(a, b, n_resamples, seed):
    rng = np.random.default_rng(seed)
    diffs = [a[t] - b[t] for t in a]                                     # (S, n_t) paired differences
    estimate = float(np.mean([d.mean() for d in diffs]))
    n_seeds = diffs[0].shape[0]
    seeds = rng.integers(0, n_seeds, (n_resamples, n_seeds))             # (R, S), shared by every task
    boot = np.zeros(n_resamples)
    for d in diffs:
        n = d.shape[1]
        examples = rng.integers(0, n, (n_resamples, n))                  # (R, n_t), one draw for all seeds
        per_seed = np.stack([d[s][examples].mean(axis=1) for s in range(n_seeds)], axis=1)  # (R, S)
        boot += np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1) / len(diffs)
    low, high = np.quantile(boot, [0.025, 0.975])
    return estimate, float(low), float(high)

result = exercises.check_paired_bootstrap(my_paired_bootstrap, ref_ex)

# %% [markdown]
# **2.** The ratio of the two widths of the measurement, as a function of a run: the first seed's
# arrays are `a[t][:1]`, all seeds' `a[t]`. The numbers (printed by the checker) say how much of the
# variance is the test examples' (the same examples in every seed: that part does not shrink with
# more seeds) and how much is the seeds'.

# %%
# NBVAL_CHECK_OUTPUT
prediction = "same"  # measured on the committed reference: the test examples are the same in every seed

def my_width_ratio(results):
    a, b = nb06.do_vs_ta(results)
    def width(k):
        ci = paired_bootstrap({t: v[:k] for t, v in a.items()}, {t: v[:k] for t, v in b.items()},
                              n_resamples=10_000, seed=0).ci
        return ci.high - ci.low
    return width(1) / width(next(iter(a.values())).shape[0])

result = exercises.check_predict_seed_width(prediction, my_width_ratio, ref_ex)
