r"""Evaluate merged models: each task with its own head, normalized accuracy (λ is chosen by :mod:`lorakit.run.search`).

A merged model is ``W_0 + ΔW*`` on the adapted layers; each task keeps its own classification
head (merging only touches the LoRA-adapted Linear layers). For task :math:`t`:

.. math::

    \text{normalized accuracy}_t = \frac{\text{acc}_t(\text{merged model})}{\text{acc}_t(\text{task } t\text{'s own adapter})}

and a method's score is the mean over tasks. Merge hyperparameters (λ, density, ...) are chosen on
the validation split and the score is reported on the test split (:func:`lorakit.run.search.select_and_report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..data.models import load_base, load_tokenizer, quiet
from ..errors import LorakitError
from .packed_bert import PackedBert, PackedSet, onednn_linear_works
from .scorer import TaskScorer
from ..profiles import Profile, get_profile, resolve_eval_dtype
from ..data.tasks import TaskData, load_task
from ..train.loop import encode_texts, predict


@dataclass
class EvalSet:
    encodings: dict[str, torch.Tensor]
    labels: torch.Tensor
    packed: "PackedSet | None" = None  # the padding-free embedding output, filled on first use
    order: torch.Tensor | None = None  # row i of the (length-sorted) set is example order[i] of the split


class Evaluator(TaskScorer):
    """Holds one base model and tokenized val/test sets; scores any ΔW with any task's head.

    ``score(deltas, head, task, split)`` scores ``W_0 + ΔW`` with the task's head. Each set is
    tokenized once (here) and length-sorted. A BERT classifier on the CPU (the packaged MiniLM)
    goes through the packed path (:class:`PackedBert`): no padding, the embedding output computed
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
        self._fast = PackedBert(self.model) if PackedBert.supports(self.model, self.device) else None
        if self._fast is not None:
            onednn_linear_works()
        #: the packed path's compute dtype (the profile's ``eval_dtype``; ``auto``: bf16 where the CPU has it)
        self.eval_dtype = resolve_eval_dtype(self.profile.eval_dtype, self.device)
        #: use the packed path where the model allows it (``False``: always the generic HF forward)
        self.packed = self._fast is not None

    def _encode_sorted(self, texts: list[str], labels: list[int]) -> EvalSet:
        """Tokenize and sort by length, so each batch carries little padding (accuracy ignores order)."""
        enc = encode_texts(self.tokenizer, texts, self.profile.max_length)
        if len(texts) == 0:
            return EvalSet(enc, torch.tensor(labels, dtype=torch.long))
        order = torch.argsort(enc["attention_mask"].sum(1), stable=True)
        return EvalSet({k: v[order] for k, v in enc.items()}, torch.tensor(labels)[order], order=order)

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

    def _packed_set(self, deltas: Mapping[str, torch.Tensor], es: EvalSet) -> PackedSet | None:
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
        right = self.correct(deltas, head, task, split)
        return float(right.float().mean()) if len(right) else float("nan")

    def correct(self, deltas: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], task: str,
                split: str = "test") -> torch.Tensor:
        """Per example of ``task``'s ``split``, in the split's own order: is ``W_0 + ΔW`` with ``head`` right?

        A bool vector of the split's length; its mean is :meth:`score`. The same example sits at the
        same index in every call (and every run with the same split), so two methods' vectors pair.
        """
        if (task, split) not in self.sets:
            raise LorakitError(f"task {task!r} is not in this evaluator; known: {', '.join(self.data)}")
        es = self.sets[(task, split)]
        self._check(deltas)
        packed = self._packed_set(deltas, es)
        preds = self._predict_packed(deltas, head, packed) if packed is not None else self._predict_in_place(deltas, head, es)
        right = preds == es.labels
        if es.order is None:
            return right
        unsorted = torch.empty_like(right)
        unsorted[es.order] = right
        return unsorted

    def _predict_packed(self, deltas: Mapping[str, torch.Tensor], head: Mapping[str, torch.Tensor], packed: PackedSet) -> torch.Tensor:
        """Predictions of the packed path, chunks of about ``eval_batch_size × max_length`` tokens."""
        self._swap_head(head)
        with torch.inference_mode():
            weights = {name: self._modules[name].weight for name in self._fast.linear_names}
            clf = self.model.classifier
            head_wb = (clf.weight, clf.bias)
            layers = self._fast.prepare(weights, self.eval_dtype, deltas)
            pooler = weights["bert.pooler.dense"] if "bert.pooler.dense" not in deltas else (
                weights["bert.pooler.dense"] + deltas["bert.pooler.dense"].to(torch.float32).to(self.device))
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

    def majority(self, split: str = "test") -> dict[str, float]:
        return {t: d.majority_baseline(split) for t, d in self.data.items()}
