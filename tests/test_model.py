"""Architecture configs -> transformers Llama models: parameter counts, FLOPs, attention choice, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.errors import ConfigError
from lmforge.model.architecture import (ArchitectureConfig, build_model, choose_attention, count_parameters, flops_per_token,
                           load_architecture)

REPO = Path(__file__).resolve().parents[1]


def test_shipped_architectures_have_the_advertised_sizes():
    tiny = load_architecture(REPO / "config/architectures/tiny.json")
    assert tiny.name == "tiny" and count_parameters(tiny) == 23_204_736  # "Model: 23.2M parameters"
    quick = load_architecture(REPO / "config/architectures/quickstart.json")
    assert 1_000_000 <= count_parameters(quick) <= 3_000_000


@pytest.mark.parametrize("arch", [
    ArchitectureConfig(vocab_size=400, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
    ArchitectureConfig(vocab_size=500, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                       intermediate_size=96, tie_word_embeddings=False),
])
def test_parameter_count_matches_the_built_model(arch):
    model = build_model(arch)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(arch)
    assert model.config.tie_word_embeddings == arch.tie_word_embeddings
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 3)
    assert model.config._attn_implementation == "sdpa"


def test_vocab_size_from_the_tokenizer_wins():
    arch = ArchitectureConfig(vocab_size=32768, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = build_model(arch, vocab_size=300)
    assert model.config.vocab_size == 300 and model.get_input_embeddings().weight.shape == (300, 32)


def test_flops_per_token_formula():
    arch = load_architecture(REPO / "config/architectures/tiny.json")
    assert flops_per_token(arch, 1024) == 6 * 23_204_736 + 12 * 6 * 384 * 1024


def test_attention_choice_falls_back_to_sdpa_off_cuda():
    impl, why = choose_attention("cpu")
    assert impl == "sdpa" and why


def test_inconsistent_architecture_is_rejected_with_every_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"hidden_size": 100, "num_heads": 3, "num_layers": 0, "dropout": 0.1}')
    with pytest.raises(ConfigError) as err:
        load_architecture(path)
    text = str(err.value)
    assert "num_layers: must be >= 1" in text and "dropout: unknown key" in text
    assert "must be divisible by num_heads" in text
