"""`lmforge sft --model_path DIR` on a plain Hugging Face Llama directory with its own tokenizer
(no lmforge manifest): SFT data, training, lineage recorded as external, and `verify` showing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmforge.artifacts import load_manifest, sha256_file
from lmforge.cli import main as cli
from lmforge.errors import LmforgeError
from test_sft_data import alpaca_records, write_jsonl
from test_sft_train import TRAIN_CFG

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPECIALS = ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]


def make_external_model(out: Path, texts: list[str], specials=SPECIALS, model_type: str = "llama") -> Path:
    """A byte-level BPE tokenizer and a small Llama, saved as any Hugging Face user would."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    extra = [s for s in specials if s.startswith("<|")]
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                 additional_special_tokens=extra)
    hf.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(hf), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=256, bos_token_id=hf.bos_token_id,
                         eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    if model_type != "llama":
        cfg = json.loads((out / "config.json").read_text())
        cfg["model_type"] = model_type
        (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_texts):
    root = tmp_path_factory.mktemp("external")
    model = make_external_model(root / "hf_model", tiny_texts)
    src = write_jsonl(root / "a.jsonl", alpaca_records(tiny_texts[:60], 60))
    data = root / "data"
    assert cli(["sft-data", "--config", str(ROOT / "config/sft/datasets/alpaca_chatml.json"), "--tokenizer_dir",
                str(model), "--output_dir", str(data), "--input-files", str(src), "--log-level", "WARNING",
                "--set", "processing.val_fraction=0.15", "--set", "processing.max_length=256"]) == 0
    cfg = root / "lora.json"
    cfg.write_text(json.dumps({**TRAIN_CFG, "training": {**TRAIN_CFG["training"], "max_steps": 4, "save_every": 0}}))
    out = root / "run"
    assert cli(["sft", "--config", str(cfg), "--model_path", str(model), "--data_dirs", str(data),
                "--tokenizer_path", str(model), "--output_dir", str(out), "--log-level", "WARNING"]) == 0
    return {"root": root, "model": model, "data": data, "out": out, "cfg": cfg}


def test_sft_from_a_plain_hf_model_records_an_external_lineage(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = sha256_file(run["model"] / "tokenizer.json")
    data = load_manifest(run["data"], "sft-data")
    assert data["tokenizer_sha256"] == sha and data["external_tokenizer"]["sha256"] == sha
    final = run["out"] / "final"
    manifest = load_manifest(final, "sft")
    assert manifest["tokenizer_sha256"] == sha
    assert manifest["figures"]["external_tokenizer"]["path"] == str(run["model"].resolve())
    assert manifest["inputs"]["base_model"]["identity"] is None  # not an lmforge artifact
    hf = AutoTokenizer.from_pretrained(final)
    assert sha256_file(final / "tokenizer.json") == sha and not (final / "spm.model").exists()
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.generation_config.eos_token_id == [hf.eos_token_id, hf.convert_tokens_to_ids("<|im_end|>")]
    assert "external) tokenizer" in (final / "README.md").read_text()


def test_verify_shows_the_external_tokenizer(run, capsys):
    assert cli(["verify", str(run["data"]), str(run["out"])]) == 0
    out = capsys.readouterr().out
    assert "external tokenizer" in out and "✓ external" in out and "all 2 artifacts agree" in out


def test_refusals_are_one_line(run, tmp_path, tiny_texts, tiny_tokenizer, capsys):
    base = ["sft", "--config", str(run["cfg"]), "--data_dirs", str(run["data"]), "--output_dir", str(tmp_path / "o")]
    # Its data were made with the external tokenizer: an lmforge tokenizer does not match.
    assert cli([*base, "--model_path", str(run["model"]), "--tokenizer_path", str(tiny_tokenizer)]) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err.lower()
    gpt = make_external_model(tmp_path / "gpt", tiny_texts[:50], model_type="gpt2")
    assert cli([*base, "--model_path", str(gpt), "--tokenizer_path", str(gpt)]) == 2
    assert "only Llama-family models" in capsys.readouterr().err
    plain = make_external_model(tmp_path / "plain", tiny_texts[:50], specials=["<s>", "</s>", "<pad>"])
    assert cli([*base, "--model_path", str(plain), "--tokenizer_path", str(plain)]) == 2
    assert "no single <|im_start|> token" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_python_api_loads_and_answers_with_the_external_tokenizer(run):
    from lmforge import load_model, reply

    model, tok = load_model(run["out"] / "final")
    assert tok.sha256 == sha256_file(run["model"] / "tokenizer.json")
    assert isinstance(reply(model, tok, "Hello", max_new_tokens=4), str)


def test_chat_loads_a_plain_hf_model_with_its_own_tokenizer(run, tmp_path):
    """`lmforge chat --model_path` on a Hugging Face Llama that lmforge never saw: its own tokenizer,
    and the same refusal of custom code as every other loader."""
    from lmforge.model.chat import Sampling, generate_reply, load_chat_model

    model, tok = load_chat_model(run["model"])
    assert tok.sha256 == sha256_file(run["model"] / "tokenizer.json")
    reply = generate_reply(model, tok, [{"role": "user", "content": "Hello"}], Sampling(max_new_tokens=3))
    assert isinstance(reply.text, str) and len(reply.ids) <= 3
    hostile = tmp_path / "hostile"
    shutil.copytree(run["model"], hostile)
    config = json.loads((hostile / "config.json").read_text())
    (hostile / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "x.Model"}}))
    with pytest.raises(LmforgeError, match="auto_map|custom code"):
        load_chat_model(hostile)
