"""Quality race: lmforge's pretraining recipes against a tuned reference trainer, at equal tokens.

    LMFORGE_MIRROR=../shared/mirror OMP_NUM_THREADS=2 python bench/quality_race.py
    python bench/quality_race.py --tokens 25000000 --shape tiny     # GPU: the 23M shape

One run, in this order:

1. Data, with lmforge's own stages (`lmforge corpus`, `tokenizer`, `pack`) from the mirror:
   a small tokenizer corpus, a SentencePiece tokenizer of `--vocab` pieces (8,192), a
   pretraining corpus of C4, Gutenberg, FineWeb and Wikipedia, packed into rows of `--seq`
   tokens (256). The packed train.bin/val.bin are Megatron token files, which the
   reference reads as they are.
2. Training, every run on the same token budget (`--tokens`, at least 4M on a CPU), with
   the tiny model's layer layout at reduced width (d 128, 4 layers, 4 heads, ffn 512):
   - ref_mb8, ref_mb16: the reference `../shared/bench/peer_quality_bench.py train`, with its
     fixed recipe (AdamW 2e-3, 5% warmup, cosine), at micro-batch 8 and 16;
   - plan: `lmforge pretrain` with the plan's config (chinchilla_tiny_500m.json: AdamW 3e-4,
     batch 8 x 4), max_steps scaled to the budget, warmup 10% as in the plan;
   - recommended: `lmforge pretrain` with config/pretrain/training/recommended_tiny.json,
     max_steps scaled to the budget, its warmup and decay kept as fractions of the run.
   The reference's weights are taken from its process after training (it saves none) and
   written as a plain Hugging Face LlamaForCausalLM (the same function, checked: the
   converted model must reproduce the reference's own validation loss).
3. Scoring: every model by `peer_quality_bench.py eval` on the same validation windows
   (the first `--val-windows` rows of val.bin), and by `lmforge eval` on WikiText-2 from the
   mirror (bits per byte, word perplexity; lm-eval semantics).

It prints one table (and writes it with every figure to <work>/race.json). Runs already
finished in <work> are reused (their results.json), so an interrupted race continues.

On a GPU machine without `datasets` or the mirror (the device machine), build the data here
and carry it (about 55 MB for 25M tokens at a 32K vocabulary, under the 64 MiB a call takes):

    # CPU, once: packed/, tokenizer/, WikiText-2 test pages and the reference script in one folder
    python bench/quality_race.py --shape tiny --vocab 32768 --seq 1024 --corpus-scale 3.4 \
        --work runs/gpu_race --prepare data/gpu_race
    # GPU: train and score from that folder alone (bf16 for lmforge's runs on CUDA)
    python bench/quality_race.py --shape tiny --vocab 32768 --seq 1024 --tokens 25000000 \
        --data-dir data/gpu_race --runs ref_mb32,recommended --work /tmp/race --json $OUT/race.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # this checkout's lmforge, installed or not (as its child processes get it)

from lmforge.artifacts import sha256_json  # after the path above
from lmforge.config import COMMENT_PREFIXES

PEER = ROOT.parent / "shared" / "bench" / "peer_quality_bench.py"
PLAN_CONFIG = ROOT / "config/pretrain/training/chinchilla_tiny_500m.json"
RECOMMENDED_CONFIG = ROOT / "config/pretrain/training/recommended_tiny.json"
SHAPES = {
    # the tiny model's layout at reduced width, for CPU races
    "small": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512},
    # the plan's tiny model (23M with a 32K vocabulary)
    "tiny": {"hidden_size": 384, "num_layers": 6, "num_heads": 6, "intermediate_size": 1024},
}
# Pretraining corpus per source (exact tokens, counted with the race tokenizer). About
# 10M tokens: a 4M-token run samples windows from it without repeating much.
CORPUS_TOKENS = {"c4": 700_000, "gutenberg": 3_000_000, "fineweb_edu": 3_000_000, "wikipedia": 3_000_000}
WIKITEXT_FILE = "wikitext2_test.raw"  # the pages lmforge eval scores, as raw lines (read without `datasets`)
TOKENIZER_TOKENS = {"c4": 500_000, "gutenberg": 800_000, "fineweb_edu": 600_000, "wikipedia": 800_000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/quality_race", help="data, checkpoints and results go here")
    p.add_argument("--mirror", default=os.environ.get("LMFORGE_MIRROR", str(ROOT.parent / "shared" / "mirror")))
    p.add_argument("--tokens", type=int, default=4_000_000, help="training token budget of every run")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--corpus-scale", type=float, default=1.0, help="multiply the pretraining corpus budgets")
    p.add_argument("--runs", default="ref_mb8,ref_mb16,plan,recommended",
                   help="comma-separated: ref_mbN (reference at micro-batch N), plan, recommended, or "
                   "cfg:NAME=PATH (any lmforge training config, scaled like the recommended one); NAME@TOKENS "
                   "runs NAME on another budget (e.g. recommended@2400000 for 60%% of 4M)")
    p.add_argument("--recommended", default=str(RECOMMENDED_CONFIG))
    p.add_argument("--set", action="append", default=[], metavar="RUN:KEY=VALUE",
                   help="extra --set for one lmforge run, e.g. recommended:training.learning_rate=0.01")
    p.add_argument("--val-windows", type=int, default=64)
    p.add_argument("--wikitext-docs", type=int, default=None, help="WikiText-2 test pages scored (default: all 62)")
    p.add_argument("--no-wikitext", action="store_true", help="skip lmforge eval (validation loss only)")
    p.add_argument("--peer", default=None, help=f"the reference script (default: DATA_DIR's copy, else {PEER})")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--prepare", metavar="DIR", default=None,
                   help="build the data, copy what a GPU machine needs into DIR (packed/, tokenizer/, "
                   f"{WIKITEXT_FILE}, the reference script) and stop")
    p.add_argument("--data-dir", default=None,
                   help="train on a --prepare folder instead of building data (no `datasets`, no mirror needed)")
    p.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "fp16"),
                   help="lmforge runs' precision (default: lmforge's own, bf16 on a bf16 CUDA card and fp32 on CPU, as the reference does)")
    a = p.parse_args(argv)
    data_dir = Path(a.data_dir) if a.data_dir else None
    if a.peer is None:
        a.peer = str(data_dir / PEER.name) if data_dir and (data_dir / PEER.name).is_file() else str(PEER)
    a.wikitext_file = str(data_dir / WIKITEXT_FILE) if data_dir and (data_dir / WIKITEXT_FILE).is_file() else None
    return a


def lmforge(*args: str, log: Path) -> None:
    """One lmforge CLI call in a child process; its output goes to `log`, a failure stops the race."""
    cmd = [sys.executable, "-m", "lmforge.cli", *args]
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    if done.returncode:
        sys.exit(f"error: {' '.join(args[:1])} failed (exit {done.returncode}); see {log}")


def child_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ---------------------------------------------------------------- 1. data

def build_data(a: argparse.Namespace, work: Path) -> dict:
    """Corpus -> tokenizer -> corpus -> pack, each stage skipped when its output is up to date."""
    data, log = work / "data", work / "data.log"
    data.mkdir(parents=True, exist_ok=True)
    mirror = ["--mirror", a.mirror]
    tok_corpus, tok, corpus, packed = data / "tokenizer_corpus", data / "tokenizer", data / "corpus", data / "packed"
    sets = [f"--set=sources.{name}.tokens={n}" for name, n in TOKENIZER_TOKENS.items()]
    lmforge("corpus", "--config", "config/pretrain/corpus/tokenizer_training_mix.json", "--output-dir", str(tok_corpus),
            "--use-cache", *mirror, *sets, "--set=processing_params.shard_max_tokens=500000", log=log)
    lmforge("tokenizer", "--config", "config/pretrain/tokenizer/spm32k.json", "--corpus-dir", str(tok_corpus),
            "--output-dir", str(tok), f"--set=vocab_size={a.vocab}", "--set=num_threads=2",
            f"--set=model_max_length={a.seq}", log=log)
    sets = [f"--set=sources.{name}.tokens={int(n * a.corpus_scale)}" for name, n in CORPUS_TOKENS.items()]
    lmforge("corpus", "--config", "config/pretrain/corpus/tiny_23M_chinchilla_500M.json", "--output-dir", str(corpus),
            "--use-cache", *mirror, "--tokenizer-dir", str(tok), *sets,
            "--set=processing_params.shard_max_tokens=1000000", log=log)
    lmforge("pack", "--config", "config/pretrain/packing/default.json", "--corpus-dir", str(corpus),
            "--tokenizer-dir", str(tok), "--output-dir", str(packed), f"--set=seq_length={a.seq}", log=log)
    return prebuilt_data(data)


def prebuilt_data(data: Path) -> dict:
    """The packed rows and tokenizer of a data folder (built here, or carried to a GPU machine)."""
    packed, tok = data / "packed", data / "tokenizer"
    if not (packed / "manifest.json").is_file() or not (tok / "manifest.json").is_file():
        sys.exit(f"error: {data} has no packed/ and tokenizer/ with their manifests (build it with --prepare)")
    return {"tokenizer": tok, "packed": packed, "manifest": json.loads((packed / "manifest.json").read_text())}


def prepare_carry(a: argparse.Namespace, data: dict, dest: Path) -> None:
    """Copy what a GPU machine needs (it has neither `datasets` nor the mirror) into one folder."""
    from lmforge.evaluation.datasets import load_wikitext

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(data["packed"], dest / "packed")
    shutil.copytree(data["tokenizer"], dest / "tokenizer")
    pages = load_wikitext(mirror=a.mirror).records  # the pages `lmforge eval` reads from the mirror
    (dest / WIKITEXT_FILE).write_bytes("".join(pages).encode("utf-8"))
    if load_wikitext(dest / WIKITEXT_FILE).records != pages:  # the raw file must rebuild exactly those pages
        sys.exit(f"error: {dest / WIKITEXT_FILE} does not rebuild the mirror's WikiText-2 pages")
    shutil.copy(a.peer, dest / PEER.name)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"prepared {dest} ({size / 2**20:.1f} MiB; {len(pages)} WikiText-2 pages): carry it to the GPU machine and "
          f"run with --data-dir {dest}")


# ---------------------------------------------------------------- 2. training

def architecture_file(a: argparse.Namespace, work: Path) -> Path:
    """The race architecture: the tiny model's Llama layout at the chosen width, the race vocabulary."""
    shape = SHAPES[a.shape]
    arch = {"name": "race", "vocab_size": a.vocab, "num_kv_heads": shape["num_heads"],
            "max_position_embeddings": a.seq, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True, "initializer_range": 0.02, **shape}
    path = work / "architecture.json"
    path.write_text(json.dumps(arch, indent=1) + "\n")
    return path


