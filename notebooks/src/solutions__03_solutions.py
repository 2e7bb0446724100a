# %% [markdown]
# # 03 — solutions
#
# Reference answers to the exercises of `03_magnitude_variance`, checked by the same checkers.

# %%
import math
import torch
from lorakit.course import exercises

# %%
# NBVAL_CHECK_OUTPUT
def my_column_magnitudes(delta):
    # ΔW is (d_out, d_in); a column ΔW[:, j] runs over dim 0, so reduce dim 0 → (d_in,)
    return torch.linalg.vector_norm(delta, dim=0)

_ = exercises.check_column_magnitudes(my_column_magnitudes)

# %%
# NBVAL_CHECK_OUTPUT
def my_magnitude_variance(deltas):
    mags = torch.stack([my_column_magnitudes(d) for d in deltas])    # (N tasks, d_in)
    mean, std = mags.mean(dim=0), mags.std(dim=0, correction=0)       # population std over tasks
    keep = mean > 0                                                   # columns zero in every task carry no information
    return float((std[keep] / mean[keep]).mean())

_ = exercises.check_magnitude_variance(my_magnitude_variance)

# %%
# NBVAL_CHECK_OUTPUT
def my_is_scale_free(measure):
    g = torch.Generator().manual_seed(0)
    deltas = [s * torch.randn(6, 5, generator=g, dtype=torch.float64) for s in (1.0, 0.2, 3.0)]
    base = measure(deltas)
    # every task scaled by the same c; several c, and a relative tolerance for float rounding
    return all(math.isclose(measure([c * d for d in deltas]), base, rel_tol=1e-9) for c in (0.01, 0.5, 7.0))

_ = exercises.check_scale_free_test(my_is_scale_free)

# %% [markdown]
# The raw spread of section 2 (the std of the column norms, not divided by the mean) fails the test.
# Multiplying every update by $c$ multiplies it by $c$. In notebook 03 the LoRA and full fine-tuning
# updates differ in overall size (learning rate, scaling $s = \alpha/r$). A raw spread would report that
# difference in size, not how unequal the tasks' magnitudes are. The coefficient of variation divides
# the size out.

# %%
# NBVAL_CHECK_OUTPUT
import numpy as np
from lorakit.lora.measures import column_magnitudes, magnitude_variance

def raw_spread(adapters):
    return float(np.mean([np.stack([column_magnitudes(ad[n]).numpy() for ad in adapters]).std(0).mean() for n in adapters[0]]))

print("raw spread scale-free?", my_is_scale_free(lambda ds: raw_spread([{"layer": d} for d in ds])))
print("magnitude variance (3.2) scale-free?", my_is_scale_free(lambda ds: magnitude_variance(ds)))

# %% [markdown]
# **4.** By (3.4), $R_k[j] = S_j / \alpha_k[j]^2 - 1$ with $S_j = \sum_i \alpha_i[j]^2$. Keep the columns where every
# task is nonzero, then average over tasks and columns. For a pair, $\bar R[j] = \tfrac12(\rho + 1/\rho)$ with
# $\rho = \alpha_1[j]^2 / \alpha_2[j]^2$: a number plus its reciprocal, smallest (= 1) where the two magnitudes are
# equal. Scaling task 1 by $c$ multiplies $\rho$ by $c^2$. If task 1 starts as the quieter task, $\bar R$ first falls
# as $c$ evens the pair out, then rises once task 1 dominates: "dips then rises". It would only rise (or only
# fall) if the pair were already even at $c = 1/4$ (or still uneven at $c = 4$). The notebook's real pair needs
# its adapters; here two layers of synthetic magnitudes stand in, the first task half as loud as the second.

# %%
# NBVAL_CHECK_OUTPUT
prediction = "dips then rises"

def my_mean_interference(mags):
    keep = (mags > 0).all(dim=0)                     # a zero column has no signal to compare with
    sq = mags[:, keep].double() ** 2                 # energies α_i[j]²
    return float((sq.sum(dim=0, keepdim=True) / sq - 1).mean())

g = torch.Generator().manual_seed(0)
pair_mags = {f"layer{k}": torch.stack([0.5 * (1 + 0.2 * torch.rand(16, generator=g, dtype=torch.float64)),
                                       1 + 0.2 * torch.rand(16, generator=g, dtype=torch.float64)]) for k in range(2)}
_ = exercises.check_predict_louder_task(prediction, my_mean_interference, pair_mags)
