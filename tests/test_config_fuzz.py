"""The config loader and the record parsers never raise a traceback.

Each case named in the issue is reproduced first; then a seeded fuzz pass mutates the
real configs of the repository and real-looking records a few hundred times. Every
outcome must be a valid value or one LmforgeError (which the CLI prints as one
`error:` line, exit 2).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmforge.config import load_config, parse_set_overrides
from lmforge.errors import ConfigError, LmforgeError

REPO = Path(__file__).resolve().parents[1]
SRC = Path(__import__("lmforge").__file__).resolve().parents[1]


def _schemas() -> dict[str, object]:
    from lmforge.model.architecture import ArchitectureConfig
    from lmforge.pipeline.pipeline_file import Pipeline
    from lmforge.data.packing import PackConfig
    from lmforge.stages.pretrain import PretrainConfig
    from lmforge.stages.sft import SFTConfig
    from lmforge.stages.sft_data import SFTDataConfig
    from lmforge.tokenizer.training import TokenizerConfig

    return {"config/architectures/tiny.json": ArchitectureConfig, "config/architectures/quickstart.json": ArchitectureConfig,
            "config/quickstart/pretrain.json": PretrainConfig, "config/pretrain/training/chinchilla_tiny_500m.json": PretrainConfig,
            "config/quickstart/pipeline.json": Pipeline, "config/pipelines/tiny_23m.json": Pipeline,
            "config/quickstart/packing.json": PackConfig, "config/pretrain/tokenizer/spm32k.json": TokenizerConfig,
            "config/quickstart/sft_lora.json": SFTConfig, "config/sft/datasets/alpaca_chatml.json": SFTDataConfig,
            "config/quickstart/sft_alpaca.json": SFTDataConfig, "corpus:config/quickstart/corpus.json": None}


def _load(path: Path, schema, overrides=None):
    if schema is None:
        from lmforge.data.corpus.schema import load_corpus_config

        return load_corpus_config(path, [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()])
    return load_config(path, schema, overrides)


# ---------------------------------------------------------------- the cases

def _arch_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "arch.json"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, message", [
    (b'{"name": "\xff\xfe"}', "not UTF-8"),
    (b'{"hidden_size": ' + b"9" * 5000 + b"}", "unreadable JSON value"),
    (b'{"x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested too deeply"),
    (b'{"num_heads": 0}', "num_heads: must be >= 1"),
    (b'{"rope_theta": NaN}', "must be a finite number"),
    (b'{"rope_theta": Infinity}', "must be a finite number"),
    (b'{"rope_theta": 1e400}', "must be a finite number"),
    (b'{"hidden_size": 64, "num_heads": 0, "num_kv_heads": 0}', "num_heads: must be >= 1"),
], ids=["utf8", "5000_digits", "deep", "heads0", "nan", "infinity", "1e400", "heads0_kv0"])
def test_bad_config_files_are_one_config_error(tmp_path, data, message):
    from lmforge.model.architecture import ArchitectureConfig

    with pytest.raises(ConfigError, match=message):
        load_config(_arch_file(tmp_path, data), ArchitectureConfig)


def test_directory_as_config_and_set_on_a_non_object(tmp_path):
    from lmforge.stages.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, PretrainConfig)
    with pytest.raises(ConfigError, match="training.max_steps is 600, not an object"):
        load_config(REPO / "config/quickstart/pretrain.json", PretrainConfig, parse_set_overrides(["training.max_steps.x=1"]))
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config(REPO / "config/quickstart/pretrain.json", PretrainConfig,
                    parse_set_overrides(["training.learning_rate=NaN"]))


def test_null_pipeline_stage_is_a_config_error(tmp_path):
    from lmforge.pipeline.pipeline_file import Pipeline

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"run_dir": "x", "stages": [None]}))
    with pytest.raises(ConfigError, match=r"stages\[0\]: expected an object"):
        load_config(path, Pipeline)


def test_cli_prints_one_error_line_for_a_bad_config(tmp_path):
    bad = _arch_file(tmp_path, b'{"architecture": "x", "training": {"learning_rate": NaN}}')
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "pretrain", "--config", str(bad), "--data_dirs", "x",
                           "--tokenizer_dir", "y", "--output_dir", str(tmp_path / "o")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == \
        ["error: invalid config (1 problem):"]


def test_absurd_sizes_are_refused_before_allocation():
    from lmforge.training.limits import check_pretrain_fits
    from lmforge.model.architecture import ArchitectureConfig

    tiny = ArchitectureConfig()
    check_pretrain_fits(tiny, 32768, 1024, 8)  # the plan's step 5 fits this machine
    with pytest.raises(ConfigError, match="refused before allocating"):
        check_pretrain_fits(tiny, 32768, 1024, 1_000_000_000)
    with pytest.raises(ConfigError, match="refused before allocating"):
        check_pretrain_fits(ArchitectureConfig(hidden_size=1_000_000, num_heads=10), 32768, 1024, 1)


def test_pretrain_cli_refuses_a_billion_batch_fast(tmp_path, tiny_tokenizer, tiny_packed, capsys):
    import resource
    import time

    from lmforge.artifacts import atomic_write_json
    from lmforge.cli import main as cli_main

    atomic_write_json(tmp_path / "arch.json", {"name": "micro", "hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                               "intermediate_size": 128, "max_position_embeddings": 64})
    atomic_write_json(tmp_path / "t.json", {"architecture": str(tmp_path / "arch.json"),
                                            "training": {"max_steps": 2, "warmup_steps": 0, "tensorboard": False}})
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    code = cli_main(["pretrain", "--config", str(tmp_path / "t.json"), "--data_dirs", str(tiny_packed),
                     "--tokenizer_dir", str(tiny_tokenizer), "--output_dir", str(tmp_path / "o"),
                     "--per_device_batch_size", "1000000000"])
    assert code == 2 and "refused before allocating" in capsys.readouterr().err
    assert time.perf_counter() - start < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: no runaway growth


@pytest.mark.parametrize("line", ['{"text": ' + "[" * 100000 + "]" * 100000 + "}",
                                  '{"text": "a", "n": ' + "7" * 5000 + "}"], ids=["deep", "5000_digits"])
def test_absurd_json_records_are_skipped_and_counted(line):
    from lmforge.data.sources import parse_json_record
    from lmforge.data.packing import _parse

    skips: Counter = Counter()
    assert parse_json_record(line, skips) is None and skips["malformed_json"] == 1
    skipped: Counter = Counter()
    assert _parse(line.encode(), skipped) is None and skipped["malformed_json"] == 1


def test_sft_data_skips_and_counts_absurd_records(tmp_path):
    from lmforge.data.sft_sources import SourceConfig, iter_conversations

    good = {"instruction": "Say hi.", "input": "", "output": "Hi!"}
    lines = [json.dumps(good), '{"instruction": ' + "[" * 100000 + "]" * 100000 + "}",
             '{"instruction": "x", "output": ' + "1" * 5000 + "}", json.dumps(good)]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n")
    skips: Counter = Counter()
    kept = list(iter_conversations(SourceConfig(format="alpaca", files=[str(path)]), skips))
    assert len(kept) == 2 and skips["malformed_json"] == 2


# ---------------------------------------------------------------- seeded fuzz

ODD_VALUES = [None, True, 0, -1, 2 ** 63, 1e308, -1e308, float("nan"), float("inf"), "", "x" * 300, "../../victim",
              [], {}, [None], {"a": {"b": None}}, "\u0000", 0.5]


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    yield path


def _set(node, path, value):
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _mutate(text: str, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # byte-level damage
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # truncation
        return text.encode()[: rng.randrange(len(text))]
    raw = json.loads(text)
    paths = [p for p in _leaves(raw) if p]
    if kind == 2 and paths:  # an odd value somewhere
        _set(raw, rng.choice(paths), rng.choice(ODD_VALUES))
    elif kind == 3 and paths:  # a deep or huge value somewhere
        blob = rng.choice(["[" * 50000 + "]" * 50000, "9" * 5000, "1e999", "-0.0", '"\\ud800"'])
        marker = "__MARK__"
        _set(raw, rng.choice(paths), marker)
        return json.dumps(raw, allow_nan=True).replace(f'"{marker}"', blob).encode()
    elif kind == 4 and paths:  # a key removed or renamed
        path = rng.choice(paths)
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            parent[str(path[-1]) + rng.choice(["", "_x", "s"])] = parent.pop(path[-1])
    else:  # the top level replaced
        raw = rng.choice([[], None, 3, "config", [raw]])
    return json.dumps(raw, allow_nan=True).encode()


def _random_set(rng: random.Random, raw) -> list[str]:
    paths = [".".join(map(str, p)) for p in _leaves(raw) if p and all(isinstance(k, str) for k in p)]
    if not paths:
        return []
    key = rng.choice(paths) + rng.choice(["", ".x", ".0.y"])
    return [f"{key}={rng.choice(['1', 'NaN', '-Infinity', 'null', '[]', '{}', 'abc', '9' * 5000, '[' * 3000])}"]


def test_seeded_fuzz_of_real_configs_gives_no_tracebacks(tmp_path):
    rng = random.Random(13)
    outcomes: Counter = Counter()
    crashes = []
    for n in range(300):
        key, schema = rng.choice(list(_schemas().items()))
        source = REPO / key.split(":", 1)[-1]
        text = source.read_text(encoding="utf-8")
        path = tmp_path / f"m{n}.json"
        with_set = rng.random() < 0.3
        path.write_bytes(text.encode() if with_set else _mutate(text, rng))
        try:
            overrides = parse_set_overrides(_random_set(rng, json.loads(text))) if with_set else None
            _load(path, schema, overrides)
            outcomes["valid"] += 1
        except LmforgeError as exc:
            assert str(exc).strip(), "an error must say something"
            outcomes["error"] += 1
        except Exception as exc:  # noqa: BLE001 - this is what the test hunts
            crashes.append(f"{key} #{n}: {type(exc).__name__}: {str(exc)[:120]}")
    assert not crashes, "\n".join(crashes[:10])
    assert outcomes["error"] > 100 and outcomes["valid"] > 10  # the mutations really exercised both paths


def test_seeded_fuzz_of_records_gives_no_tracebacks():
    from lmforge.data.sft_sources import alpaca_messages
    from lmforge.data.sources import parse_json_record
    from lmforge.data.packing import _parse

    rng = random.Random(8)
    base = [json.dumps({"id": "d1", "source": "wiki", "text": "A short document."}),
            json.dumps({"instruction": "Add 2 and 2.", "input": "", "output": "4"}),
            json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})]
    for n in range(400):
        line = _mutate(rng.choice(base), rng).decode("utf-8", errors="replace")
        skips: Counter = Counter()
        record = parse_json_record(line, skips)
        assert record is None or isinstance(record, dict)
        if isinstance(record, dict):
            alpaca_messages(record)
        _parse(line.encode("utf-8", errors="surrogatepass"), Counter())
