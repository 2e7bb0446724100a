r"""Evaluate merged models: each task with its own head, normalized accuracy, λ chosen on validation.

A merged model is ``W_0 + ΔW*`` on the adapted layers; each task keeps its own classification
head (merging only touches the LoRA-adapted Linear layers). For task :math:`t`:

.. math::

    \text{normalized accuracy}_t = \frac{\text{acc}_t(\text{merged model})}{\text{acc}_t(\text{task } t\text{'s own adapter})}

and a method's score is the mean over tasks. Merge hyperparameters (λ, density, ...) are chosen on
the validation split and the score is reported on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .assets import load_base, load_tokenizer, quiet
from .errors import LorakitError
from .profiles import Profile, get_profile
from .results import mean
from .tasks import TaskData, load_task
from .train import TrainedAdapter, encode_texts, predict


def normalized_accuracy(merged: Mapping[str, float], individual: Mapping[str, float]) -> dict[str, float]:
    """``merged[t] / individual[t]`` for every task (NaN where the individual accuracy is 0)."""
    return {t: (merged[t] / individual[t] if individual[t] else float("nan")) for t in merged}


@dataclass
class EvalSet:
    encodings: dict[str, torch.Tensor]
    labels: torch.Tensor
    packed: "_Packed | None" = None  # the padding-free embedding output, filled on first use


class Evaluator:
    """Holds one base model and tokenized val/test sets; scores any ΔW with any task's head.

    ``score(deltas, head, task, split)`` scores ``W_0 + ΔW`` with the task's head. Each set is
    tokenized once (here) and length-sorted. A BERT classifier on the CPU (the packaged MiniLM)
    goes through the packed path (:class:`_PackedBert`): no padding, the embedding output computed
    once per set, the last layer on the CLS rows only, oneDNN's GEMMs, and ``W_0 + ΔW`` built
    beside the model's weights, which stay untouched. Any other model (or ``packed = False``)
    applies ``W_0 + ΔW`` in place, runs the HF forward on length-sorted batches cut to their
    longest text, and restores the original weights by copy (no drift from add/subtract), also
    when an error is raised midway. Both paths give the same predictions (float rounding apart).
    """

    def __init__(self, tasks: Sequence[str | TaskData], profile: str | Profile | None = None, **overrides) -> None:
        quiet()
        self.profile = get_profile(profile, **overrides)
        self.data: dict[str, TaskData] = {}
        for t in tasks:
            d = t if isinstance(t, TaskData) else load_task(t, profile=self.profile)
            self.data[d.name] = d
        self.device = self.profile.device
        self.model = load_base(self.profile.model, num_labels=2).to(self.device).eval()
        self.tokenizer = load_tokenizer(self.profile.model)
        self.sets: dict[tuple[str, str], EvalSet] = {}
        for name, d in self.data.items():
            for split in ("val", "test"):
                texts, labels = getattr(d, split)
                self.sets[(name, split)] = self._encode_sorted(texts, labels)
        self._modules = dict(self.model.named_modules())
        self._fast = _PackedBert(self.model) if _PackedBert.supports(self.model, self.device) else None
        if self._fast is not None:
            _onednn_linear_works()
        #: use the packed path where the model allows it (``False``: always the generic HF forward)
        self.packed = self._fast is not None

    def _encode_sorted(self, texts: list[str], labels: list[int]) -> EvalSet:
        """Tokenize and sort by length, so each batch carries little padding (accuracy ignores order)."""
        enc = encode_texts(self.tokenizer, texts, self.profile.max_length)
        if len(texts) == 0:
            return EvalSet(enc, torch.tensor(labels, dtype=torch.long))
        order = torch.argsort(enc["attention_mask"].sum(1), stable=True)
        return EvalSet({k: v[order] for k, v in enc.items()}, torch.tensor(labels)[order])

    def _swap_head(self, head: Mapping[str, torch.Tensor]) -> None:
        weight, bias = head["classifier.weight"], head.get("classifier.bias")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        self.model.classifier = linear.to(self.device)
        self.model.num_labels = weight.shape[0]
        self.model.config.num_labels = weight.shape[0]

    def _check(self, deltas: Mapping[str, torch.Tensor]) -> None:
        for name, delta in deltas.items():
            module = self._modules.get(name)
            if module is None:
                raise LorakitError(f"module {name} is not in the base model; the adapter was made for another model")
            if not torch.isfinite(delta).all():
                raise LorakitError(f"merged ΔW of {name} contains NaN or inf; check the merge parameters")

    def _packed_set(self, deltas: Mapping[str, torch.Tensor], es: EvalSet) -> _Packed | None:
        """``es`` packed, if the packed path can score these ``deltas`` on it (else ``None``)."""
        if not (self.packed and self._fast is not None and len(es.labels)):
            return None
        for name, delta in deltas.items():
            if name not in self._fast.linear_names or tuple(delta.shape) != tuple(self._modules[name].weight.shape):
                return None  # e.g. ΔW on an embedding: the cached embedding output would be stale
        if es.packed is None or (es.packed and es.packed.version != self._fast.embedding_version()):
            with torch.inference_mode():  # first use, or the embedding weights were changed in place since
                es.packed = self._fast.pack(es.encodings, self.profile.eval_batch_size) or False
        return es.packed or None

    def score(self, deltas: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], task: str, split: str = "test") -> float:
        """Accuracy of ``W_0 + ΔW`` with ``head`` on ``task``'s ``split``."""
        if (task, split) not in self.sets:
            raise LorakitError(f"task {task!r} is not in this evaluator; known: {', '.join(self.data)}")
        es = self.sets[(task, split)]
        self._check(deltas)
        packed = self._packed_set(deltas, es)
        preds = self._predict_packed(deltas, head, packed) if packed is not None else self._predict_in_place(deltas, head, es)
        return float((preds == es.labels).float().mean()) if len(es.labels) else float("nan")

    def _predict_packed(self, deltas: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], packed: _Packed) -> torch.Tensor:
        """Predictions of the packed path, chunks of about ``eval_batch_size × max_length`` tokens."""
        self._swap_head(head)
        with torch.inference_mode():
            weights = {name: self._modules[name].weight for name in self._fast.linear_names}
            for name, delta in deltas.items():
                w = weights[name]
                weights[name] = w + delta.to(w.dtype).to(self.device)  # what ``add_`` gives, bit for bit
            clf = self.model.classifier
            head_wb = (clf.weight, clf.bias)
            layers, pooler = self._fast.prepare(weights), weights["bert.pooler.dense"]
            budget = self.profile.eval_batch_size * self.profile.max_length
            lengths, offsets, preds = packed.lengths, packed.offsets, []
            i = 0
            while i < len(lengths):
                j = i + 1
                while j < len(lengths) and offsets[j + 1] - offsets[i] <= budget:
                    j += 1
                x = packed.embeddings[offsets[i] : offsets[j]]
                preds.append(self._fast.logits(x, lengths[i:j], layers, pooler, head_wb).argmax(-1).cpu())
                i = j
        return torch.cat(preds)

    def _predict_in_place(self, deltas: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], es: EvalSet) -> torch.Tensor:
        """The generic path: ``W_0 + ΔW`` in place, HF's forward, the original weights copied back."""
        originals = {}
        try:
            with torch.no_grad():
                for name, delta in deltas.items():
                    module = self._modules[name]
                    originals[name] = module.weight.detach().clone()
                    module.weight.add_(delta.to(module.weight.dtype).to(self.device))
            self._swap_head(head)
            return predict(self.model, es.encodings, self.profile.eval_batch_size, self.device)
        finally:
            with torch.no_grad():
                for name, weight in originals.items():
                    self._modules[name].weight.copy_(weight)

    def score_tasks(self, deltas_for: Callable[[str], Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor],
                    adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, float]:
        """Accuracy per task; ``deltas_for`` is one merged ΔW dict, or a function of the task."""
        out = {}
        for task, adapter in adapters.items():
            deltas = deltas_for(task) if callable(deltas_for) else deltas_for
            out[task] = self.score(deltas, adapter.head, task, split)
        return out

    def individual(self, adapters: Mapping[str, TrainedAdapter], split: str = "test") -> dict[str, float]:
        """Each task's accuracy with its own adapter and head (the normalizer)."""
        return self.score_tasks(lambda t: adapters[t].deltas, adapters, split)

    def majority(self, split: str = "test") -> dict[str, float]:
        return {t: d.majority_baseline(split) for t, d in self.data.items()}


