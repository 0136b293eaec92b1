"""Architecture configs (config/architectures/*.json) turned into transformers models.

lmforge models are plain `transformers.LlamaForCausalLM`s (RMSNorm, RoPE, SwiGLU,
optional tied embeddings), so every checkpoint loads with AutoModelForCausalLM and
works with lm-evaluation-harness, vLLM and PEFT without conversion. Pretraining trains
`lmforge.model.decoder.LmforgeDecoder`, the same network and parameters with a faster step,
and saves exactly these files.

Attention kernel: FlashAttention-2 when the `flash_attn` package is importable and
the model runs on CUDA, else PyTorch SDPA (which itself picks flash/efficient
kernels on GPU). `choose_attention` says which and why.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import load_config, spec
from lmforge.log import get_logger
from lmforge.tokenizer.format import SPECIAL_TOKENS

log = get_logger(__name__)


@dataclass
class ArchitectureConfig:
    """A decoder shape. Defaults are the 23M-parameter `tiny` model."""

    name: str = spec("tiny", help="run folder name: <output_dir>/<name>/")
    vocab_size: int = spec(32768, min=8, help="replaced by the tokenizer's size at training time")
    hidden_size: int = spec(384, min=8)
    num_layers: int = spec(6, min=1)
    num_heads: int = spec(6, min=1)
    num_kv_heads: int | None = spec(None, min=1, help="grouped-query attention; null = num_heads")
    intermediate_size: int = spec(1024, min=1, help="SwiGLU hidden width")
    max_position_embeddings: int = spec(1024, min=8)
    rope_theta: float = spec(10000.0, min=1.0)
    rms_norm_eps: float = spec(1e-5, min=0.0)
    tie_word_embeddings: bool = spec(True)
    initializer_range: float = spec(0.02, min=0.0)

    def check(self) -> list[str]:
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        elif (self.hidden_size // self.num_heads) % 2:
            problems.append("head dimension (hidden_size / num_heads) must be even for RoPE")
        if self.num_kv_heads and self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return problems

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


def load_architecture(path: str | Path, overrides: dict[str, Any] | None = None) -> ArchitectureConfig:
    return load_config(path, ArchitectureConfig, overrides)


def count_parameters(arch: ArchitectureConfig, vocab_size: int | None = None) -> int:
    """Exact parameter count of the Llama model built from `arch` (tied embedding counted once)."""
    v, d, f = vocab_size or arch.vocab_size, arch.hidden_size, arch.intermediate_size
    kv = arch.kv_heads * (d // arch.num_heads)
    attention = d * d * 2 + d * kv * 2          # q, o  +  k, v
    mlp = 3 * d * f                             # gate, up, down
    per_layer = attention + mlp + 2 * d         # + two RMSNorm weights
    embeddings = v * d * (1 if arch.tie_word_embeddings else 2)
    return embeddings + arch.num_layers * per_layer + d


def flops_per_token(arch: ArchitectureConfig, seq_length: int, vocab_size: int | None = None) -> float:
    """Training FLOPs per token: 6N + 12·L·d·T (PaLM appendix B; N = all parameters, tied once).

    6N covers the forward and backward matrix multiplies of every weight; 12·L·d·T
    the attention scores and weighted sums. The same formula as the reference benchmark.
    """
    n = count_parameters(arch, vocab_size)
    return 6.0 * n + 12.0 * arch.num_layers * arch.hidden_size * seq_length


def choose_attention(device_type: str, precision: str | None = None) -> tuple[str, str]:
    """(implementation, reason): flash_attention_2 when installed, on CUDA and (if given) in bf16/fp16, else sdpa.

    precision: the compute precision ("bf16", "fp16", "no"/None for fp32); None skips that check.
    """
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if not has_flash:
        return "sdpa", "flash_attn is not installed: using PyTorch SDPA"
    if device_type != "cuda":
        return "sdpa", f"flash_attn needs CUDA (device is {device_type}): using PyTorch SDPA"
    if precision is not None and precision not in ("bf16", "fp16"):
        return "sdpa", f"flash_attn needs bf16/fp16 (precision is {precision}): using PyTorch SDPA"
    try:  # installed is not enough: a build against another torch or CUDA fails only here
        from flash_attn import flash_attn_func  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        return "sdpa", f"flash_attn is installed but does not import ({type(exc).__name__}: {exc}): using PyTorch SDPA"
    return "flash_attention_2", "flash_attn is installed, the device is CUDA and the compute dtype is 16-bit"


def llama_config(arch: ArchitectureConfig, vocab_size: int | None = None):
    """The transformers LlamaConfig for `arch`, with lmforge's fixed special-token ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size or arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.kv_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta,
        rms_norm_eps=arch.rms_norm_eps,
        tie_word_embeddings=arch.tie_word_embeddings,
        initializer_range=arch.initializer_range,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=SPECIAL_TOKENS["bos"][1],
        eos_token_id=SPECIAL_TOKENS["eos"][1],
        pad_token_id=SPECIAL_TOKENS["pad"][1],
    )


def build_model(arch: ArchitectureConfig, vocab_size: int | None = None, *, seed: int = 0,
                attn_implementation: str = "sdpa"):
    """A freshly initialised LlamaForCausalLM (fp32 weights; autocast handles bf16)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(llama_config(arch, vocab_size), attn_implementation=attn_implementation)
    return model


def quiet_transformers() -> None:
    """Hide transformers' per-save progress bars and info chatter in lmforge logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_warning()
