"""Log-likelihood of token continuations under a Hugging Face causal LM, batched.

A request is a pair (context_ids, continuation_ids); its score is the sum of
log p(continuation token | everything before it). As in lm-evaluation-harness, the
model is fed (context + continuation)[-(max_length + 1):][:-1] (left-truncated to the
context length), and the last len(continuation) positions are scored.

Efficiency choices that do not change the numbers:
- identical model inputs are run once (BoolQ's one-token " no"/" yes" share a pass);
- inputs are sorted by length so batches hold similar lengths; rows are padded on
  the right, which a causal model never attends to from earlier positions;
- the output head is applied only at the scored positions, one row at a time, so
  a 32K vocabulary never materialises a batch x length x vocab tensor;
- log-softmax runs in float32 even when the model runs in bf16 on a GPU.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

from lmforge.evaluation.perplexity import rolling_windows
from lmforge.log import get_logger, progress

log = get_logger(__name__)

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str) -> Request:
    """Token ids of a (context, continuation) text pair, split as the harness splits them.

    Trailing spaces of the context move to the continuation (" yes" stays one word);
    the whole string is encoded once and the continuation is what follows the encoded
    context, so tokens that merge across the boundary are scored as the model sees them.
    """
    if not context:
        raise ValueError("context must not be empty (use a prefix token instead)")
    stripped = context.rstrip()
    if len(stripped) < len(context):
        continuation = context[len(stripped):] + continuation
        context = stripped
    context_ids = list(encode(context))
    whole = list(encode(context + continuation))
    return context_ids, whole[len(context_ids):]


def model_input(request: Request, max_length: int) -> tuple[list[int], int]:
    """The ids fed to the model for a request, and how many final positions are scored."""
    context, continuation = request
    if not continuation:
        raise ValueError("continuation must hold at least one token")
    if len(continuation) > max_length:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length {max_length}")
    ids = (list(context) + list(continuation))[-(max_length + 1):][:-1]
    return ids, len(continuation)


def score_requests(model, requests: Sequence[Request], *, max_length: int, batch_size: int = 8,
                   desc: str = "scoring") -> list[float]:
    """Sum of continuation log-probabilities (natural log) for each request, in order."""
    import torch

    # Group requests by model input: several continuations may share one forward pass.
    by_input: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        ids, _ = model_input(request, max_length)
        by_input[tuple(ids)].append(i)
    inputs = sorted(by_input, key=len, reverse=True)
    scores = [0.0] * len(requests)
    device = next(model.parameters()).device
    batches = [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]
    with torch.inference_mode():
        for batch in progress(batches, desc=desc, unit="batch"):
            hidden = _hidden_states(model, batch, device)
            for row, ids in enumerate(batch):
                for i in by_input[ids]:
                    continuation = requests[i][1]
                    scores[i] = _continuation_logprob(model, hidden[row], len(ids), continuation, device)
    return scores


def _hidden_states(model, batch: list[tuple[int, ...]], device):
    """Last hidden states of a right-padded batch (pad id 0: never attended to by real tokens)."""
    import torch

    width = len(batch[0])
    padded = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    out = model.base_model(input_ids=padded.to(device))
    return out.last_hidden_state


def _continuation_logprob(model, hidden_row, length: int, continuation: list[int], device) -> float:
    """log p(continuation) from one row's hidden states: head at the scored positions only."""
    import torch

    n = len(continuation)
    # Position t predicts token t+1: the continuation's tokens are predicted at the
    # last n positions of the input (length - n ... length - 1).
    logits = model.get_output_embeddings()(hidden_row[length - n:length]).float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(continuation, dtype=torch.long, device=device)
    return float(logprobs.gather(1, target[:, None]).double().sum())


def check_scorable(model) -> None:
    """Refuse models whose logits are not lm_head(last hidden state) (softcapping, scaling)."""
    config = model.config
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            raise ValueError(f"{type(model).__name__} uses {attr}; lmforge's scorer applies the plain output head")
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no output head")


def rolling_loglikelihoods(model, documents: Sequence[list[int]], *, prefix_token: int, max_length: int,
                           batch_size: int = 8, desc: str = "rolling windows") -> list[float]:
    """Log-likelihood of each whole token list, scored with disjoint rolling windows."""
    requests: list[Request] = []
    owner: list[int] = []
    for d, tokens in enumerate(documents):
        for window in rolling_windows(list(tokens), prefix_token, max_length):
            requests.append(window)
            owner.append(d)
    log.debug("%d documents -> %d windows of up to %d tokens", len(documents), len(requests), max_length)
    totals = [0.0] * len(documents)
    for d, score in zip(owner, score_requests(model, requests, max_length=max_length,
                                              batch_size=batch_size, desc=desc)):
        totals[d] += score
    return totals
