"""Tiny made-up datasets for the zero-shot tasks, in each dataset's hub schema and mirror layout.

A handful of invented items per task (never copies of the real sets), written under a
directory laid out as LMFORGE_MIRROR expects: <org>/<name>/[<config>/][<split>/]file.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

PIQA = [{"goal": "Keep bread fresh for longer", "sol1": "Store it in a sealed bag.", "sol2": "Leave it in the sun.",
         "label": 0},
        {"goal": "Cool a hot drink quickly", "sol1": "Heat it on the stove.", "sol2": "Add a few ice cubes.",
         "label": 1},
        {"goal": "Dry wet shoes", "sol1": "Stuff them with newspaper.", "sol2": "Fill them with water.", "label": 0}]

ARC = [{"id": f"q{i}", "question": q, "choices": {"text": choices, "label": labels}, "answerKey": key}
       for i, (q, choices, labels, key) in enumerate([
           ("Which of these is a liquid at room temperature?", ["iron", "water", "salt", "wood"],
            ["A", "B", "C", "D"], "B"),
           ("What do plants need to make food?", ["sunlight", "sand", "plastic"], ["A", "B", "C"], "A"),
           ("Which object is attracted to a magnet?", ["a paper clip", "a rubber band", "a glass cup",
                                                        "a cotton ball"], ["1", "2", "3", "4"], "1")])]

HELLASWAG = [{"ind": i, "activity_label": label, "ctx_a": a, "ctx_b": b, "ctx": f"{a} {b}", "endings": endings,
              "source_id": f"made-up-{i}", "split": "val", "split_type": "indomain", "label": lab}
             for i, (label, a, b, endings, lab) in enumerate([
                 ("Cooking", "A man cracks two eggs into a bowl.", "he", ["whisks them with a fork.",
                  "throws the bowl at the wall.", "paints the eggs blue.", "reads a newspaper aloud."], "0"),
                 ("Gardening", "A woman kneels beside a flower bed.", "she", ["drives away in a truck.",
                  "pulls out the weeds by hand.", "starts to swim laps.", "sings into a microphone."], "1")])]

WINOGRANDE = [{"sentence": "The trophy did not fit in the suitcase because the _ was too big.",
               "option1": "trophy", "option2": "suitcase", "answer": "1"},
              {"sentence": "Sam gave Alex a ride home because _ had no car.",
               "option1": "Sam", "option2": "Alex", "answer": "2"}]

COPA = [{"premise": "The man lost his keys.", "choice1": "He searched his pockets.",
         "choice2": "He planted a tree.", "question": "effect", "idx": 0, "label": 0},
        {"premise": "The ground was wet.", "choice1": "The sun was shining.", "choice2": "It had rained overnight.",
         "question": "cause", "idx": 1, "label": 1}]

SIQA = [{"context": "Jordan helped a neighbour carry heavy boxes upstairs.", "question": "How would the neighbour feel?",
         "answerA": "grateful", "answerB": "angry", "answerC": "bored", "label": "1"},
        {"context": "Riley forgot to study for the test.", "question": "What will Riley want to do next time?",
         "answerA": "skip school", "answerB": "study earlier", "answerC": "buy a car", "label": "2"}]

LAMBADA = [{"text": "She opened the old wooden box and found a letter written by her grandmother"},
           {"text": "After the long match both teams shook hands and walked off the field"}]

# task -> (relative directory in the mirror, rows); the paths follow each task file's dataset_path/name/split
FILES = {
    "piqa": ("baber/piqa/validation", PIQA),
    "arc_easy": ("allenai/ai2_arc/ARC-Easy/test", ARC),
    "arc_challenge": ("allenai/ai2_arc/ARC-Challenge/test", ARC[:2]),
    "hellaswag": ("Rowan/hellaswag/validation", HELLASWAG),
    "winogrande": ("allenai/winogrande/winogrande_xl/validation", WINOGRANDE),
    "copa": ("aps/super_glue/copa/validation", COPA),
    "social_iqa": ("lighteval/siqa/validation", SIQA),
    "lambada_openai": ("EleutherAI/lambada_openai/default/test", LAMBADA),
}


def write_task_mirror(root: Path, tasks: list[str] | None = None) -> Path:
    """Write the fixture files of `tasks` (default: all) under `root`; return root."""
    for name in tasks or list(FILES):
        rel, rows = FILES[name]
        path = root / rel / "data-00000.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return root
