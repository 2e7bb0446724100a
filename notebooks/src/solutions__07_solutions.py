# %% [markdown]
# # 07 — solutions
#
# Reference answers to the exercises of `07_causal_lm`, checked by the same checkers; exercise 3 reads
# the committed causal-track reference, as the notebook does.

# %%
from lorakit.course import exercises
from lorakit.results.causal import causal_reference, targets_by_input

ref_name, ref = causal_reference()
others = targets_by_input(list(ref["tasks"]))
print(f"exercise 3 uses {ref_name}, seeds {ref['seeds']}")

# %% [markdown]
# **1.** One label per token of `prompt + target + [eos]`: −100 on the prompt, the tokens themselves
# on the target and eos. No shift: transformers (and `lorakit.train.causal.masked_lm_loss`) compare the
# logits at position $t-1$ with the label at $t$.

# %%
# NBVAL_CHECK_OUTPUT
def my_labels(prompt_ids, target_ids, eos_id):
    return [-100] * len(prompt_ids) + list(target_ids) + [eos_id]

result = exercises.check_target_labels(my_labels)

# %% [markdown]
# **2.** Case-fold, split on whitespace and join with one space, then strip punctuation and spaces
# from both ends; compare.

# %%
# NBVAL_CHECK_OUTPUT
import string

def my_normalized_match(prediction, target):
    norm = lambda s: " ".join(s.casefold().split()).strip(string.punctuation + " ")  # noqa: E731
    return norm(prediction) == norm(target)

result = exercises.check_normalized_match(my_normalized_match)

# %% [markdown]
# **3.** Any prediction passes; the checker counts the reference's wrong answers by kind and explains
# the one that is most common.

# %%
# NBVAL_CHECK_OUTPUT
prediction = "copy"  # the measurement: most wrong answers copy the input word back
result = exercises.check_predict_wrong_kind(prediction, ref, others=others)
