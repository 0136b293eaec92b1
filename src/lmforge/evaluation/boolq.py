"""BoolQ, zero-shot, with lm-evaluation-harness's protocol (its `boolq` task).

Each example becomes the context `{passage}\\nQuestion: {question}?\\nAnswer:` and
two continuations, " no" (choice 0) and " yes" (choice 1); the prediction is the
choice with the higher log-likelihood (ties go to " no", as numpy's argmax does).
Accuracy comes with its standard error (sample standard deviation / sqrt(n)).

A small model mostly answers with a fixed bias, so the result also carries the
model's yes-rate and the majority-class baseline: an accuracy close to the baseline
with a yes-rate near 0 or 1 measures the bias, not reading comprehension.

Prompt formats are pluggable (`PROMPT_FORMATS`) so the SFT evaluation can ask the
same questions in ChatML; "harness" is the default and the only one comparable with
published numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from lmforge.data.chatml import encode_prompt
from lmforge.evaluation.loglikelihood import Request, encode_pair, score_requests

CHOICES = ("no", "yes")  # index = label: 0 = no, 1 = yes


@dataclass(frozen=True)
class BoolQExample:
    question: str
    passage: str
    label: int  # 1 = yes
    idx: int | str | None = None


class Encoder(Protocol):
    """What a prompt format needs from a tokenizer (see lmforge.model.loading.TextEncoder)."""

    bos_id: int | None
    im_start_id: int
    im_end_id: int

    def encode(self, text: str) -> list[int]: ...


# A prompt format turns an example into one request per choice (same order as CHOICES).
PromptFormat = Callable[[BoolQExample, Encoder], list[Request]]


def harness_text(example: BoolQExample) -> str:
    """The harness's BoolQ context."""
    return f"{example.passage}\nQuestion: {example.question}?\nAnswer:"


def harness_format(example: BoolQExample, encoder: Encoder) -> list[Request]:
    """Plain-text prompt, continuations " no" / " yes" (the harness's default)."""
    context = harness_text(example)
    return [encode_pair(encoder.encode, context, f" {choice}") for choice in CHOICES]


def chatml_format(example: BoolQExample, encoder: Encoder) -> list[Request]:
    """The same question as a ChatML user turn; the assistant answers "no" or "yes".

    For instruction-tuned models (step 9). Built with lmforge.data.chatml so the ids match
    the SFT training format exactly.
    """

    content = f"{example.passage}\nQuestion: {example.question}?\nAnswer yes or no."
    context = encode_prompt(encoder, [{"role": "user", "content": content}])
    return [(context, encoder.encode(choice)) for choice in CHOICES]


PROMPT_FORMATS: dict[str, PromptFormat] = {"harness": harness_format, "chatml": chatml_format}


@dataclass
class BoolQResult:
    accuracy: float
    accuracy_stderr: float
    majority_baseline: float
    yes_rate: float  # share of examples the model answers "yes"
    gold_yes_rate: float  # share of examples whose answer is "yes"
    examples: int
    items: list[dict] = field(default_factory=list, repr=False)  # per-example log-likelihoods

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "items"}


def predict(loglikelihoods: Sequence[float]) -> int:
    """Index of the highest log-likelihood; the first one on ties."""
    best = 0
    for i, value in enumerate(loglikelihoods):
        if value > loglikelihoods[best]:
            best = i
    return best


def accuracy_stats(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, its standard error, majority baseline, yes-rate and gold yes-rate."""
    n = len(labels)
    if n == 0 or len(predictions) != n:
        raise ValueError("need as many predictions as labels, at least one")
    correct = [1.0 if p == g else 0.0 for p, g in zip(predictions, labels)]
    acc = sum(correct) / n
    # Sample standard deviation / sqrt(n), as the harness reports it (0 for n = 1).
    stderr = math.sqrt(sum((c - acc) ** 2 for c in correct) / (n - 1)) / math.sqrt(n) if n > 1 else 0.0
    gold_yes = sum(1 for g in labels if g == 1) / n
    return {
        "accuracy": acc,
        "accuracy_stderr": stderr,
        "majority_baseline": max(gold_yes, 1.0 - gold_yes),
        "yes_rate": sum(1 for p in predictions if p == 1) / n,
        "gold_yes_rate": gold_yes,
    }


def evaluate_boolq(model, encoder: Encoder, examples: Sequence[BoolQExample], *, max_length: int,
                   batch_size: int = 8, prompt_format: str = "harness") -> BoolQResult:
    """Score both choices of every example and aggregate."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown BoolQ prompt format {prompt_format!r} (known: {', '.join(PROMPT_FORMATS)})")
    build = PROMPT_FORMATS[prompt_format]
    requests: list[Request] = []
    for example in examples:
        requests += build(example, encoder)
    scores = score_requests(model, requests, max_length=max_length, batch_size=batch_size, desc="BoolQ")
    items, predictions = [], []
    for n, example in enumerate(examples):
        lls = scores[len(CHOICES) * n: len(CHOICES) * (n + 1)]
        pred = predict(lls)
        predictions.append(pred)
        items.append({"idx": example.idx, "label": example.label, "ll_no": lls[0], "ll_yes": lls[1], "prediction": pred})
    stats = accuracy_stats(predictions, [e.label for e in examples])
    return BoolQResult(examples=len(examples), items=items, **stats)
