# %% [markdown]
# # 02 — solutions
#
# Reference answers to the exercises of `02_merging_baselines`, checked by the same checkers.

# %%
import math
import torch
from lorakit.course import exercises

# %%
# NBVAL_CHECK_OUTPUT
def my_ties_sign_mean(stack):
    sigma = torch.where(stack.sum(dim=0) >= 0, 1.0, -1.0).to(stack.dtype)   # elected sign; a zero sum elects +
    agree = stack.sign() == sigma                                           # zeros (trimmed) never agree
    kept = torch.where(agree, stack, torch.zeros_like(stack)).sum(dim=0)
    return kept / agree.sum(dim=0).clamp(min=1).to(stack.dtype)             # mean over the agreeing tasks only

_ = exercises.check_ties_sign_mean(my_ties_sign_mean)

# %%
# NBVAL_CHECK_OUTPUT
def my_dare(tau, p, generator):
    mask = torch.bernoulli(torch.full_like(tau, 1 - p), generator=generator)   # keep w.p. 1 - p
    return tau * mask / (1 - p)                                                # E[mask] = 1 - p, so E[out] = tau

_ = exercises.check_dare_rescale(my_dare)

# %%
# NBVAL_CHECK_OUTPUT
def my_cross_term(updates):
    out = torch.zeros(updates[0].B.shape[0], updates[0].A.shape[1], dtype=updates[0].A.dtype)
    for i, ui in enumerate(updates):
        for j, uj in enumerate(updates):
            if i != j:                                   # B_i A_j and B_j A_i are both there
                out += math.sqrt(ui.scaling * uj.scaling) * ui.B @ uj.A
    return out

_ = exercises.check_cross_term(my_cross_term)

# %% [markdown]
# **4.** Where the two tasks disagree, the sign of the sum is the sign of the larger one, mostly task 1;
# the disjoint mean then keeps only task 1's value there. So TIES keeps *less* of task 2 than task
# arithmetic, which lets the two partly cancel. The win rate is the mean of the agreement mask.

# %%
# NBVAL_CHECK_OUTPUT
prediction = "less"

def my_win_rate(stack):
    sigma = torch.where(stack.sum(dim=0) >= 0, 1.0, -1.0).to(stack.dtype)   # a zero sum elects +
    agree = (stack.sign() == sigma).to(stack.dtype)                         # zeros never agree
    return agree.reshape(stack.shape[0], -1).mean(dim=1)

_ = exercises.check_predict_ties_conflict(prediction, my_win_rate)
