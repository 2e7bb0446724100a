# %% [markdown]
# # 01 — solutions
#
# Reference answers to the exercises of `01_lora_and_task_vectors`, checked by the same checkers.

# %%
import math
import torch
from lorakit.course import exercises

# %%
# NBVAL_CHECK_OUTPUT
def my_delta(A, B, alpha, r):
    return (alpha / r) * (B @ A)          # (d_out × r)(r × d_in) = d_out × d_in

_ = exercises.check_lora_delta(my_delta)

# %%
# NBVAL_CHECK_OUTPUT
def my_rslora_scaling(alpha, r):
    return alpha / math.sqrt(r)

_ = exercises.check_rslora_scaling(my_rslora_scaling)

# %%
# NBVAL_CHECK_OUTPUT
def my_rank(update):
    sv = torch.linalg.svdvals(update.delta().double())
    return int((sv > 1e-10 * sv[0]).sum()) if sv[0] > 0 else 0

_ = exercises.check_rank_bound(my_rank)

# %% [markdown]
# **4.** The prediction: the sum is the block product $[s_1B_1 \cdots s_NB_N]\,[A_1; \dots; A_N]$ through
# $N r = 12$ dimensions, and independent random factors use all of them. The rank of the sum is computed
# like exercise 3's, on the dense sum.

# %%
# NBVAL_CHECK_OUTPUT
prediction = "n*r"

def my_sum_rank(updates):
    total = sum(u.delta().double() for u in updates)      # Σ_i s_i B_i A_i, d_out × d_in
    sv = torch.linalg.svdvals(total)
    return int((sv > 1e-10 * sv[0]).sum()) if sv[0] > 0 else 0

_ = exercises.check_predict_sum_rank(prediction, my_sum_rank)
