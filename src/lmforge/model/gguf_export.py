"""`lmforge export --format gguf`: an lmforge model as one GGUF file for llama.cpp / Ollama.

    lmforge export --format gguf --model_path checkpoints/sft/tiny/final [--quant f16|q8_0] [--output FILE]

The file is written with the `gguf` package (llama.cpp's own writer; install it with
`pip install 'lmforge[gguf]'` or `pip install gguf`), following llama.cpp's conventions
for the `llama` architecture:

- metadata: context, width, depth, heads (and KV heads), SwiGLU width, RoPE base and
  dimension, RMSNorm epsilon, file type;
- tensors under llama.cpp's names (`token_embd`, `blk.N.attn_q`, ..., `output_norm`;
  no `output` when the embedding is tied). The q and k projections are permuted
  from Hugging Face's rotate-half RoPE layout to llama.cpp's interleaved one, exactly
  as llama.cpp's converter does (readers such as transformers undo it). 1-D norms stay
  float32; matrices are float16, or Q8_0 blocks with `--quant q8_0` (float16 for any
  matrix whose rows are not a multiple of the 32-value block);
- the tokenizer as llama.cpp's SentencePiece (`llama`) vocabulary: every piece with its
  score and type (normal, control, user-defined for the ChatML markers, byte), the BPE
  merges lmforge's Hugging Face export uses, no space prefix (lmforge tokenizers add
  none), no automatic BOS/EOS, `<|im_end|>` as end-of-turn and as EOS for a chat (SFT)
  model (`</s>` for a pretrained one), and the ChatML template of `lmforge.data.chatml`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lmforge.artifacts import atomic_path, read_json, sha256_file
from lmforge.data.chatml import CHAT_TEMPLATE
from lmforge.errors import ArtifactError, ConfigError
from lmforge.log import get_logger
from lmforge.tokenizer.format import MODEL_FILE, SPECIAL_TOKENS
from lmforge.tokenizer.hf_export import bpe_merges, load_proto

log = get_logger(__name__)
QUANTS = ("f16", "q8_0")
Q8_BLOCK = 32


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the `gguf` package (llama.cpp's writer): "
                          "pip install 'lmforge[gguf]'  (or: pip install gguf)") from None
    return gguf


def permute_rope(weight, n_head: int):
    """Hugging Face q/k rows (two halves per head) -> llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def tensor_names(num_layers: int) -> dict[str, str]:
    """Hugging Face Llama parameter name -> GGUF tensor name."""
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(num_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def load_state(model_dir: Path) -> dict:
    """The model's tensors as float32 numpy arrays (safetensors only)."""
    from safetensors.numpy import load_file

    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ArtifactError(f"{model_dir}: no model*.safetensors (export needs a saved model directory)")
    state = {}
    for f in files:
        state.update({k: v.astype("float32") for k, v in load_file(f).items()})
    return state


def check_llama(config: dict, model_dir: Path) -> None:
    if config.get("model_type") != "llama":
        raise ConfigError(f"{model_dir}: GGUF export supports Llama models, this one is "
                          f"{config.get('model_type')!r}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ConfigError(f"{model_dir}: biases in attention or MLP are not part of the llama GGUF layout")
    if config.get("rope_scaling"):
        raise ConfigError(f"{model_dir}: RoPE scaling is not exported")


def add_model_metadata(writer, config: dict, name: str, quant: str, gguf) -> None:
    heads = config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_dimension_count(config.get("head_dim") or config["hidden_size"] // heads)
    rope_theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)


def add_tokenizer(writer, model_dir: Path, vocab_size: int) -> None:
    """llama.cpp's SentencePiece vocabulary from spm.model (same ids, scores, types, merges).

    GGUF has room for one EOS: a chat (SFT) model's is `<|im_end|>`, where its replies
    end; a pretrained model's is `</s>`. `<|im_end|>` is the end-of-turn token of both
    (llama.cpp stops on either); readers that take EOS alone, like transformers, stop
    where the model's own generation_config.json first says.
    """

    spm = model_dir / MODEL_FILE
    if not spm.is_file():
        raise ArtifactError(f"{model_dir}: no {MODEL_FILE}; GGUF export needs an lmforge tokenizer in the model dir")
    proto = load_proto(spm)
    pieces = list(proto.pieces)
    if len(pieces) != vocab_size:
        raise ArtifactError(f"{model_dir}: tokenizer has {len(pieces)} pieces but the model {vocab_size} embeddings")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([p.piece for p in pieces])
    writer.add_token_scores([float(p.score) for p in pieces])
    # SentencePiece and GGUF number piece types alike (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
    writer.add_token_types([int(p.type) for p in pieces])
    writer.add_token_merges([f"{left} {right}" for left, right in bpe_merges(proto)])
    ids = {name: idx for name, (_, idx) in SPECIAL_TOKENS.items()}
    writer.add_bos_token_id(ids["bos"])
    stage = read_json(model_dir / "manifest.json", "model manifest").get("stage") \
        if (model_dir / "manifest.json").is_file() else None
    writer.add_eos_token_id(ids["im_end"] if stage == "sft" else ids["eos"])
    writer.add_eot_token_id(ids["im_end"])  # llama.cpp stops a chat turn here
    writer.add_unk_token_id(ids["unk"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_add_bos_token(False)  # lmforge adds <s> itself (and the chat template writes it)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def add_tensors(writer, state: dict, config: dict, quant: str, gguf) -> None:
    import numpy as np

    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    names = tensor_names(config["num_hidden_layers"])
    if config.get("tie_word_embeddings", True):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output is absent
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise ConfigError(f"tensors with no llama GGUF name: {unknown[:3]}")
    for hf_name, array in state.items():
        if hf_name.endswith("q_proj.weight"):
            array = permute_rope(array, heads)
        elif hf_name.endswith("k_proj.weight"):
            array = permute_rope(array, kv_heads)
        if array.ndim == 1:
            writer.add_tensor(names[hf_name], np.ascontiguousarray(array, dtype=np.float32))
        elif quant == "q8_0" and array.shape[-1] % Q8_BLOCK == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(names[hf_name], gguf.quants.quantize(np.ascontiguousarray(array), qtype),
                              raw_dtype=qtype)
        else:
            writer.add_tensor(names[hf_name], np.ascontiguousarray(array, dtype=np.float16))


def export_gguf(model_dir: str | os.PathLike, output: str | os.PathLike | None = None, quant: str = "f16") -> Path:
    """Write the GGUF file of `model_dir`; returns its path (default: <model_dir>/model-<quant>.gguf)."""

    if quant not in QUANTS:
        raise ConfigError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    gguf = require_gguf()
    root = Path(model_dir)
    config = read_json(root / "config.json", "model config")
    check_llama(config, root)
    out = Path(output) if output else root / f"model-{quant}.gguf"
    state = load_state(root)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        add_model_metadata(writer, config, f"{root.parent.name}-{root.name}", quant, gguf)
        add_tokenizer(writer, root, config["vocab_size"])
        add_tensors(writer, state, config, quant, gguf)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("GGUF (%s) written: %s, %.1f MiB, sha256 %s", quant, out, out.stat().st_size / 2 ** 20, sha256_file(out))
    return out


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=["gguf"], help="export format")
    parser.add_argument("--model_path", "--model-path", dest="model_path", required=True,
                        help="model directory (pretraining or SFT final/)")
    parser.add_argument("--quant", default="f16", choices=QUANTS, help="f16 (default) or q8_0")
    parser.add_argument("--output", default=None, help="output file (default: <model_path>/model-<quant>.gguf)")


def main(args: argparse.Namespace) -> int:
    out = export_gguf(args.model_path, args.output, args.quant)
    print(f"✅ GGUF written: {out}\n   load it with llama.cpp (llama-cli -m {out}), Ollama (FROM {out}), or "
          f"transformers (AutoModelForCausalLM.from_pretrained(dir, gguf_file=name))")
    return 0
