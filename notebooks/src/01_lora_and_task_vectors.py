# %% [markdown]
# # 01 — LoRA and task vectors
#
# **What you leave with:** the LoRA update written with peft's exact shapes and scaling, checked
# against peft's own `merge_and_unload` to 1e-6; what a *task vector* is; and one real adapter
# trained on real data and evaluated against its majority baseline.
#
# Every equation below is followed by a code cell that checks it numerically (an `assert`). Cells
# whose printed output the text cites carry `# NBVAL_CHECK_OUTPUT`, so `make test` fails if the
# numbers change.
#
# Runtime, measured from an empty adapter cache with one torch thread on a shared 2-core CPU
# (`data/reference/notebook-runtime/ci-2026-12-03.json`,
# `data/reference/notebook-runtime/cpu-2026-12-03-a.json`): `ci` ≈ 1 min · `cpu` ≈ 1 min · `gpu` not
# measured (no GPU was lent). It trains one adapter and runs the training loop twice for a few
# steps.

# %%
from lorakit.course.notebook import setup, show_progress
P = setup()  # profile from LORAKIT_PROFILE (ci in `make test`), else cpu/gpu

# %% [markdown]
# ## 1. The update of one layer
#
# A Linear layer computes $y = W_0 x$ with $W_0 \in \mathbb{R}^{d_\text{out}\times d_\text{in}}$
# (torch stores weights as *(out, in)*). LoRA freezes $W_0$ and learns two thin matrices:
#
# $$ y = W_0 x + s\,B A x, \qquad \Delta W = s\,B A \tag{1.1}$$
#
# | symbol | peft name | shape |
# |---|---|---|
# | $A$ | `lora_A.weight` | $r \times d_\text{in}$ |
# | $B$ | `lora_B.weight` | $d_\text{out} \times r$ |
# | $s$ | `scaling` | $\alpha / r$ (rsLoRA: $\alpha/\sqrt{r}$) |
#
# So $\Delta W$ has exactly $W_0$'s shape and rank at most $r$. In lorakit this is
# `lorakit.lora.peft.lora_delta` / `LoRAUpdate.delta()` — the only place the scaling is applied.

# %%
# NBVAL_CHECK_OUTPUT
import torch
from lorakit.lora.update import LoRAUpdate, lora_delta, lora_scaling

torch.manual_seed(0)
d_out, d_in, r, alpha = 6, 5, 2, 4
A, B = torch.randn(r, d_in), torch.randn(d_out, r)
s = lora_scaling(alpha, r)
dW = lora_delta(A, B, s)
x = torch.randn(d_in)
assert dW.shape == (d_out, d_in)
assert torch.allclose(dW @ x, s * (B @ (A @ x)))          # (1.1): ΔW x = s·B(Ax)
assert torch.linalg.matrix_rank(dW) <= r
print("s =", s, "| ΔW shape", tuple(dW.shape), "| rank", int(torch.linalg.matrix_rank(dW)))

# %% [markdown]
# ## 2. Check against peft itself
#
# A derivation is only as good as its check. We build a tiny BERT, attach a peft LoRA adapter,
# give $B$ random values (peft initialises $B = 0$ so that $\Delta W = 0$ at step 0), and compare
# lorakit's $s\,BA$ with the weight change that peft's `merge_and_unload()` produces, for plain
# LoRA and for rsLoRA.

# %%
# NBVAL_CHECK_OUTPUT
import copy
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification
from lorakit.lora.peft import read_adapter

def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, num_labels=3)
    return BertForSequenceClassification(cfg).eval()

for use_rslora in (False, True):
    base = tiny_bert()
    W0 = {n: m.weight.detach().clone() for n, m in base.named_modules() if n.endswith(("query", "value"))}
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=use_rslora))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    updates = read_adapter(peft_model)                      # lorakit: {module: LoRAUpdate}
    merged = peft_model.merge_and_unload()                  # peft: W0 + ΔW, baked in
    err = max((dict(merged.named_modules())[m].weight - W0[m] - u.delta()).abs().max().item() for m, u in updates.items())
    assert err < 1e-6
    print(f"rsLoRA={use_rslora}: scaling {next(iter(updates.values())).scaling:.4f}, max |ΔW_peft − s·B·A| < 1e-6: {err < 1e-6}")

