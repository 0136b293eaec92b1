"""lmforge's training decoder: Llama math and parameter names, built for a fast training step.

`LlamaForCausalLM` is what every tool downstream loads (lm-eval, PEFT, vLLM), so the
weights this module trains are exactly a Llama checkpoint: the same parameter names and
shapes (`model.layers.N.self_attn.q_proj.weight`, ...), RMSNorm, RoPE in the Hugging Face
convention (rotate-half, cos/sin in fp32), SwiGLU, grouped-query attention and an
optionally tied embedding. What differs is only how a training step computes:

- Q, K and V (and SwiGLU's gate and up) are concatenated into one matrix at run time,
  so each block runs two large matmuls instead of five small ones. Parameters stay
  separate, so the state dict is the Hugging Face one with no conversion.
- Attention is PyTorch SDPA with `is_causal=True` (GQA through `enable_gqa`), or
  FlashAttention-2 when `flash_attn` is importable and the compute dtype is bf16/fp16.
- `forward(input_ids, labels=...)` returns the *summed* next-token loss, computed
  inside the forward by `chunked_linear_cross_entropy`: the vocabulary projection is
  done a chunk of tokens at a time and its gradient is formed right away, so neither
  the full `[B, T, V]` logits nor an fp32 copy of them ever exist.

`save_pretrained` writes `config.json` + `model.safetensors` that `AutoModelForCausalLM`
loads as a `LlamaForCausalLM` with identical logits; `from_pretrained` reads such a
directory back (a pretraining final/, a step_N/, or any plain HF Llama directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.errors import ArtifactError
from lmforge.model.architecture import llama_config
from lmforge.training.checkpoint import load_model_weights

IGNORE_INDEX = -100
# Logit elements formed at once by the chunked loss: on CUDA 2^27 (4,096 rows at V = 32,768,
# 512 MiB in fp32: large matmuls, few launches); elsewhere 2^22 (128 rows, 16 MiB): the chunk
# stays in a CPU's last-level cache through its five passes (projection, log-softmax, exp,
# two gradient matmuls) and its buffers are reused instead of fresh page-faulted memory.
# Measured on a 2-core EPYC (32 MiB L3), N 2048, d 128, V 32,768: 930 ms at 128 rows against
# 1,007 at 512 and 1,238 for F.cross_entropy(F.linear(...)) (docs/BENCHMARKS.md).
LOSS_CHUNK_ELEMENTS = {"cuda": 2 ** 27, "cpu": 2 ** 22}


# ---------------------------------------------------------------- the loss

def _ce_chunk(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor):
    """Log-probabilities of one chunk (fp32), and the summed loss over its valid targets."""
    logp = F.linear(h, w).float().log_softmax(dim=-1)
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0)
    picked = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    return logp, valid, safe, -(picked * valid).sum()


def _ce_chunk_with_grad(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, mm: torch.dtype):
    """(summed loss, valid rows, d loss / d logits in `mm`) of one chunk.

    Eager (CPU): log-softmax, then the gradient in place over it, one fp32 buffer in all.
    Compiled (the GPU default): softmax - onehot written as one expression, the onehot as an
    index compare, so inductor reads the 16-bit logits and writes the 16-bit gradient in a
    single pass; the in-place form's scatter would make it write and reread an fp32
    [rows, V] buffer for every chunk.
    """
    if not torch.compiler.is_compiling():
        logp, valid, safe, loss = _ce_chunk(h, w, targets)
        grad = logp.exp_()
        grad.scatter_add_(1, safe.unsqueeze(1), torch.full_like(grad[:, :1], -1.0))
        return loss, valid, grad.to(mm)
    logits = F.linear(h, w).float()
    valid = targets != IGNORE_INDEX
    safe = targets.clamp(min=0).unsqueeze(1)
    lse = logits.logsumexp(dim=-1, keepdim=True)
    loss = ((lse - logits.gather(1, safe)).squeeze(1) * valid).sum()
    onehot = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0) == safe
    return loss, valid, (torch.exp(logits - lse) - onehot.float()).to(mm)


class _ChunkedLinearCE(torch.autograd.Function):
    """sum CE(h @ w.T, targets), with the gradients formed chunk by chunk during the forward.

    The backward of a scalar loss is only a scale of these gradients, so computing them
    while each chunk's logits are live costs the same matmuls as autograd would and
    keeps only `[N, d]` and `[V, d]` gradient buffers instead of `[N, V]` logits.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int):
        device = h.device.type
        # The matmul dtype: autocast's when it is on (bf16/fp16 on the GPU), else the input's.
        mm = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        w_mm = w.to(mm)  # cast once, not once per chunk
        grad_h = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk].to(mm), targets[start:start + chunk]
            loss, valid, grad = _ce_chunk_with_grad(hc, w_mm, tc, mm)
            total = total + loss
            # Ignored rows are zeroed through the [n, d] operands below rather than with
            # another pass over [n, V].
            keep = valid.unsqueeze(1).to(mm)
            masked_h = hc * keep
            with torch.autocast(device, enabled=False):  # explicit dtypes from here on
                grad_h[start:start + chunk] = ((grad @ w_mm) * keep).to(h.dtype)
                if mm == torch.float32:
                    grad_w.addmm_(grad.t(), masked_h)
                else:
                    grad_w += (grad.t() @ masked_h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.w_dtype = w.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.w_dtype), None, None


