"""`lmforge sft` on CPU: LoRA lowers the SFT loss, final/ is adapter + merged model, resume is exact,
tokenizer mismatches stop; `lmforge eval-sft` writes its results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lmforge.artifacts import load_manifest
from lmforge.cli import main as cli
from test_sft_data import alpaca_records, write_jsonl
from conftest import make_base_model_dir, make_tokenizer_dir

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses run this checkout's lmforge, whatever the editable install points at.
ENV = {**os.environ, "PYTHONPATH": str(Path(__import__("lmforge").__file__).resolve().parents[1]),
       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

TRAIN_CFG = {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
    "training": {"max_steps": 12, "per_device_batch_size": 4, "gradient_accumulation_steps": 2,
                 "learning_rate": 5e-3, "lr_scheduler": "constant", "warmup_steps": 0, "weight_decay": 0.0,
                 "eval_every": 6, "eval_batches": 4, "save_every": 6, "keep_last": 0, "log_every": 1,
                 "seed": 7, "tensorboard": False},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer, tiny_texts):
    root = tmp_path_factory.mktemp("sft")
    tok = tiny_tokenizer  # made by the real tokenizer stage: Hugging Face files included
    base = make_base_model_dir(root / "base", tok)
    data = []
    for name, lo, hi in (("a", 0, 60), ("b", 60, 90)):
        src = write_jsonl(root / f"{name}.jsonl", alpaca_records(tiny_texts[lo:hi], hi - lo))
        out = root / f"data_{name}"
        assert cli(["sft-data", "--config", str(ROOT / "config/sft/datasets/alpaca_chatml.json"), "--tokenizer_dir",
                    str(tok), "--output_dir", str(out), "--input-files", str(src), "--log-level", "WARNING",
                    "--set", "processing.val_fraction=0.15", "--set", "processing.max_length=384"]) == 0
        data.append(out)
    cfg = root / "lora.json"
    cfg.write_text(json.dumps(TRAIN_CFG))
    return {"root": root, "tok": tok, "base": base, "data": data, "cfg": cfg}


def sft_args(s, out, *extra):
    return ["sft", "--config", str(s["cfg"]), "--model_path", str(s["base"]), "--data_dirs",
            *map(str, s["data"]), "--data_weights", "0.7", "0.3", "--tokenizer_path", str(s["tok"]),
            "--output_dir", str(out), "--log-level", "WARNING", *extra]


@pytest.fixture(scope="module")
def trained(setup):
    out = setup["root"] / "run"
    assert cli(sft_args(setup, out)) == 0
    return out


def val_nll(model_dir, data_dirs):
    from transformers import AutoModelForCausalLM

    from lmforge.data.sft_batches import iter_eval_batches
    from lmforge.data.sft_dataset import SFTSplit
    from lmforge.evaluation.sft_suite import assistant_nll

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    nll = tokens = 0
    for d in data_dirs:
        n, t = assistant_nll(model, iter_eval_batches(SFTSplit(d, "val"), 4, pad_id=3))
        nll, tokens = nll + n, tokens + t
    return nll / tokens


def test_lora_lowers_sft_loss_and_exports(setup, trained):
    final = trained / "final"
    manifest = load_manifest(final, "sft", verify="sha256")
    assert manifest["tokenizer_sha256"] == load_manifest(setup["base"], "pretrain")["tokenizer_sha256"]
    assert manifest["figures"]["realised_mix"][0] == pytest.approx(0.7, abs=0.2)
    for name in ("config.json", "model.safetensors", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "spm.model"):
        assert (final / name).is_file(), name
    adapter_cfg = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and adapter_cfg["lora_alpha"] == 16
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    template = json.loads((final / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in template
    assert val_nll(final, setup["data"]) < val_nll(setup["base"], setup["data"]) - 0.05


def test_merged_logits_equal_base_plus_adapter(setup, trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = trained / "final"
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    combined = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup["base"]), final / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(setup["base"]).eval()
    ids = torch.tensor([[1, 4, 20, 30, 40, 5, 50, 60, 70, 80]])
    with torch.no_grad():
        a, b, c = merged(ids).logits, combined(ids).logits, base(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)  # the adapter did change the model


def test_resume_is_exact(setup, trained):
    import torch
    from safetensors.torch import load_file

    out = setup["root"] / "resumed"
    assert cli(sft_args(setup, out, "--set", "training.stop_after_steps=6")) == 0
    assert (out / "step_6").is_dir() and not (out / "final").exists()
    assert cli(sft_args(setup, out)) == 0  # resumes from step_6 automatically
    a = load_file(trained / "final" / "adapter" / "adapter_model.safetensors")
    b = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # an up-to-date run is skipped
    mtime = (out / "final" / "manifest.json").stat().st_mtime_ns
    assert cli(sft_args(setup, out)) == 0
    assert (out / "final" / "manifest.json").stat().st_mtime_ns == mtime


def test_ctrl_c_saves_an_adapter_checkpoint_and_the_same_command_resumes(setup, tmp_path):
    """SIGINT to a real `lmforge sft` stops at a step boundary with a
    resumable step_N/ (adapter weights), and the same command continues from it."""
    import signal
    import subprocess
    import time

    from lmforge.training.checkpoint import latest_checkpoint, load_meta

    out = tmp_path / "run"
    # max_steps: far more than run before the signal, few enough that the planned data mix is quick to compute
    cmd = [sys.executable, "-m", "lmforge.cli", *sft_args(setup, out, "--set", "training.max_steps=5000",
                                                           "--set", "training.save_every=0")]
    cmd[cmd.index("--log-level") + 1] = "INFO"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").stat().st_size:
        assert time.time() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped by SIGINT (Ctrl-C) after step" in errors[0], err[-2000:]
    ckpt = latest_checkpoint(out)
    stopped_at = load_meta(ckpt)["step"]
    assert (ckpt / "adapter_model.safetensors").is_file() and not (out / "final").exists()

    again = subprocess.run([*cmd, "--set", f"training.stop_after_steps={stopped_at + 1}"], capture_output=True,
                           text=True, env=ENV, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {ckpt}: step {stopped_at}" in again.stderr
    assert load_meta(latest_checkpoint(out))["step"] == stopped_at + 1


def test_tokenizer_mismatch_stops(setup, tiny_texts, capsys, tmp_path):
    other = make_tokenizer_dir(tmp_path / "other_tok", tiny_texts, vocab_size=450)
    out = tmp_path / "run"
    code = cli(["sft", "--config", str(setup["cfg"]), "--model_path", str(setup["base"]), "--data_dirs",
                *map(str, setup["data"]), "--tokenizer_path", str(other), "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "tokenizer mismatch" in err and str(setup["base"]) in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_eval_sft_results(setup, trained, tmp_path, capsys):
    boolq = write_jsonl(tmp_path / "boolq.jsonl", [
        {"question": "is the sky blue", "passage": "The sky is blue on clear days.", "idx": i % 3, "label": 1 - i % 2}
        for i in range(6)])
    pre = tmp_path / "pretrain_results.json"
    pre.write_text(json.dumps({"boolq": {"accuracy": 0.25, "examples": 6}}))
    cfg = json.loads((ROOT / "config/evaluation/sft_standard.json").read_text())
    cfg["smoke"]["cases"] = cfg["smoke"]["cases"][:2]
    cfg["smoke"]["max_new_tokens"] = 12
    cfg_path = tmp_path / "eval.json"
    cfg_path.write_text(json.dumps(cfg))
    out_file = tmp_path / "eval" / "results.json"
    assert cli(["eval-sft", "--config", str(cfg_path), "--model_path", str(trained / "final"), "--tokenizer_path",
                str(setup["tok"]), "--output_file", str(out_file), "--boolq-file", str(boolq),
                "--pretrain-results", str(pre), "--set", "runtime.device=cpu", "--log-level", "WARNING"]) == 0
    results = json.loads(out_file.read_text())
    ppl = results["sft_perplexity"]
    assert ppl["perplexity"] == pytest.approx(2.718281828 ** val_nll(trained / "final", setup["data"]), rel=1e-4)
    assert results["boolq"]["examples"] == 6 and results["boolq"]["prompt_format"] == "harness"
    assert results["boolq_chatml"]["prompt_format"] == "chatml"
    assert results["pretrain_comparison"]["boolq_delta"] == pytest.approx(results["boolq"]["accuracy"] - 0.25)
    assert 0.0 <= results["smoke"]["quality_score"] <= 1.0 and results["smoke"]["cases"] == 2
    gens = [json.loads(line) for line in (out_file.parent / "generations.jsonl").read_text().splitlines()]
    assert [g["case"] for g in gens] == ["capital_france", "primary_colors"]
    assert load_manifest(out_file.parent, "eval-sft")["figures"]["smoke_quality"] == results["smoke"]["quality_score"]
    assert "✅ SFT evaluation complete" in capsys.readouterr().out
    # the model card now carries these results beside the plan's reference range.
    card = (trained / "final" / "README.md").read_text()
    quality = results["smoke"]["quality_score"]
    assert f"| smoke_quality (eval-sft) | {quality:.4g} | 0.65–0.8 | `{out_file.resolve()}` |" in card
    assert "not run yet" not in card


def test_chat_template_reproduces_training_ids(trained):
    from transformers import AutoTokenizer

    from lmforge.data.chatml import encode_conversation, encode_prompt
    from lmforge.tokenizer.spm import load_tokenizer

    final = trained / "final"
    hf, tok = AutoTokenizer.from_pretrained(final), load_tokenizer(final)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?\nThanks."},
                {"role": "assistant", "content": "Paris, of course."}]
    assert list(hf.apply_chat_template(messages, tokenize=True, return_dict=False)) == \
        encode_conversation(tok, messages).ids
    assert list(hf.apply_chat_template(messages[:2], tokenize=True, add_generation_prompt=True,
                                       return_dict=False)) == encode_prompt(tok, messages[:2])


def messages_of(tok, ids) -> list[dict]:
    """The conversation behind stored SFT ids: each <|im_start|> ... <|im_end|> block decoded as role\\ncontent."""
    messages, rest = [], list(ids[1:])  # ids[0] is <s>
    while rest:
        assert rest[0] == tok.im_start_id
        end = rest.index(tok.im_end_id)
        role, content = tok.decode(rest[1:end]).split("\n", 1)
        messages.append({"role": role, "content": content})
        rest = rest[end + 1 + len(tok.encode("\n")):]
    return messages


def test_chat_template_reproduces_every_stored_training_example(setup, trained):
    """the template in final/ (and in the tokenizer dir) gives the very ids sft-data stored."""
    from transformers import AutoTokenizer

    from lmforge.data.sft_dataset import SFTSplit
    from lmforge.tokenizer.spm import load_tokenizer

    tok = load_tokenizer(setup["tok"])
    templates = [AutoTokenizer.from_pretrained(d) for d in (trained / "final", setup["tok"])]
    assert templates[0].chat_template == templates[1].chat_template
    checked = 0
    for data_dir in setup["data"]:
        for split in ("train", "val"):
            stored = SFTSplit(data_dir, split)
            for i in range(len(stored)):
                ids = stored[i][0].tolist()
                messages = messages_of(tok, ids)
                for hf in templates:
                    assert list(hf.apply_chat_template(messages, tokenize=True, return_dict=False)) == ids
                checked += 1
    assert checked >= 50  # every example of both datasets, both splits


def test_generate_stops_at_im_end_and_context_is_the_models(trained):
    """generation_config.json stops on <|im_end|>: a reply that closes its turn ends there."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = trained / "final"
    model, hf = AutoModelForCausalLM.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    assert model.generation_config.eos_token_id == [2, 5]
    assert hf.model_max_length == model.config.max_position_embeddings == 512
    prompt = hf.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    # Make <|im_end|> the model's choice at the first step; the saved config alone must stop generation there.
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False, sequence_bias={(5,): 100.0})
    assert out[0, prompt["input_ids"].shape[1]:].tolist() == [5]
    with torch.no_grad():  # what the old config (</s> only) did: run on to max_new_tokens
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False, sequence_bias={(5,): 100.0},
                             eos_token_id=2)
    assert out[0, prompt["input_ids"].shape[1]:].tolist() == [5] * 12


