"""Greedy and sampled generations from a list of prompts, reproducible by seed.

Each prompt is generated alone (no batch padding, so a prompt's output never depends
on its neighbours). Sampling reseeds torch before every (prompt, sample) with
`seed + sample_index`, so one prompt's samples do not change when prompts are added
or reordered. Generation stops at EOS (and at <|im_end|> when `stop_ids` says so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    greedy: bool = True
    samples: int = 1  # sampled continuations per prompt (0: none)
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 1234


def generate_all(model, prompt_ids: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                 prompts: Sequence[str], settings: GenerationSettings, *, stop_ids: Sequence[int],
                 pad_id: int) -> list[dict]:
    """One record per (prompt, mode): prompt, mode, seed, text, token count, stop reason."""
    records = []
    for prompt in prompts:
        ids = prompt_ids(prompt)
        modes = ([("greedy", None)] if settings.greedy else []) + \
                [("sampled", settings.seed + k) for k in range(settings.samples)]
        for mode, seed in modes:
            records.append(_generate_one(model, ids, decode, prompt, mode, seed, settings, stop_ids, pad_id))
    return records


def _generate_one(model, ids: list[int], decode, prompt: str, mode: str, seed: int | None,
                  settings: GenerationSettings, stop_ids: Sequence[int], pad_id: int) -> dict:
    import torch

    device = next(model.parameters()).device
    inputs = torch.tensor([ids], dtype=torch.long, device=device)
    kwargs = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                  attention_mask=torch.ones_like(inputs))
    if mode == "greedy":
        kwargs.update(do_sample=False, num_beams=1, temperature=None, top_k=None, top_p=None)
    else:
        torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(inputs, **kwargs)[0, len(ids):].tolist()
    seconds = time.perf_counter() - start
    stopped = bool(output) and output[-1] in stop_ids
    text_ids = output[:-1] if stopped else output
    return {"prompt": prompt, "mode": mode, "seed": seed, "text": decode(text_ids),
            "new_tokens": len(output), "stop": "eos" if stopped else "length", "seconds": round(seconds, 3)}
