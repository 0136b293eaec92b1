"""How well a tokenizer fits text: compression, fertility and coverage, per source.

- compression: characters per token (higher packs more text into a context window);
- fertility: tokens per whitespace-separated word (1.0 would be one token per word);
- coverage: share of characters encoded by vocabulary pieces, i.e. neither by byte
  fallback (`<0xNN>` pieces) nor by `<unk>`. Line breaks and tabs are left out of it:
  training sentences are lines, so "\n" and "\t" are always their byte pieces
  (`<0x0A>`, `<0x09>`: one token each, as in Llama) by design, not for lack of vocabulary.

Measured on held-out passages that the tokenizer never saw in training, and written
into TOKENIZER_CARD.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TextStats:
    """Counts over a sample; the ratios derive from them so samples can be summed."""

    passages: int = 0
    characters: int = 0
    words: int = 0
    tokens: int = 0
    layout_characters: int = 0  # \n \r \t: byte pieces by design, outside coverage
    uncovered_characters: int = 0

    def add(self, other: "TextStats") -> None:
        for name in ("passages", "characters", "words", "tokens", "layout_characters", "uncovered_characters"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def compression(self) -> float | None:
        return self.characters / self.tokens if self.tokens else None

    @property
    def fertility(self) -> float | None:
        return self.tokens / self.words if self.words else None

    @property
    def coverage(self) -> float | None:
        measured = self.characters - self.layout_characters
        return 100.0 * (1 - self.uncovered_characters / measured) if measured > 0 else None

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(chars_per_token=_round(self.compression), tokens_per_word=_round(self.fertility),
                   coverage_percent=_round(self.coverage, 4))
        return out


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


LAYOUT_CHARACTERS = "\n\r\t"


def _counts_as_uncovered(byte_value: int) -> bool:
    # A character spelled with byte fallback yields one lead byte and 0-3 continuation
    # bytes: count lead bytes only, and not the layout characters.
    return not 0x80 <= byte_value <= 0xBF and chr(byte_value) not in LAYOUT_CHARACTERS


def measure(sp, texts: list[str], num_threads: int = 1) -> TextStats:
    """Encode `texts` with a SentencePieceProcessor and count what the metrics need."""
    stats = TextStats(passages=len(texts))
    if not texts:
        return stats
    byte_value = {i: int(sp.id_to_piece(i)[3:5], 16) for i in range(sp.get_piece_size()) if sp.is_byte(i)}
    unk = sp.unk_id()
    for text, ids in zip(texts, sp.encode(texts, num_threads=num_threads)):
        stats.characters += len(text)
        stats.words += len(text.split())
        stats.tokens += len(ids)
        stats.layout_characters += sum(text.count(c) for c in LAYOUT_CHARACTERS)
        stats.uncovered_characters += sum(1 for i in ids if i in byte_value and _counts_as_uncovered(byte_value[i]))
        if unk in ids:
            # <unk> can cover several characters: ask SentencePiece for the surfaces.
            proto = sp.encode(text, return_type="proto")
            stats.uncovered_characters += sum(len(p.surface) for p in proto.pieces if p.id == unk)
    return stats


def measure_by_source(sp, samples: dict[str, list[str]], num_threads: int = 1) -> dict[str, TextStats]:
    """Stats per source plus an 'overall' entry summing them."""
    result = {source: measure(sp, texts, num_threads) for source, texts in sorted(samples.items())}
    overall = TextStats()
    for stats in result.values():
        overall.add(stats)
    result["overall"] = overall
    return result


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def metrics_table(metrics: dict[str, TextStats]) -> str:
    """A Markdown table: one row per source, then overall."""
    lines = ["| source | passages | characters | words | tokens | chars/token | tokens/word | coverage |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for source, s in metrics.items():
        name = f"**{source}**" if source == "overall" else source
        lines.append(f"| {name} | {s.passages:,} | {s.characters:,} | {s.words:,} | {s.tokens:,} | "
                     f"{_fmt(s.compression, '.3f')} | {_fmt(s.fertility, '.3f')} | {_fmt(s.coverage, '.3f')}% |")
    return "\n".join(lines)


def render_card(*, output_dir: str, sha256: str, settings: dict, corpus: dict,
                metrics: dict[str, TextStats]) -> str:
    """TOKENIZER_CARD.md: what was trained, on what, and how well it fits held-out text."""
    settings_lines = "\n".join(f"| {k} | `{v}` |" for k, v in settings.items())
    corpus_lines = "\n".join(f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |" for k, v in corpus.items())
    held_out = ("Measured on held-out passages of the corpus (drawn by a hash of document id and "
                "passage number; never seen in training)." if metrics.get("overall", TextStats()).passages
                else "No held-out passages were drawn (held_out_fraction is 0 or the corpus is tiny): no metrics.")
    return f"""# Tokenizer card

Trained by `lmforge tokenizer` into `{output_dir}`.

- sha256 of `spm.model` (the `tokenizer_sha256` every later artifact records): `{sha256}`

## Settings

| setting | value |
|---|---|
{settings_lines}

## Training corpus

| figure | value |
|---|---|
{corpus_lines}

## Fit on held-out text

{held_out}

- **chars/token** (compression): characters divided by tokens; higher is better.
- **tokens/word** (fertility): tokens per whitespace-separated word; lower is better.
- **coverage**: percentage of characters encoded by vocabulary pieces rather than by
  byte fallback (`<0xNN>`) or `<unk>`; line breaks and tabs, always the byte pieces
  `<0x0A>` / `<0x09>` (one token each) by design, are left out.

{metrics_table(metrics)}

## Special tokens

| token | id |
|---|---:|
| `<unk>` | 0 |
| `<s>` (BOS, at each document start) | 1 |
| `</s>` (EOS, at each document end) | 2 |
| `<pad>` | 3 |
| `<\\|im_start\\|>` | 4 |
| `<\\|im_end\\|>` | 5 |

## Use

```python
from lmforge.tokenizer.spm import load_tokenizer      # sentencepiece, sha256 checked
from transformers import AutoTokenizer            # same ids, adds no BOS/EOS
tok = AutoTokenizer.from_pretrained("{output_dir}")
```
"""
