"""`lmforge export --format gguf`: the file reads back with `gguf`, loads in transformers, and the
f16 model computes what the source computes (logits within 1e-2, same greedy continuations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.artifacts import atomic_write_json
from lmforge.cli import main as cli

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Grouped-query attention (2 KV heads for 4), so both RoPE permutations are exercised.
ARCH = {"name": "gg", "vocab_size": 400, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 128}
TRAINING = {"max_steps": 40, "per_device_batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 2,
            "eval_batches": 1, "log_every": 10, "tensorboard": False, "seed": 1}
PROMPTS = ["The return value", "Return a new list", "import os\n", "If the argument is", "class "]


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_tokenizer, tiny_packed) -> Path:
    """A small model trained for 40 steps (a random one has near-tied logits: greedy would be noise)."""
    root = tmp_path_factory.mktemp("gguf")
    atomic_write_json(root / "arch.json", ARCH)
    atomic_write_json(root / "train.json", {"architecture": str(root / "arch.json"), "training": TRAINING})
    assert cli(["pretrain", "--config", str(root / "train.json"), "--data_dirs", str(tiny_packed), "--tokenizer_dir",
                str(tiny_tokenizer), "--output_dir", str(root), "--log-level", "WARNING"]) == 0
    return root / "gg" / "final"


@pytest.fixture(scope="module")
def exported(model) -> dict[str, Path]:
    for quant in ("f16", "q8_0"):
        assert cli(["export", "--format", "gguf", "--model_path", str(model), "--quant", quant,
                    "--log-level", "WARNING"]) == 0
    return {q: model / f"model-{q}.gguf" for q in ("f16", "q8_0")}


def test_file_reads_back_with_gguf(model, exported):
    from lmforge.data.chatml import CHAT_TEMPLATE
    from lmforge.tokenizer.spm import load_tokenizer

    reader = gguf.GGUFReader(str(exported["f16"]))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "llama"
    assert (field("llama.block_count"), field("llama.attention.head_count"), field("llama.attention.head_count_kv"),
            field("llama.context_length"), field("llama.embedding_length")) == (2, 4, 2, 128, 64)
    sp = load_tokenizer(model).sp
    assert field("tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert field("tokenizer.ggml.token_type")[4:6] == [4, 4]  # <|im_start|>, <|im_end|>: user-defined
    from lmforge.tokenizer.hf_export import bpe_merges, load_proto

    merges = [f"{a} {b}" for a, b in bpe_merges(load_proto(model / "spm.model"))]
    assert field("tokenizer.ggml.merges") == merges and merges  # the Hugging Face export's merges
    assert field("tokenizer.chat_template") == CHAT_TEMPLATE
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
            field("tokenizer.ggml.eot_token_id")) == (1, 2, 5)
    assert field("tokenizer.ggml.add_space_prefix") is False and field("tokenizer.ggml.add_bos_token") is False
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.attn_k.weight" in names and "output.weight" not in names  # tied
    q8 = {t.name: t.tensor_type for t in gguf.GGUFReader(str(exported["q8_0"])).tensors}
    assert q8["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert q8["output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert exported["q8_0"].stat().st_size < exported["f16"].stat().st_size


def test_transformers_loads_it_and_f16_computes_the_same(model, exported):
    import torch
    from transformers import AutoModelForCausalLM

    from lmforge.tokenizer.spm import load_tokenizer

    tok = load_tokenizer(model)
    source = AutoModelForCausalLM.from_pretrained(model).eval()
    loaded = {q: AutoModelForCausalLM.from_pretrained(model, gguf_file=p.name, dtype=torch.float32).eval()
              for q, p in exported.items()}
    for prompt in PROMPTS:
        ids = torch.tensor([[tok.bos_id, *tok.encode(prompt)]])
        with torch.no_grad():
            want = source(ids).logits
            assert (loaded["f16"](ids).logits - want).abs().max() < 1e-2
            assert (loaded["q8_0"](ids).logits - want).abs().max() < 0.25
            # The same stop tokens for both: a GGUF carries one EOS, generation_config.json two.
            greedy = [m.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=[2, 5])[0].tolist()
                      for m in (source, loaded["f16"])]
        assert greedy[0] == greedy[1], prompt


def test_clear_errors(tmp_path, model, monkeypatch, capsys):
    import sys

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert cli(["export", "--format", "gguf", "--model_path", str(tmp_path)]) == 2
    assert "supports Llama models, this one is 'gpt2'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    assert cli(["export", "--format", "gguf", "--model_path", str(model)]) == 2
    assert "pip install" in capsys.readouterr().err