def test_adapter_loads_from_any_cwd_and_after_a_move(setup, tmp_path, monkeypatch):
    """AutoPeftModelForCausalLM from another working directory; lmforge.load_model after `mv`."""
    import shutil
    import subprocess

    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from lmforge import load_model
    from lmforge.model.adapter import BASE_FILE

    tree = tmp_path / "tree"
    shutil.copytree(setup["base"], tree / "checkpoints/pretrain/base/final")
    monkeypatch.chdir(tmp_path)  # relative paths, as a pipeline file gives them
    args = sft_args(setup, Path("tree/checkpoints/sft/run"), "--set", "training.max_steps=2",
                    "--set", "training.save_every=0")
    args[args.index("--model_path") + 1] = "tree/checkpoints/pretrain/base/final"
    assert cli(args) == 0
    adapter = tree / "checkpoints/sft/run/final/adapter"
    assert json.loads((adapter / BASE_FILE).read_text())["relative_to_adapter"] == "../../../../pretrain/base/final"
    assert not (adapter / "README.md").exists() or "lmforge" in (adapter / "README.md").read_text()
    ids = torch.tensor([[1, 4, 60, 70, 80, 5]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(adapter.parent)(ids).logits

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with torch.no_grad():
        peft_logits = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()(ids).logits
    assert torch.allclose(peft_logits, merged, atol=1e-4)

    subprocess.run(["mv", str(tree), str(tmp_path / "moved")], check=True)
    moved = tmp_path / "moved/checkpoints/sft/run/final/adapter"
    model, tok = load_model(moved)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, merged, atol=1e-4)
    assert tok.sha256 == json.loads((moved / BASE_FILE).read_text())["tokenizer_sha256"]

    # PEFT alone cannot follow a move (it resolves the path against the cwd, see lmforge.model.adapter) ...
    with pytest.raises(OSError):
        AutoPeftModelForCausalLM.from_pretrained(str(moved))
    # ... until the documented one-liner points the adapter at the base beside it again.
    relinked = subprocess.run([sys.executable, "-m", "lmforge.cli", "relink-adapter", str(moved)], capture_output=True, text=True,
                              env=ENV, check=False)
    assert relinked.returncode == 0, relinked.stderr
    config = json.loads((moved / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "moved/checkpoints/pretrain/base/final").resolve())
    load_manifest(moved.parent, "sft", verify="sha256")  # the manifest follows the rewritten files
    assert str(moved) in (moved / "README.md").read_text()  # the card's load snippet names the new place
    with torch.no_grad():
        peft_logits = AutoPeftModelForCausalLM.from_pretrained(str(moved)).merge_and_unload()(ids).logits
    assert torch.allclose(peft_logits, merged, atol=1e-4)


def test_relink_refuses_a_base_it_cannot_find_or_with_another_tokenizer(setup, trained, tmp_path):
    """`lmforge relink-adapter`: one error line and exit 2 when the base is gone or is not the adapter's."""
    import shutil
    import subprocess

    run = tmp_path / "run"
    shutil.copytree(trained / "final", run / "final")
    adapter = run / "final/adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")  # as after the base alone was moved away
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "base_model.json").write_text(json.dumps({"relative_to_adapter": "../../../gone", "absolute": "x",
                                                         "tokenizer_sha256": "a" * 64}))
    other = tmp_path / "other_base"
    shutil.copytree(setup["base"], other)

    def relink(*extra):
        return subprocess.run([sys.executable, "-m", "lmforge.cli", "relink-adapter", str(adapter), *extra], capture_output=True,
                              text=True, env=ENV, check=False)

    for proc, says in ((relink(), "base model not found"), (relink("--base", str(other)), "tokenizer")):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and says in errors[0], proc.stderr
    assert json.loads((adapter / "adapter_config.json").read_text()) == config  # nothing half-written


