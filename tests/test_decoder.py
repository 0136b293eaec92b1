"""lmforge's training decoder against transformers' LlamaForCausalLM: same logits, same files,
same optimizer step; the chunked loss; no graph break under torch.compile."""

from __future__ import annotations

import pytest
import torch

from lmforge.model.decoder import LmforgeDecoder, build_decoder, chunked_linear_cross_entropy
from lmforge.model.architecture import ArchitectureConfig, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MHA = ArchitectureConfig(name="mha", vocab_size=400, hidden_size=64, num_layers=2, num_heads=2,
                         intermediate_size=128, max_position_embeddings=64)
GQA = ArchitectureConfig(name="gqa", vocab_size=500, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                         intermediate_size=96, max_position_embeddings=64, rope_theta=500.0, tie_word_embeddings=False)
SHAPES = pytest.mark.parametrize("arch", [MHA, GQA], ids=["mha_tied", "gqa_untied"])


def pair(arch):
    """An HF Llama and a decoder holding the HF model's weights (the decoder is initialised differently first)."""
    hf = build_model(arch, seed=1)
    ours = build_decoder(arch, seed=2)
    result = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not result.missing_keys and set(result.unexpected_keys) <= {"lm_head.weight"}
    return hf, ours


def ids_for(arch, batch=2, seq=40, seed=0):
    return torch.randint(0, arch.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


@SHAPES
def test_logits_equal_llama_for_causal_lm(arch):
    hf, ours = pair(arch)
    assert sorted(ours.state_dict()) == sorted(k for k in hf.state_dict() if not (arch.tie_word_embeddings and k == "lm_head.weight"))
    ids = ids_for(arch)
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, ours(ids).logits, rtol=0, atol=1e-5)


@SHAPES
def test_one_optimizer_step_matches_the_hf_step(arch):
    hf, ours = pair(arch)
    ids = ids_for(arch, seed=1)
    labels = ids.clone()
    labels[0, :7] = -100  # ignored positions are skipped the same way
    # Adam's first update is ~lr*sign(g): eps above float noise keeps near-zero gradients comparable.
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-5) for m in (hf, ours)]
    hf_loss = hf(input_ids=ids, labels=labels).loss
    n = int((labels[:, 1:] != -100).sum())
    our_loss = ours(ids, labels=labels) / n
    assert abs(hf_loss.item() - our_loss.item()) < 1e-5
    for loss, opt in zip((hf_loss, our_loss), opts):
        loss.backward()
        opt.step()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(p, theirs[name], rtol=0, atol=1e-5), name
    with torch.no_grad():  # and the next forward still agrees
        assert torch.allclose(hf(ids).logits, ours(ids).logits, rtol=0, atol=1e-4)


@SHAPES
def test_saved_weights_load_in_transformers_and_hf_dirs_load_back(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    ours = build_decoder(arch, seed=3)
    ours.save_pretrained(tmp_path / "ours")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert loaded.config.num_key_value_heads == arch.kv_heads and loaded.config.tie_word_embeddings == arch.tie_word_embeddings
    ids = ids_for(arch, seed=2)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ours(ids).logits)

    hf = build_model(arch, seed=4)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    back = LmforgeDecoder.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)


def test_chunked_loss_equals_the_full_loss_and_its_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[[3, 20]] = -100
    full = torch.nn.functional.cross_entropy(h @ w.t(), targets, ignore_index=-100, reduction="sum")
    gh, gw = torch.autograd.grad(full * 0.5, (h, w))
    chunked = chunked_linear_cross_entropy(h, w, targets, chunk=8)  # 5 chunks, the last one short
    ch, cw = torch.autograd.grad(chunked * 0.5, (h, w))
    assert torch.allclose(full, chunked, atol=1e-4)
    assert torch.allclose(gh, ch, atol=1e-5) and torch.allclose(gw, cw, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(chunked_linear_cross_entropy(h, w, targets, chunk=8), full, atol=1e-4)


def test_bf16_autocast_loss_is_close_and_grads_reach_fp32_masters():
    ours = build_decoder(MHA, seed=0)
    ids = ids_for(MHA)
    with torch.no_grad():
        ref = ours(ids, labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ours(ids, labels=ids)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) / ref.item() < 2e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


def test_compiled_forward_and_loss_have_no_graph_break():
    ours = build_decoder(GQA, seed=0)
    ids = ids_for(GQA, seq=32)
    explanation = torch._dynamo.explain(ours)(ids, labels=ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_the_compiled_loss_is_one_fusable_expression_with_the_eager_values():
    """Under torch.compile the chunk's gradient is softmax - (index == target), with no scatter
    (which would make inductor write and reread an fp32 [rows, V] buffer per chunk); its loss
    and gradients equal the eager in-place form's."""
    from lmforge.model.decoder import IGNORE_INDEX

    torch.manual_seed(0)
    h, w = torch.randn(70, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (70,))
    targets[::7] = IGNORE_INDEX
    eager = chunked_linear_cross_entropy(h, w, targets, chunk=32)
    eager.backward()
    eager_grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))  # submodules too: the Function's body
        return gm.forward

    compiled = torch.compile(chunked_linear_cross_entropy, backend=backend, fullgraph=True)(h, w, targets, 32)
    compiled.backward()
    assert "scatter" not in "".join(graphs) and "arange" in "".join(graphs)
    assert torch.allclose(compiled, eager, rtol=1e-5)
    assert torch.allclose(h.grad, eager_grads[0], atol=1e-5) and torch.allclose(w.grad, eager_grads[1], atol=1e-5)


def test_non_llama_directories_are_refused(tmp_path):
    from lmforge.errors import ArtifactError

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ArtifactError, match="Llama models only"):
        LmforgeDecoder.from_pretrained(tmp_path)
