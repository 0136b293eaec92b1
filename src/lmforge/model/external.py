"""Fine-tuning a Hugging Face Llama-family model that lmforge did not make.

`lmforge sft --model_path DIR` accepts a plain Hugging Face causal LM directory
(config.json with `model_type: llama`, safetensors weights, its own tokenizer files,
no lmforge manifest). Its tokenizer is used as is, for the SFT data too:

    lmforge sft-data --config ... --tokenizer_dir DIR --output_dir data/sft/x
    lmforge sft --config ... --model_path DIR --tokenizer_path DIR --data_dirs data/sft/x ...

The lineage rule does not change, only the identity of the tokenizer: for an external
tokenizer it is the sha256 of its `tokenizer.json` (else of `tokenizer.model`), and
every artifact made with it records `external_tokenizer` (path and sha256) in its
manifest, which `lmforge verify` shows as the reference when no lmforge tokenizer
artifact is around. ChatML needs `<|im_start|>` and `<|im_end|>` as single tokens of
that tokenizer; a tokenizer without them is refused (add them and resize the model's
embeddings first).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.artifacts import MANIFEST_NAME, load_manifest, read_json, sha256_file
from lmforge.errors import ArtifactError, ConfigError
from lmforge.tokenizer.format import MODEL_FILE, SPECIAL_TOKENS
from lmforge.tokenizer.spm import load_tokenizer_artifact

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json")
LLAMA_FAMILY = ("llama",)


def is_external_model(model_dir: str | os.PathLike) -> bool:
    """A Hugging Face model directory without an lmforge manifest."""
    root = Path(model_dir)
    return (root / "config.json").is_file() and not (root / MANIFEST_NAME).is_file()


def is_lmforge_tokenizer(tokenizer_dir: str | os.PathLike) -> bool:
    return (Path(tokenizer_dir) / MODEL_FILE).is_file()


def hf_tokenizer_sha256(tokenizer_dir: str | os.PathLike) -> str:
    """Identity of a Hugging Face tokenizer: sha256 of tokenizer.json, else of tokenizer.model."""
    root = Path(tokenizer_dir)
    for name in ("tokenizer.json", "tokenizer.model"):
        if (root / name).is_file():
            return sha256_file(root / name)
    raise ArtifactError(f"{root}: no tokenizer (neither {MODEL_FILE}, tokenizer.json nor tokenizer.model)")


def base_tokenizer_sha256(model_dir: str | os.PathLike) -> str | None:
    """The tokenizer a base model was made with: its own Hugging Face tokenizer files for a
    model lmforge did not make, else what its (pretrain or SFT) manifest records."""
    if is_external_model(model_dir):
        return hf_tokenizer_sha256(model_dir)
    return load_manifest(model_dir, ("pretrain", "sft")).get("tokenizer_sha256")


def check_external_model(model_dir: str | os.PathLike) -> None:
    root = Path(model_dir)
    config = read_json(root / "config.json", "model config")
    if config.get("model_type") not in LLAMA_FAMILY:
        raise ConfigError(f"{root}: only Llama-family models can be fine-tuned from outside lmforge "
                          f"(model_type {config.get('model_type')!r}, expected one of {', '.join(LLAMA_FAMILY)})")
    if not sorted(root.glob("*.safetensors")):
        raise ArtifactError(f"{root}: no safetensors weights (lmforge loads safetensors only)")


def external_record(tokenizer_dir: str | os.PathLike, sha256: str) -> dict:
    """What manifests record about an external tokenizer."""
    return {"kind": "external", "path": str(Path(tokenizer_dir).resolve()), "sha256": sha256}


@dataclass
class ExternalTokenizer:
    """A Hugging Face tokenizer seen through the interface of `lmforge.tokenizer.spm.Tokenizer`."""

    path: Path
    sha256: str
    hf: object
    config: dict = field(default_factory=dict)

    def _id(self, token: str) -> int:
        return int(self.hf.convert_tokens_to_ids(token))

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id if self.hf.pad_token_id is not None else self.hf.eos_token_id

    @property
    def im_start_id(self) -> int:
        return self._id(SPECIAL_TOKENS["im_start"][0])

    @property
    def im_end_id(self) -> int:
        return self._id(SPECIAL_TOKENS["im_end"][0])

    @property
    def record(self) -> dict:
        return external_record(self.path, self.sha256)

    def encode(self, text: str | list[str]):
        if isinstance(text, list):
            return [self.encode(t) for t in text]
        return list(self.hf.encode(text, add_special_tokens=False, verbose=False))

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids])


def load_external_tokenizer(tokenizer_dir: str | os.PathLike) -> ExternalTokenizer:
    from transformers import AutoTokenizer

    root = Path(tokenizer_dir)
    digest = hf_tokenizer_sha256(root)
    try:
        hf = AutoTokenizer.from_pretrained(str(root))
    except Exception as exc:  # unreadable tokenizer files: the user's directory to fix
        raise ArtifactError(f"{root}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from None
    for name in ("im_start", "im_end"):
        piece = SPECIAL_TOKENS[name][0]
        if hf.encode(piece, add_special_tokens=False) != [hf.convert_tokens_to_ids(piece)]:
            raise ConfigError(f"{root}: the tokenizer has no single {piece} token; ChatML needs <|im_start|> and "
                              "<|im_end|> (add them as special tokens and resize the model's embeddings first)")
    if hf.eos_token_id is None:
        raise ConfigError(f"{root}: the tokenizer defines no eos_token")
    return ExternalTokenizer(path=root, sha256=digest, hf=hf)


def load_any_tokenizer(tokenizer_dir: str | os.PathLike):
    """lmforge's tokenizer (spm.model, sha256 checked) or an external Hugging Face one."""

    if is_lmforge_tokenizer(tokenizer_dir):
        return load_tokenizer_artifact(tokenizer_dir)  # manifest required, files sha256-checked
    if not Path(tokenizer_dir).is_dir():
        raise ArtifactError(f"tokenizer directory not found: {tokenizer_dir}")
    return load_external_tokenizer(tokenizer_dir)


def copy_hf_tokenizer_files(src: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy an external tokenizer's files (and only those) into a model directory."""
    copied = []
    for name in HF_TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dest) / name)
            copied.append(name)
    return copied
