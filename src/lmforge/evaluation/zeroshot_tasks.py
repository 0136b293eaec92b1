"""The zero-shot tasks lmforge runs through lm-evaluation-harness, and where their data live.

Each entry names what the harness's own task file (lm_eval/tasks/...) names: the hub
dataset id, its config and the split the task scores. lmforge never re-implements the
tasks; this table only tells the mirror lookup (and decontamination) which files hold a
task's data and which fields hold its text. `tests/test_zeroshot.py` checks the table
against the installed harness's YAML files, so a harness upgrade that moves a dataset
fails loudly instead of silently reading the wrong files.

Chance baselines are computed from the scored documents (1 / number of choices, averaged),
never assumed; `lambada_openai` predicts one word out of the whole vocabulary, so its
chance accuracy is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class ZeroShotTask:
    name: str              # the harness's task name
    hub_id: str            # its dataset_path
    config: str | None     # its dataset_name
    split: str             # the split it scores
    split_key: str         # which of the harness's *_split keys names that split
    task_dir: str          # its folder under lm_eval/tasks (indexed alone: the full index is slow)
    text_fields: tuple[str, ...]  # fields whose text is checked for contamination ("a.b" = nested)

    @property
    def hub(self) -> tuple[str, str | None, str]:
        """(dataset, config, split), as `mirror_files` and `data_fingerprint` take them."""
        return self.hub_id, self.config, self.split


TASKS: dict[str, ZeroShotTask] = {t.name: t for t in (
    ZeroShotTask("lambada_openai", "EleutherAI/lambada_openai", "default", "test", "test_split", "lambada",
                 ("text",)),
    ZeroShotTask("piqa", "baber/piqa", None, "validation", "validation_split", "piqa", ("goal", "sol1", "sol2")),
    ZeroShotTask("arc_easy", "allenai/ai2_arc", "ARC-Easy", "test", "test_split", "arc",
                 ("question", "choices.text")),
    ZeroShotTask("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test", "test_split", "arc",
                 ("question", "choices.text")),
    ZeroShotTask("hellaswag", "Rowan/hellaswag", None, "validation", "validation_split", "hellaswag",
                 ("ctx", "endings")),
    ZeroShotTask("winogrande", "allenai/winogrande", "winogrande_xl", "validation", "validation_split", "winogrande",
                 ("sentence", "option1", "option2")),
    ZeroShotTask("copa", "aps/super_glue", "copa", "validation", "validation_split", "super_glue/copa",
                 ("premise", "choice1", "choice2")),
    ZeroShotTask("social_iqa", "lighteval/siqa", None, "validation", "validation_split", "siqa",
                 ("context", "question", "answerA", "answerB", "answerC")),
)}


def parse_task_list(value: str | list[str] | None) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b'], each checked against TASKS (a ConfigError names the unknown ones)."""

    if not value:
        return []
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ConfigError(f"unknown zero-shot task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def record_text(record: dict, fields: tuple[str, ...]) -> str:
    """The text of a task record's fields, joined (lists are joined too; missing fields are empty)."""
    parts: list[str] = []
    for dotted in fields:
        value: object = record
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts += [v for v in value if isinstance(v, str)]
    return "\n".join(parts)