# %% [markdown]
# ## 3. peft's initialisation: the update starts at zero
#
# peft's default initialisation draws $A$ Kaiming-uniform and sets $B = 0$; `init_lora_weights="gaussian"`
# draws $A \sim \mathcal N(0, 1/r^2)$. Either way $\Delta W = s\,B A = 0$ before training, so the adapted
# model starts exactly at the pre-trained one. (OSRM, notebook 04, exploits this: it may choose $A$
# freely because $B = 0$ keeps the output unchanged.)

# %%
# NBVAL_CHECK_OUTPUT
fresh = get_peft_model(tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
ids = torch.randint(0, 100, (2, 7))
with torch.no_grad():
    same = torch.equal(fresh(input_ids=ids).logits, tiny_bert()(input_ids=ids).logits)
zero = all(u.delta().abs().max() == 0 for u in read_adapter(fresh).values())
assert same and zero
print("ΔW == 0 at init:", zero, "| output unchanged:", same)

# %% [markdown]
# ## 4. Task vectors
#
# Fine-tuning on task $i$ moves the weights from $W_0$ to $W_0 + \Delta W_i$. The collection of all
# $\Delta W_i$ over the adapted layers is the **task vector** $\tau_i$ (Ilharco et al., 2023). With
# LoRA, $\tau_i$ is stored as factors: per layer, $\Delta W_i = s_i B_i A_i$. Merging $N$ tasks means
# choosing one update per layer from $\{\Delta W_i\}$; the simplest is **task arithmetic**:
#
# $$ W = W_0 + \lambda \sum_{i=1}^{N} \Delta W_i. \tag{1.2}$$
#
# The merge must act on the products $\Delta W_i$, **not** on $A$ and $B$ separately:
# $\big(\sum_i B_i\big)\big(\sum_j A_j\big) = \sum_i B_i A_i + \sum_{i\ne j} B_i A_j$ has cross terms
# $B_i A_j$ that no task ever learned (notebook 02 measures them).

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(1)
tasks_toy = [LoRAUpdate(torch.randn(2, 5), torch.randn(6, 2), 2.0) for _ in range(2)]
true_sum = sum(u.delta() for u in tasks_toy)
factor_sum = 2.0 * (tasks_toy[0].B + tasks_toy[1].B) @ (tasks_toy[0].A + tasks_toy[1].A)
cross = 2.0 * (tasks_toy[0].B @ tasks_toy[1].A + tasks_toy[1].B @ tasks_toy[0].A)
assert torch.allclose(factor_sum, true_sum + cross, atol=1e-5)
print(f"relative error of summing factors: {((factor_sum - true_sum).norm() / true_sum.norm()).item():.2f}")

# %% [markdown]
# ## 5. One real adapter
#
# Now a real model and real data: the packaged **all-MiniLM-L6-v2** encoder (6 layers, hidden 384)
# and a real labelled task from an installed package. `train_adapter` trains LoRA ($r=8$, $\alpha=16$,
# on `query`/`value`) plus the task's own classification head with peft, and caches the result on
# disk (a second call is instant). Sizes come from the profile.

# %%
from lorakit.data.tasks import load_task

task = load_task("rt_subjectivity", profile=P)
print(task.card.title, "|", task.sizes(), "| labels:", task.label_names)

# %% [markdown]
# **The training loop, written out.** `train_adapter` builds the peft model and hands it to
# `lorakit.train.loop.fit`. Nothing in that loop is specific to LoRA: AdamW on the trainable parameters,
# the learning rate warmed up linearly over the first 6 % of the steps and then decayed linearly to 0,
# mini-batches drawn from a seeded shuffle (reshuffled after each pass over the data), and each batch
# cut to its longest text. Here it is in a few lines. The cell runs it and the package's `fit` for 14
# steps (one reshuffle included) on two copies of the same fresh model and asserts that the losses and
# the trained weights are identical.

# %%
# NBVAL_CHECK_OUTPUT
import copy
from lorakit.data.models import load_base, load_tokenizer
from lorakit.train.loop import fit
from lorakit.profiles import get_profile

def my_fit(model, texts, labels, steps, lr, batch_size, seed, max_length):
    """AdamW; lr warmed up over 6 % of the steps, then linear decay to 0; batches from a seeded shuffle."""
    enc = load_tokenizer(P.model)(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr, weight_decay=0.0)
    warmup = max(1, int(0.06 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min((t + 1) / warmup, max(0.0, (steps - t) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(seed)
    order, cursor, losses = torch.randperm(len(y), generator=gen), 0, []
    model.train()
    for _ in range(steps):
        if cursor + batch_size > len(y):                          # one pass done: reshuffle
            order, cursor = torch.randperm(len(y), generator=gen), 0
        idx, cursor = order[cursor:cursor + batch_size], cursor + batch_size
        width = int(enc["attention_mask"][idx].sum(1).max())      # cut the batch to its longest text
        loss = model(**{k: v[idx, :width] for k, v in enc.items()}, labels=y[idx]).loss
        loss.backward(); opt.step(); sched.step(); opt.zero_grad()
        losses.append(round(loss.item(), 5))
    return losses

torch.manual_seed(0)
start = get_peft_model(load_base(P.model, num_labels=task.num_labels),
                       LoraConfig(task_type="SEQ_CLS", r=P.rank, lora_alpha=P.alpha, target_modules=list(P.target_modules), lora_dropout=0.0))
steps = len(task.train[1]) // P.batch_size + 2                    # past the first reshuffle
mine_model, package_model = copy.deepcopy(start), copy.deepcopy(start)
torch.manual_seed(1)                                              # dropout draws from the global generator
mine = my_fit(mine_model, *task.train, steps, P.lr, P.batch_size, seed=0, max_length=P.max_length)
torch.manual_seed(1)
theirs = fit(package_model, task, get_profile(P, steps=steps), [{"params": [q for q in package_model.parameters() if q.requires_grad], "lr": P.lr}],
             seed=0, progress=False, desc="")
assert mine == theirs and all(torch.equal(a, b) for a, b in zip(mine_model.parameters(), package_model.parameters()))
print(f"{steps} steps: my_fit and lorakit.train.loop.fit give the same losses and the same weights:", mine == theirs)

# %% [markdown]
# Now the package's `train_adapter`: the same loop for the profile's number of steps, then the
# accuracy on the validation and test splits, and the adapter saved to the cache.

# %%
from lorakit.train.encoder import train_adapter

adapter = train_adapter("rt_subjectivity", P, progress=show_progress(P))
acc, majority = adapter.metrics["test_acc"], adapter.metrics["majority_test"]
print(f"test accuracy {acc:.3f} vs majority baseline {majority:.3f} ({P.steps} steps, {adapter.metrics['seconds']} s)")
assert acc > majority + 0.1, "the adapter should clearly beat the majority class"

# %% [markdown]
# The adapter's update is a dict of `LoRAUpdate`s, one per adapted layer (6 layers × {query, value}).
# Each $\Delta W$ has exactly $W_0$'s shape but rank at most $r = 8$. The spectrum below is that of
# $\Delta W$ (not of $W_0$): the cell asserts that every singular value beyond the $r$-th is below
# $10^{-10}$ of the largest. It says nothing about $W_0$'s own rank; the point is that the update is
# low-rank by construction.

# %%
# NBVAL_CHECK_OUTPUT
import matplotlib.pyplot as plt
name = "bert.encoder.layer.0.attention.self.query"
upd = adapter.updates[name]
print(len(adapter.updates), "adapted layers; A", tuple(upd.A.shape), "B", tuple(upd.B.shape), "ΔW", upd.shape, "scaling", upd.scaling)
sv = torch.linalg.svdvals(upd.delta(torch.float64))     # product in float64: no fp32 rounding noise
assert (sv[upd.rank:] < 1e-10 * sv[0]).all()               # rank(ΔW) ≤ r
print("rank(ΔW) =", int((sv > 1e-10 * sv[0]).sum()))

# %%
fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogy(sv[:24].numpy(), "o-")
ax.axvline(upd.rank - 0.5, color="k", ls=":")
ax.set_xlabel("index"); ax.set_ylabel("singular value of ΔW"); ax.set_title(f"{name.split('.', 2)[-1]}: rank ≤ r = {upd.rank}");

# %% [markdown]
# Evaluating the adapter as `W_0 + ΔW` with its head (lorakit's `Evaluator`, used for every merged
# model later) gives exactly the accuracy measured through peft during training, in float32. (The `cpu`
# profile evaluates in bfloat16 where the CPU multiplies it natively, `eval_dtype="auto"`; the exact check
# uses float32.)

# %%
from lorakit.eval.encoder import Evaluator
ev = Evaluator([task], P, eval_dtype="float32")
same_acc = ev.score(adapter.deltas, adapter.head, "rt_subjectivity", "test")
assert abs(same_acc - acc) < 1e-9
print("W0 + ΔW with the task's head reproduces the peft model's accuracy:", abs(same_acc - acc) < 1e-9)

# %% [markdown]
# ## Exercises
#
# Each checker tests your function on fresh random float64 inputs: return float64 results and leave
# the inputs unchanged (no in-place operations). The solutions are in
# `solutions/01_solutions.ipynb`.
#
# 1. Write `my_delta(A, B, alpha, r)` returning $\Delta W$ for plain LoRA.
# 2. Write `my_rslora_scaling(alpha, r)` for rsLoRA.
# 3. Write `my_rank(update)` returning the numerical rank of `update.delta()`.
# 4. Predict, run, interpret (below).

# %%
from lorakit.course import exercises

def my_delta(A, B, alpha, r):
    raise NotImplementedError  # your code here

try:
    exercises.check_lora_delta(my_delta)
except NotImplementedError:
    print("exercise 1 not attempted yet")

# %% [markdown]
# **2.** rsLoRA (the table of section 1) replaces $s = \alpha/r$ by $\alpha/\sqrt r$. `my_rslora_scaling(alpha, r)`
# returns that number (a Python float or a one-element tensor).

# %%
def my_rslora_scaling(alpha, r):
    raise NotImplementedError  # your code here

try:
    exercises.check_rslora_scaling(my_rslora_scaling)
except NotImplementedError:
    print("exercise 2 not attempted yet")

# %% [markdown]
# **3.** `my_rank(update)` returns the numerical rank of $\Delta W = s\,BA$ for a `LoRAUpdate` (float64
# factors): the number of singular values above a tolerance *relative* to the largest, as in section 5.
# The checker includes updates whose rank is below $r$ (a column of $B$ zeroed, dependent rows of $A$), a
# tiny update and $B = 0$.

# %%
def my_rank(update):
    raise NotImplementedError  # your code here

try:
    exercises.check_rank_bound(my_rank)
except NotImplementedError:
    print("exercise 3 not attempted yet")

# %% [markdown]
# **4. Predict, run, interpret: the rank of a merge.** Three tasks each give a rank-$r$ update
# ($r = 4$) of the same $64 \times 64$ layer, with independently drawn factors. Task arithmetic (1.2)
# adds them. *Before running the next cell*, predict the rank of $\Delta W_1 + \Delta W_2 + \Delta W_3$:
# set `prediction` to `"r"`, `"n*r"` or `"min(d_out, d_in)"`.

# %%
prediction = None  # your prediction: "r", "n*r" or "min(d_out, d_in)"

# %% [markdown]
# Run the measurement (given). It also tries three updates that share one $A$.

# %%
# NBVAL_CHECK_OUTPUT
from lorakit.course.exercises.nb01 import sum_rank_case

for label, shared in (("independent factors", False), ("one shared A     ", True)):
    ups = sum_rank_case(shared_A=shared)
    merged_rank = int(torch.linalg.matrix_rank(sum(u.delta() for u in ups)))
    print(f"{label}: rank(ΔW_1 + ΔW_2 + ΔW_3) = {merged_rank}  (r = {ups[0].rank}, N·r = {len(ups) * ups[0].rank}, d = 64)")

# %% [markdown]
# Interpret: write `my_sum_rank(updates)`, the numerical rank of $\sum_i \Delta W_i$ for a list of
# `LoRAUpdate`s. The checker tests it on cases where $N r$, $r$ and $\min(d_\text{out}, d_\text{in})$ are
# each wrong somewhere, then compares your prediction with the measurement and explains it (any
# prediction is accepted).

# %%
def my_sum_rank(updates):
    raise NotImplementedError  # your code here

try:
    exercises.check_predict_sum_rank(prediction, my_sum_rank)
except NotImplementedError:
    print("exercise 4 not attempted yet")
