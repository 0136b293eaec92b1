"""`lmforge sft-data`: local files and the mirror through the same code, counts, split, manifest, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.artifacts import load_manifest, sha256_file
from lmforge.data.chatml import spans
from lmforge.cli import main as cli
from lmforge.data.sft_dataset import SFTSplit
from lmforge.tokenizer.spm import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def alpaca_records(texts: list[str], n: int) -> list[dict]:
    """Alpaca-schema records from real prose: summarise a docstring -> its first sentence."""
    records = []
    for i, text in enumerate(texts[:n]):
        first = text.split(". ")[0][:300].strip()
        extra = text[:200] if i % 2 else ""
        records.append({"instruction": f"Summarise this in one sentence (item {i}).", "input": extra, "output": first})
    return records


def write_jsonl(path: Path, rows: list, raw_lines: list[str] = ()) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for line in raw_lines:
            f.write(line + "\n")
    return path


def run_sft_data(tok, out, files, *extra) -> int:
    return cli(["sft-data", "--config", str(ROOT / "config/sft/datasets/alpaca_chatml.json"), "--tokenizer_dir",
                str(tok), "--output_dir", str(out), "--input-files", *map(str, files), "--log-level", "WARNING",
                "--set", "processing.val_fraction=0.1", *extra])


def test_alpaca_local_files_end_to_end(tmp_path, tiny_tokenizer, tiny_texts, capsys):
    rows = alpaca_records(tiny_texts, 60) + [{"instruction": "Empty answer", "input": "", "output": ""},
                                             {"instruction": " ".join(tiny_texts)[:6000], "input": "", "output": "long"}]
    src = write_jsonl(tmp_path / "alpaca.jsonl", rows, raw_lines=["{broken json"])
    out = tmp_path / "sft"
    assert run_sft_data(tiny_tokenizer, out, [src]) == 0
    manifest = load_manifest(out, "sft-data", verify="sha256")
    tok = load_tokenizer(tiny_tokenizer)
    assert manifest["tokenizer_sha256"] == tok.sha256
    assert manifest["tokenizer_config_sha256"] == sha256_file(Path(tiny_tokenizer) / "tokenizer_config.json")
    fig = manifest["figures"]
    assert fig["examples"] == {"train": 54, "val": 6}  # every 10th record goes to val
    assert fig["skipped"] == {"empty": 1, "malformed_json": 1, "too_long": 1}
    train = SFTSplit(out, "train")
    assert len(train) == 54 and fig["tokens"]["train"] == int(train.tokens.sizes.sum())
    ids, mask = train[0]
    assert ids[0] == tok.bos_id and len(spans(mask)) == 1
    # the learned span decodes to the first record's output and ends with <|im_end|>
    (start, end), = spans(mask)
    assert ids[end - 1] == tok.im_end_id
    assert tok.decode(ids[start:end - 1]) == rows[0]["output"]
    assert "✅ SFT corpus ready" in capsys.readouterr().out
    # rerun: up to date, nothing rewritten
    before = (out / "manifest.json").stat().st_mtime_ns
    assert run_sft_data(tiny_tokenizer, out, [src]) == 0
    assert (out / "manifest.json").stat().st_mtime_ns == before
    # other data under the same file name: not up to date, rebuilt
    write_jsonl(src, rows[:30])
    assert run_sft_data(tiny_tokenizer, out, [src]) == 0
    assert load_manifest(out, "sft-data")["figures"]["examples"] == {"train": 27, "val": 3}


def test_cap_and_system_message(tmp_path, tiny_tokenizer, tiny_texts):
    src = write_jsonl(tmp_path / "a.jsonl", alpaca_records(tiny_texts, 40))
    out = tmp_path / "capped"
    assert run_sft_data(tiny_tokenizer, out, [src], "--max-examples", "15",
                        "--set", "processing.system_message=You are helpful.") == 0
    fig = load_manifest(out, "sft-data")["figures"]
    assert fig["examples"]["train"] + fig["examples"]["val"] == 15
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert sample["text"].startswith("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n")


def test_user_errors_are_one_message(tmp_path, tiny_tokenizer, capsys):
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"name": "x", "source": {"format": "alpacca", "hub_id": "a/b"},
                                   "processing": {"max_length": 0}}))
    code = cli(["sft-data", "--config", str(bad_cfg), "--tokenizer_dir", str(tiny_tokenizer),
                "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "source.format" in err and "processing.max_length" in err and "Traceback" not in err
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"instruction": "", "input": "", "output": ""}])
    assert run_sft_data(tiny_tokenizer, tmp_path / "o2", [empty]) == 2
    assert "no usable conversation" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "manifest.json").exists() and not (tmp_path / "o2" / "train.bin").exists()


@pytest.mark.realdata
def test_mirror_alpaca_and_oasst1(tmp_path, tiny_tokenizer, mirror, monkeypatch):
    monkeypatch.setenv("LMFORGE_MIRROR", str(mirror))
    for name, cap in (("alpaca_chatml", 400), ("oasst1_chatml", None)):
        out = tmp_path / name
        args = ["sft-data", "--config", str(ROOT / f"config/sft/datasets/{name}.json"), "--tokenizer_dir",
                str(tiny_tokenizer), "--output_dir", str(out), "--log-level", "WARNING"]
        assert cli(args + (["--max-examples", str(cap)] if cap else [])) == 0
        manifest = load_manifest(out, "sft-data", verify="sha256")
        fig = manifest["figures"]
        assert fig["examples"]["train"] > 0 and fig["examples"]["val"] > 0
        masks = SFTSplit(out, "train").mask
        assert 0 < int(np.asarray(masks._bin).sum()) < fig["tokens"]["train"]
    oasst = load_manifest(tmp_path / "oasst1_chatml", "sft-data")["figures"]
    assert oasst["groups"] == 100  # the mirror's 100 English trees, one best path each
    # multi-turn conversations exist: some example has several assistant spans
    split = SFTSplit(tmp_path / "oasst1_chatml", "train")
    assert max(len(spans(split[i][1])) for i in range(len(split))) >= 2