def test_model_cards_describe_final_and_adapter(setup, trained):
    """README.md in final/ and adapter/ with hub metadata, shape, data token counts, sha256, usage."""
    from transformers import AutoModelForCausalLM

    final = trained / "final"
    card = (final / "README.md").read_text()
    manifest = load_manifest(final, "sft")
    front = card.split("---")[1]
    for key in ("license: other", "library_name: transformers", f"base_model: {setup['base'].resolve()}",
                "datasets:", '- "tatsu-lab/alpaca"', "tags:", '- "chatml"'):
        assert key in front, key
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(final).parameters())
    assert f"parameters: **{n:,}**" in card
    assert manifest["tokenizer_sha256"] in card and "AutoModelForCausalLM.from_pretrained" in card
    for d in setup["data"]:
        figures = load_manifest(d, "sft-data")["figures"]
        assert f"train {figures['tokens']['train']:,} (assistant, trained on: {figures['assistant_tokens']['train']:,})" in card
    assert "| final training loss |" in card and "1.5–2" in card  # the plan's SFT loss range beside ours
    assert "README.md" not in {o["path"] for o in manifest["outputs"]}  # rewritten by eval: not hashed

    adapter_card = (final / "adapter" / "README.md").read_text()
    assert "library_name: peft" in adapter_card and f"base_model: {setup['base'].resolve()}" in adapter_card
    from safetensors.torch import load_file

    lora = sum(t.numel() for t in load_file(final / "adapter" / "adapter_model.safetensors").values())
    assert f"{lora:,} adapter parameters" in adapter_card and "AutoPeftModelForCausalLM" in adapter_card