# ----------------------------------------------------------------------------------------------
# The packed fast path: BERT sequence classifiers on the CPU, without padding.


def _onednn_linear_works() -> bool:
    """Whether ``torch.ops.mkldnn._linear_pointwise`` (oneDNN's fp32 GEMM, optional fused GELU)
    runs here and agrees with ``F.linear`` (and ``F.gelu``) on a small check."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            gen = torch.Generator().manual_seed(0)
            x, w, b = (torch.randn(s, generator=gen) for s in ((5, 8), (3, 8), (3,)))
            y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            g = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            ref = F.linear(x, w, b)
            s = torch.ops.mkldnn._linear_pointwise.binary(x, ref, w, b, "add")
            _ONEDNN = bool(torch.allclose(y, ref, atol=1e-5) and torch.allclose(g, F.gelu(ref), atol=1e-5)
                           and torch.allclose(s, 2 * ref, atol=1e-5))
        except (AttributeError, RuntimeError, NotImplementedError):
            _ONEDNN = False
    return _ONEDNN


_ONEDNN: bool | None = None


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``F.linear`` (then the exact, erf GELU if ``gelu``), through oneDNN on the CPU when it works:
    on this project's AMD CPUs MKL's fp32 GEMM (what ``F.linear`` calls) runs at about half of
    oneDNN's speed, and ATen's GELU costs a sixth of a BERT forward that oneDNN fuses for free."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, w, b)
    return F.gelu(y) if gelu else y


def _linear_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, w, b) + residual``, the add fused into oneDNN's GEMM where it works (same bits)."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, b, "add")
    return F.linear(x, w, b) + residual


@dataclass
class _Packed:
    """One evaluation set without padding: every real token of every text, text after text.

    ``embeddings`` is ``(tokens, hidden)`` — the BERT embedding layer's output (word + position +
    token type, LayerNorm), which no ΔW changes, so it is computed once per set; ``lengths`` are the
    texts' token counts (non-decreasing: the set is length-sorted); ``offsets[i]`` is text ``i``'s
    first row (its CLS token), ``offsets[-1]`` the number of rows.
    """

    embeddings: torch.Tensor
    lengths: list[int]
    offsets: list[int]
    version: tuple[int, ...] = ()  # the embedding parameters' in-place version counters it was made with


class _PackedBert:
    """Inference of a ``BertForSequenceClassification`` on packed sets, numerically the same model.

    What ``model(**batch).logits`` computes, minus the work that does not change a prediction:

    * no padding: the Linear layers, LayerNorms and GELUs (nearly all the FLOPs) run on the real
      tokens only, and attention runs per group of texts of one length, with no mask (a masked
      position contributes an exact 0 to HF's softmax, so nothing is lost);
    * the last layer runs its query, attention output and feed-forward on the CLS rows only (the
      pooler reads nothing else), and its keys and values are never projected
      (:meth:`_attend_cls`): that layer costs a text what the others cost a token;
    * the embedding output is cached per set (:class:`_Packed`);
    * weights come from a dict (``W_0`` or ``W_0 + ΔW``), so the model itself is never modified.

    Logits agree with HF's padded forward to float rounding (oneDNN's GEMM sums in another order
    than MKL's; ``tests/test_train_eval.py`` checks 1e-5 and equal predictions).
    """

    def __init__(self, model) -> None:
        self.model = model
        bert = model.bert
        self.layers = list(bert.encoder.layer)
        att = self.layers[0].attention.self
        self.heads, self.head_dim = att.num_attention_heads, att.attention_head_size
        self.scaling = att.scaling
        self.prefix = "bert.encoder.layer"
        self.linear_names = {name for name, m in model.named_modules()
                             if isinstance(m, torch.nn.Linear) and name != "classifier"}

    @staticmethod
    def supports(model, device: str) -> bool:
        """A plain BERT encoder classifier in float32 on the CPU (else the generic padded path)."""
        try:
            from transformers import BertForSequenceClassification
            from transformers.activations import GELUActivation
        except ImportError:  # pragma: no cover
            return False
        if type(model) is not BertForSequenceClassification or str(device) != "cpu":
            return False
        c = model.config
        if (c.is_decoder or getattr(c, "add_cross_attention", False) or c.hidden_act != "gelu"
                or getattr(c, "position_embedding_type", "absolute") != "absolute"
                or getattr(c, "chunk_size_feed_forward", 0) or model.bert.pooler is None):
            return False
        if any(p.dtype != torch.float32 for p in model.parameters()):
            return False
        return all(type(layer.intermediate.intermediate_act_fn) is GELUActivation for layer in model.bert.encoder.layer)

    def pack(self, encodings: Mapping[str, torch.Tensor], batch_size: int) -> _Packed | None:
        """The set's embedding output without padding (``None`` if the padding is not on the right)."""
        mask = encodings["attention_mask"].bool()
        lengths = mask.sum(1)
        if len(lengths) and not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
            return None
        if len(lengths) and int(lengths.min()) == 0:
            return None
        parts = []
        emb = self.model.bert.embeddings
        for i in range(0, len(lengths), batch_size):
            width = int(lengths[i : i + batch_size].max())
            batch = {k: v[i : i + batch_size, :width] for k, v in encodings.items() if k in ("input_ids", "token_type_ids")}
            out = emb(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
            parts.append(out[mask[i : i + batch_size, :width]])
        hidden = self.model.config.hidden_size
        embeddings = torch.cat(parts) if parts else torch.empty(0, hidden)
        lengths = [int(n) for n in lengths]
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        return _Packed(embeddings, lengths, offsets, self.embedding_version())

    def embedding_version(self) -> tuple[int, ...]:
        """In-place version counters of the embedding parameters (a cached output is stale once they move)."""
        return tuple(p._version for p in self.model.bert.embeddings.parameters())

    def _groups(self, lengths: list[int]):
        """``(first row, texts, length)`` per run of equal lengths (the set is length-sorted)."""
        i = row = 0
        while i < len(lengths):
            j = i
            while j < len(lengths) and lengths[j] == lengths[i]:
                j += 1
            yield row, i, j - i, lengths[i]
            row, i = row + (j - i) * lengths[i], j

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Self-attention of packed rows, one SDPA call per run of equal lengths (no padding, no mask)."""
        h, dh = self.heads, self.head_dim
        out = q.new_empty(q.shape)
        for row, _, n, length in self._groups(lengths):
            qg, kg, vg = (t[row : row + n * length].view(n, length, h, dh).transpose(1, 2) for t in (q, k, v))
            ctx = F.scaled_dot_product_attention(qg, kg, vg, scale=self.scaling)
            out[row : row + n * length] = ctx.transpose(1, 2).reshape(n * length, h * dh)
        return out

    def _attend_cls(self, q: torch.Tensor, x: torch.Tensor, L: dict, lengths: list[int]) -> torch.Tensor:
        r"""The last layer's attention for the CLS queries ``q`` (one row per text) over all rows ``x``,
        without projecting the keys and values of every token.

        Per head :math:`h`: :math:`q_h\cdot k_{hj} = (q_h W_{k,h})\cdot x_j + q_h\cdot b_{k,h}`, and the
        last term is the same for every key, so softmax drops it; :math:`\sum_j p_{hj} v_{hj} =
        (\sum_j p_{hj} x_j) W_{v,h}^\top + b_{v,h}` since the weights sum to 1. That is ``2 d²`` less
        per token for ``O(heads·d)`` per token (float rounding apart, the same numbers).
        """
        h, dh, d = self.heads, self.head_dim, x.shape[1]
        qk = torch.bmm(q.view(-1, h, dh).transpose(0, 1), L["w_k"].view(h, dh, d)).transpose(0, 1) * self.scaling
        z = q.new_empty(q.shape[0], h, d)
        for row, first, n, length in self._groups(lengths):
            xg = x[row : row + n * length].view(n, length, d)
            p = torch.softmax(torch.bmm(qk[first : first + n], xg.transpose(1, 2)), dim=-1)  # (n, h, length)
            z[first : first + n] = torch.bmm(p, xg)
        ctx = torch.bmm(z.transpose(0, 1), L["w_v"].view(h, dh, d).transpose(1, 2)).transpose(0, 1)  # (texts, h, dh)
        return (ctx + L["b_v"].view(h, dh)).reshape(-1, h * dh)

    def prepare(self, weights: Mapping[str, torch.Tensor]) -> list[dict]:
        """Per layer, the tensors :meth:`logits` needs, from ``weights`` (by module name; ``W_0`` or
        ``W_0 + ΔW``) and the model's biases and LayerNorms: once per score, not per chunk."""
        layers = []
        for li, layer in enumerate(self.layers):
            p = f"{self.prefix}.{li}."
            att, so, out = layer.attention.self, layer.attention.output, layer.output
            w = [weights[p + "attention.self." + s] for s in ("query", "key", "value")]
            b = [getattr(att, s).bias for s in ("query", "key", "value")]
            last = li == len(self.layers) - 1
            layers.append({
                "last": last,
                # one GEMM for q, k, v (for k, v only in the last layer, whose q is the CLS rows')
                "w_in": None if last else torch.cat(w), "b_in": None if last else torch.cat(b),  # one GEMM: q, k, v
                "w_q": w[0], "b_q": b[0], "w_k": w[1], "w_v": w[2], "b_v": b[2],
                "w_o": weights[p + "attention.output.dense"], "b_o": so.dense.bias, "ln1": so.LayerNorm,
                "w_i": weights[p + "intermediate.dense"], "b_i": layer.intermediate.dense.bias,
                "w_out": weights[p + "output.dense"], "b_out": out.dense.bias, "ln2": out.LayerNorm,
            })
        return layers

    def logits(self, x: torch.Tensor, lengths: list[int], layers: list[dict], pooler: torch.Tensor,
               head: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        """Logits for packed embedding rows ``x`` of texts with ``lengths`` (``layers`` from :meth:`prepare`,
        ``pooler`` the pooler's weight, ``head`` the classifier's weight and bias)."""
        d = x.shape[1]
        cls = torch.tensor([0] + lengths[:-1]).cumsum(0)
        for L in layers:
            if L["last"]:
                q = _linear(x[cls], L["w_q"], L["b_q"])
                ctx = self._attend_cls(q, x, L, lengths)
                x = x[cls]  # the CLS rows: all the pooler reads
            else:
                qkv = _linear(x, L["w_in"], L["b_in"])
                ctx = self._attend(qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :], lengths)
            ln1, ln2 = L["ln1"], L["ln2"]
            a = F.layer_norm(_linear_add(ctx, L["w_o"], L["b_o"], x), ln1.normalized_shape, ln1.weight, ln1.bias, ln1.eps)
            i = _linear(a, L["w_i"], L["b_i"], gelu=True)
            x = F.layer_norm(_linear_add(i, L["w_out"], L["b_out"], a), ln2.normalized_shape, ln2.weight, ln2.bias, ln2.eps)
        pooled = torch.tanh(_linear(x, pooler, self.model.bert.pooler.dense.bias))
        return F.linear(pooled, *head)

def select_and_report(
    evaluator: Evaluator,
    adapters: Mapping[str, TrainedAdapter],
    merge_fn: Callable[..., Mapping[str, torch.Tensor]],
    grid: Sequence[dict],
    individual_val: Mapping[str, float] | None = None,
    individual_test: Mapping[str, float] | None = None,
    test_curve: bool = False,
    extend_edges: int = 0,
) -> dict:
    """Choose merge hyperparameters on validation, report on test.

    ``merge_fn(**params)`` returns the merged ``{module: ΔW}``; ``grid`` lists the parameter dicts
    to try. The chosen point maximises mean normalized validation accuracy (first one on ties).

    ``extend_edges`` (at most that many extra points): while the chosen λ is the smallest λ tried,
    also try ``λ/2``; while it is the largest, ``1.5 λ`` (:func:`edge_extension`), other parameters
    as chosen. A fixed grid cannot know that six summed adapters want λ below 0.1 or that DO wants
    λ above 1; the extra points are marked ``"extended": True`` in the curve.

    Returns a record with ``params``, ``curve`` (per grid point: mean normalized validation accuracy,
    and test accuracy too when ``test_curve``), per-task test ``accuracy`` at the chosen point,
    ``normalized``, ``avg_accuracy``, ``avg_normalized``. Without ``test_curve`` the test split is
    scored once, at the chosen point.
    """
    if not grid:
        raise LorakitError("empty hyperparameter grid; give at least one point")
    individual_val = individual_val or evaluator.individual(adapters, "val")
    individual_test = individual_test or evaluator.individual(adapters, "test")
    curve = []
    best, best_score, best_test, best_deltas = None, -math.inf, None, None
    pending, extensions = [dict(g) for g in grid], 0
    while pending:
        params = pending.pop(0)
        deltas = merge_fn(**params)
        val = evaluator.score_tasks(deltas, adapters, "val")
        point = {"params": dict(params), "val_normalized": mean(normalized_accuracy(val, individual_val).values()),
                 "val_accuracy": val}
        if test_curve:
            test = evaluator.score_tasks(deltas, adapters, "test")
            point["test_normalized"] = mean(normalized_accuracy(test, individual_test).values())
            point["test_accuracy"] = test
        if extensions:
            point["extended"] = True
        curve.append(point)
        if point["val_normalized"] > best_score:
            best, best_score = params, point["val_normalized"]
            best_test = point.get("test_accuracy")
            best_deltas = None if test_curve else deltas
        if not pending and extensions < extend_edges:
            more = edge_extension(best, [c["params"] for c in curve])
            if more is not None:
                pending.append(more)
                extensions += 1
    test = best_test if best_test is not None else evaluator.score_tasks(best_deltas, adapters, "test")
    normalized = normalized_accuracy(test, individual_test)
    return {
        "params": dict(best),
        "val_normalized": best_score,
        "accuracy": test,
        "normalized": normalized,
        "avg_accuracy": mean(test.values()),
        "avg_normalized": mean(normalized.values()),
        "curve": curve,
    }


def edge_extension(chosen: Mapping, tried: Sequence[Mapping], down: float = 0.5, up: float = 1.5) -> dict | None:
    """The next λ to try when ``chosen["lam"]`` is at the edge of the λ values ``tried``, else ``None``.

    Smallest λ tried → ``down · λ``; largest → ``up · λ`` (rounded to 4 decimals); the other
    parameters stay as chosen. ``None`` without ``lam``, with fewer than two λ values, or inside.
    """
    if "lam" not in chosen:
        return None
    lams = sorted({p["lam"] for p in tried if "lam" in p})
    if len(lams) < 2:
        return None
    if chosen["lam"] == lams[0]:
        return dict(chosen, lam=round(chosen["lam"] * down, 4))
    if chosen["lam"] == lams[-1]:
        return dict(chosen, lam=round(chosen["lam"] * up, 4))
    return None