def loss_chunk_rows(vocab_size: int, device_type: str) -> int:
    """Rows of logits per chunk for this vocabulary and device (see LOSS_CHUNK_ELEMENTS)."""
    elements = LOSS_CHUNK_ELEMENTS.get(device_type, LOSS_CHUNK_ELEMENTS["cpu"])
    return max(64, elements // max(1, vocab_size))


def chunked_linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor,
                                 chunk: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of `h @ w.T` against `targets` (IGNORE_INDEX skipped), in fp32.

    h: [N, d] final hidden states; w: [V, d] output projection; targets: [N].
    Never materialises more than `chunk` rows of logits (default: loss_chunk_rows).
    """
    chunk = chunk or loss_chunk_rows(w.shape[0], h.device.type)
    if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
        return _ChunkedLinearCE.apply(h, w, targets, chunk)
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk):
        total = total + _ce_chunk(h[start:start + chunk], w, targets[start:start + chunk])[-1]
    return total


# ---------------------------------------------------------------- blocks

class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalise in fp32, cast back, then scale (HF's order of operations)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)


def rope_tables(seq: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, head_dim] in fp32, HF layout (the frequency table repeated for both halves)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(seq, device=device, dtype=torch.int64).float(), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd] rotated the HF way: x*cos + rotate_half(x)*sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, flash: bool) -> torch.Tensor:
        b, t, d = x.shape
        hd, kv = self.head_dim, self.kv_heads * self.head_dim
        # One matmul for Q, K and V: the weights are concatenated here, not stored fused.
        qkv = F.linear(x, torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)))
        qk, v = qkv.split((d + kv, kv), dim=-1)
        # Q's and K's heads rotated together: one set of RoPE operations instead of two.
        qk = qk.view(b, t, self.heads + self.kv_heads, hd).transpose(1, 2)
        q, k = apply_rope(qk, cos.to(qk.dtype), sin.to(qk.dtype)).split((self.heads, self.kv_heads), dim=1)
        v = v.view(b, t, self.kv_heads, hd).transpose(1, 2)
        if flash:
            from flash_attn import flash_attn_func

            y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
            y = y.reshape(b, t, d)
        else:
            gqa = self.kv_heads != self.heads
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            y = y.transpose(1, 2).reshape(b, t, d)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.ff = ff
        self.gate_proj = nn.Linear(d, ff, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=False)
        self.down_proj = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, torch.cat((self.gate_proj.weight, self.up_proj.weight))).split(self.ff, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ff: int, eps: float):
        super().__init__()
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attn = Attention(d, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(d, ff)

    def forward(self, x, cos, sin, flash: bool):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, flash)
        return x + self.mlp(self.post_attention_layernorm(x))


class Trunk(nn.Module):
    """Named `model` in the parent, as in LlamaForCausalLM, so parameter names match."""

    def __init__(self, cfg):
        super().__init__()
        kv = cfg.num_key_value_heads or cfg.num_attention_heads
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg.hidden_size, cfg.num_attention_heads, kv, cfg.intermediate_size,
                                          cfg.rms_norm_eps) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# ---------------------------------------------------------------- the model

class LmforgeDecoder(nn.Module):
    """A Llama causal LM for training; see the module docstring.

    forward(input_ids) -> an object with `.logits` (evaluation, parity checks);
    forward(input_ids, labels) -> summed next-token loss (fp32 scalar), labels shifted
    here and IGNORE_INDEX skipped, the way `transformers` shifts them.
    """

    computes_loss = True  # the training loop asks the forward for the loss instead of logits

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Trunk(config)
        self.tied = bool(getattr(config, "tie_word_embeddings", True))
        if not self.tied:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.attention = "sdpa"
        from transformers import GenerationConfig
        # Written beside the weights by save_pretrained, like a PreTrainedModel's (callers may set stop ids).
        self.generation_config = GenerationConfig.from_model_config(config)
        # RoPE tables for every position, computed once (non-persistent: not part of the weights).
        cos, sin = rope_tables(config.max_position_embeddings, self.head_dim, _rope_theta(config), "cpu")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights(float(getattr(config, "initializer_range", 0.02)))

    def _init_weights(self, std: float) -> None:
        # LlamaForCausalLM's initialisation: normal(0, std) matrices and embedding, unit norms.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.tied else self.lm_head.weight

    def tie_weights(self) -> None:
        """Nothing to do: a tied decoder has no separate output weight (PreTrainedModel's API)."""

    def set_attention(self, implementation: str) -> None:
        """'sdpa' or 'flash_attention_2' (the caller checks that flash_attn exists)."""
        if implementation not in ("sdpa", "flash_attention_2"):
            raise ValueError(f"unknown attention implementation {implementation!r}")
        self.attention = implementation

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        cos, sin = self.rope_cos[:seq].float(), self.rope_sin[:seq].float()
        x = self.model.embed_tokens(input_ids)
        flash = self.attention == "flash_attention_2" and _low_precision(x)
        for block in self.model.layers:
            x = block(x, cos, sin, flash)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        if attention_mask is not None:  # checked here, outside any compiled step (pretraining passes None)
            if not bool(attention_mask.all()):
                raise ValueError("LmforgeDecoder trains on packed rows: padding masks are not supported")
        h = self.hidden_states(input_ids)
        if labels is None:
            return SimpleNamespace(logits=F.linear(h, self.output_weight))
        # Every position scores the next token; the last has none (IGNORE_INDEX). Shifting the
        # labels, not slicing h, keeps h a view: no [B*(T-1), d] copy and no gradient scatter back.
        targets = torch.cat((labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)), dim=1)
        return chunked_linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.output_weight, targets.reshape(-1))

    # ------------------------------------------------------------ Hugging Face files

    def save_pretrained(self, out_dir: str | Path, safe_serialization: bool = True, **_: Any) -> None:
        """config.json, generation_config.json and model.safetensors, as LlamaForCausalLM.save_pretrained writes them."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.config.architectures = ["LlamaForCausalLM"]
        self.config.save_pretrained(out)
        self.generation_config.save_pretrained(out)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "LmforgeDecoder":
        """Load a Hugging Face Llama directory (config.json + model*.safetensors)."""
        from transformers import LlamaConfig

        root = Path(model_dir)
        try:
            kind = json.loads((root / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{root}: no readable config.json ({exc})") from None
        if kind != "llama":
            raise ArtifactError(f"{root} holds a {kind!r} model; lmforge's training decoder loads Llama models only")
        config = LlamaConfig.from_pretrained(root)
        unsupported = [k for k in ("attention_bias", "mlp_bias") if getattr(config, k, False)]
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type != "default" or unsupported:
            raise ArtifactError(f"{root}: rope_scaling/biases ({unsupported}) are not supported by the training decoder")
        model = cls(config)
        load_model_weights(model, root)
        return model


def _low_precision(x: torch.Tensor) -> bool:
    if x.dtype in (torch.bfloat16, torch.float16):
        return True
    return x.is_cuda and torch.is_autocast_enabled("cuda") and \
        torch.get_autocast_dtype("cuda") in (torch.bfloat16, torch.float16)


def _rope_theta(config) -> float:
    """rope_theta from a LlamaConfig (transformers 5 keeps it in rope_parameters, 4.x on the config)."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def scale_residual_init(model: LmforgeDecoder) -> None:
    """Shrink the fresh init of o_proj and down_proj by 1 / sqrt(2 x layers) (GPT-2's scheme).

    These two write into the residual stream, once per sub-layer: scaled this way the
    stream's variance at the output no longer grows with depth. Same tensors, same RNG
    draws, only smaller; the checkpoint stays a plain Llama.
    """
    factor = (2 * len(model.model.layers)) ** -0.5
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)


def build_decoder(arch, vocab_size: int | None = None, *, seed: int = 0) -> LmforgeDecoder:
    """A freshly initialised training decoder for an ArchitectureConfig (fp32 master weights)."""

    torch.manual_seed(seed)
    return LmforgeDecoder(llama_config(arch, vocab_size))