def scaled_schedule(config: Path, tokens: int, seq: int) -> dict:
    """max_steps for the token budget at the config's global batch; warmup (and decay) kept as fractions."""
    t = json.loads(config.read_text())["training"]
    per_step = t.get("per_device_batch_size", 8) * t.get("gradient_accumulation_steps", 1) * seq
    steps = max(1, tokens // per_step)
    warmup = round(steps * t.get("warmup_steps", 0) / t["max_steps"])
    return {"training.max_steps": steps, "training.warmup_steps": warmup}


def lmforge_run(a, work: Path, data: dict, name: str, config: Path, extra: list[str]) -> dict:
    """`lmforge pretrain` with `config` scaled to the budget; returns the final model dir and timing."""
    arch = architecture_file(a, work)
    sets = {**scaled_schedule(config, a.tokens, a.seq), "architecture": str(arch.resolve()),
            "training.eval_every": 0, "training.save_every": 0, "training.eval_batches": 4,
            "training.log_every": 50, "training.tensorboard": False}
    if a.mixed_precision:
        sets["training.mixed_precision"] = a.mixed_precision
    args = [f"--set={k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in sets.items()]
    args += [f"--set={x}" for x in extra]
    out = work / "runs" / name
    t0 = time.perf_counter()
    lmforge("pretrain", "--config", str(config), "--data-dirs", str(data["packed"]), "--tokenizer-dir",
            str(data["tokenizer"]), "--output-dir", str(out), "--force", *args, log=work / f"{name}.log")
    seconds = time.perf_counter() - t0
    final = out / "race" / "final"
    meta = json.loads((final / "manifest.json").read_text())
    figures = meta.get("figures", {})
    return {"model_dir": str(final), "seconds": round(seconds, 1), "steps": sets["training.max_steps"],
            "tokens": figures.get("tokens_seen"), "recipe": recipe_text(config, extra)}


def recipe_text(config: Path, extra: list[str]) -> str:
    t = json.loads(config.read_text())["training"]
    for item in extra:
        key, _, value = item.partition("=")
        if key.startswith("training."):
            t[key.split(".", 1)[1]] = json.loads(value) if value[:1] in "0123456789-.tf[" else value
    batch = t.get("per_device_batch_size", 8) * t.get("gradient_accumulation_steps", 1)
    opt = t.get("optimizer", "adamw")
    if opt == "muon":
        opt += f" (x{t.get('muon_lr_scale', 1.0):g} on matrices)"
    sched = t.get("lr_scheduler", "cosine")
    if sched == "wsd":
        sched += f" (decay {t.get('decay_fraction', 0.2):g})"
    init = ", residual init scaled" if t.get("scale_residual_init") else ""
    return (f"{opt}, lr {t['learning_rate']:g}, {sched} to {t.get('min_lr_ratio', 0.1):g}, "
            f"warmup {t.get('warmup_steps', 0) / t['max_steps']:.0%}, batch {batch}{init}")


def reference_run(a, work: Path, data: dict, name: str, micro_batch: int) -> dict:
    """The reference trainer in a child process; its weights are written as a Llama directory."""
    out = work / "runs" / name
    shape = SHAPES[a.shape]
    peer_args = ["--data", str(data["packed"]), "--tokens", str(a.tokens), "--vocab", str(a.vocab),
                 "--d-model", str(shape["hidden_size"]), "--layers", str(shape["num_layers"]),
                 "--heads", str(shape["num_heads"]), "--ffn", str(shape["intermediate_size"]), "--seq", str(a.seq),
                 "--micro-batch", str(micro_batch), "--val-windows", str(a.val_windows)]
    cmd = [sys.executable, str(Path(__file__).resolve()), "_reference", str(out), a.peer,
           data["manifest"]["tokenizer_sha256"], *peer_args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    (work / f"{name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"error: reference run {name} failed; see {work / (name + '.log')}")
    own = json.loads(done.stdout.strip().splitlines()[-1])
    return {"model_dir": str(out), "seconds": own["seconds"], "steps": own["steps"], "tokens": own["tokens"],
            "own_val_loss": own["val_loss"], "wall_seconds": round(time.perf_counter() - t0, 1),
            "recipe": f"reference: adamw, lr {own['lr']:g}, cosine to 0.1, warmup 5%, batch {micro_batch}"}


def export_reference(out: Path, peer: str, tokenizer_sha256: str, peer_args: list[str]) -> None:
    """Run the reference trainer in this process, then save its model as a plain LlamaForCausalLM.

    The reference saves no weights; its script leaves the trained `model` in its globals.
    Its layout is Llama's but for two details mapped here: fused QKV and gate/up matrices
    (split), and RoPE on interleaved pairs (q and k rows permuted per head into the
    rotate-half order, which leaves every attention score unchanged).
    """
    import runpy

    sys.argv = [peer, "train", *peer_args]
    g = runpy.run_path(peer, run_name="__main__")  # prints the reference's own JSON line
    sys.stdout.flush()
    llama = to_llama(g["model"], g["V"], g["D"], g["L"], g["H"], g["FF"], g["T"])
    out.mkdir(parents=True, exist_ok=True)
    llama.save_pretrained(out, safe_serialization=True)
    from lmforge.artifacts import write_manifest

    outputs = [p.name for p in out.iterdir() if p.is_file() and p.name != "manifest.json"]
    write_manifest(out, "pretrain", config={"trainer": "peer_quality_bench.py", "args": peer_args}, outputs=outputs,
                   tokenizer_sha256=tokenizer_sha256)


def to_llama(model, V: int, D: int, L: int, H: int, FF: int, T: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
                      num_key_value_heads=H, max_position_embeddings=T, rms_norm_eps=1e-6, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    llama = LlamaForCausalLM(cfg)
    hd = D // H
    order = torch.cat((torch.arange(0, hd, 2), torch.arange(1, hd, 2)))  # interleaved -> rotate-half
    rows = torch.cat([h * hd + order for h in range(H)])
    sd = {"model.embed_tokens.weight": model.emb.weight, "model.norm.weight": model.norm.w,
          "lm_head.weight": model.emb.weight}
    for i, b in enumerate(model.blocks):
        q, k, v = b.qkv.weight.split(D)
        g, u = b.gu.weight.split(FF)
        pre = f"model.layers.{i}."
        sd.update({pre + "input_layernorm.weight": b.n1.w, pre + "post_attention_layernorm.weight": b.n2.w,
                   pre + "self_attn.q_proj.weight": q[rows], pre + "self_attn.k_proj.weight": k[rows],
                   pre + "self_attn.v_proj.weight": v, pre + "self_attn.o_proj.weight": b.o.weight,
                   pre + "mlp.gate_proj.weight": g, pre + "mlp.up_proj.weight": u,
                   pre + "mlp.down_proj.weight": b.down.weight})
    missing, unexpected = llama.load_state_dict({k: t.detach().clone() for k, t in sd.items()}, strict=False)
    if [m for m in missing if "rotary" not in m] or unexpected:
        raise SystemExit(f"reference conversion: missing {missing}, unexpected {unexpected}")
    return llama


# ---------------------------------------------------------------- 3. scoring

def peer_eval(a, data: dict, model_dir: str) -> float:
    shape = SHAPES[a.shape]
    cmd = [sys.executable, a.peer, "eval", "--data", str(data["packed"]), "--eval-hf", model_dir, "--seq", str(a.seq),
           "--val-windows", str(a.val_windows), "--vocab", str(a.vocab), "--d-model", str(shape["hidden_size"])]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if done.returncode:
        sys.exit(f"error: peer eval of {model_dir} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["val_loss"]


def wikitext_eval(a, work: Path, data: dict, name: str, model_dir: str) -> dict:
    out = work / "eval" / name
    args = ["--model_path", model_dir, "--tokenizer_path", str(data["tokenizer"]), "--output_dir", str(out),
            "--force", "--set=boolq.enabled=false", "--set=generation.enabled=false"]
    if a.wikitext_docs:
        args += ["--max-wikitext-docs", str(a.wikitext_docs)]
    if a.wikitext_file:  # a carried copy of the mirror's pages (no `datasets` on a GPU machine)
        args += [f"--set=wikitext.local_file={Path(a.wikitext_file).resolve()}"]
    else:
        args += ["--mirror", a.mirror]
    lmforge("eval", *args, log=work / f"{name}.eval.log")
    wt = json.loads((out / "results.json").read_text())["wikitext"]
    return {"bits_per_byte": wt["bits_per_byte"], "word_perplexity": wt["word_perplexity"]}


# ---------------------------------------------------------------- the race

def run_one(a, work: Path, data: dict, entry: str) -> dict:
    """Train (or reuse) one entry, then score it. `NAME@TOKENS` runs NAME on another budget."""
    name, _, budget = entry.partition("@")
    if budget:
        a = argparse.Namespace(**{**vars(a), "tokens": int(budget)})
    spec = {"name": entry, "tokens": a.tokens, "shape": a.shape, "seq": a.seq, "vocab": a.vocab,
            "sets": [s.split(":", 1)[1] for s in a.set if s.split(":", 1)[0] in (name, entry)],
            "packed": data["manifest"]["outputs"][0]["sha256"], "val_windows": a.val_windows,
            "wikitext": None if a.no_wikitext else (a.wikitext_docs or "all")}
    if name.startswith("cfg:"):
        name, _, path = name[4:].partition("=")
        spec["name"], spec["config"] = name + (f"@{budget}" if budget else ""), path
    if not name.startswith("ref_mb"):
        config = {"plan": PLAN_CONFIG, "recommended": Path(a.recommended)}.get(name) or Path(spec["config"])
        spec["config_sha256"] = settings_sha256(config)  # changed settings make a new run; a new comment does not
    saved = work / "results" / f"{spec['name'].replace('@', '_')}.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old.get("spec") == spec:
            print(f"[race] {spec['name']}: reused {saved}", flush=True)
            return old
    print(f"[race] {spec['name']}: training on {a.tokens:,} tokens", flush=True)
    if name.startswith("ref_mb"):
        result = reference_run(a, work, data, entry.replace("@", "_"), int(name[len("ref_mb"):]))
    else:
        result = lmforge_run(a, work, data, spec["name"].replace("@", "_"), config, spec["sets"])
    result["val_loss"] = peer_eval(a, data, result["model_dir"])
    if "own_val_loss" in result and abs(result["val_loss"] - result["own_val_loss"]) > 1e-3:
        sys.exit(f"error: the converted reference scores {result['val_loss']} but the reference itself reported "
                 f"{result['own_val_loss']}: the Llama conversion is wrong")
    if not a.no_wikitext:
        result.update(wikitext_eval(a, work, data, spec["name"].replace("@", "_"), result["model_dir"]))
    result["spec"] = spec
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[race] {spec['name']}: val loss {result['val_loss']:.4f}", flush=True)
    return result


def settings_sha256(config: Path) -> str:
    """sha256 of a config's settings: its JSON without comment keys (lmforge's rule), canonical."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith(COMMENT_PREFIXES)}
        return node
    return sha256_json(strip(json.loads(config.read_text())))


def table(results: list[dict]) -> str:
    refs = [r["val_loss"] for r in results if r["spec"]["name"].startswith("ref_")]
    best = min(refs) if refs else None
    lines = ["| run | recipe | tokens | steps | train s | val loss | vs best reference | WT2 bits/byte | WT2 word ppl |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        delta = f"{r['val_loss'] - best:+.3f}" if best is not None else "-"
        bpb = f"{r['bits_per_byte']:.4f}" if "bits_per_byte" in r else "-"
        ppl = f"{r['word_perplexity']:.1f}" if "word_perplexity" in r else "-"
        lines.append(f"| {r['spec']['name']} | {r['recipe']} | {r['tokens']:,} | {r['steps']} | {r['seconds']:.0f} | "
                     f"{r['val_loss']:.4f} | {delta} | {bpb} | {ppl} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not Path(a.peer).is_file():
        sys.exit(f"error: reference trainer not found: {a.peer} (--peer)")
    work = Path(a.work)
    data = prebuilt_data(Path(a.data_dir)) if a.data_dir else build_data(a, work)
    figures = data["manifest"]["figures"]
    if (a.vocab, a.seq) != (figures["vocab_size"], figures["seq_length"]):  # a carried folder decides its own
        print(f"[race] the data has vocab {figures['vocab_size']:,} and rows of {figures['seq_length']}: using those")
        a.vocab, a.seq = figures["vocab_size"], figures["seq_length"]
    if a.prepare:
        prepare_carry(a, data, Path(a.prepare))
        return 0
    results = [run_one(a, work, data, name) for name in a.runs.split(",") if name]
    text = table(results)
    print(text)
    summary = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"), "results": results,
               "table": text}
    (work / "race.json").write_text(json.dumps(summary, indent=1) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_reference":
        export_reference(Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(main())
