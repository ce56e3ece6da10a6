"""Safety-Tuned LLaMAs (Bianchi et al., ICLR 2024): evaluation prompt sets and the safety training data.

The data is published on GitHub only (vinid/safety-tuned-llamas, `data/`), so a data dir is required.
Evaluation files are `{"instructions": [...], "inputs": []}`; I-MaliciousInstructions adds a parallel
`tags` list, used as the record type. Ids are `<suite>-<n>` with n the 1-based position in the list.
"""

from __future__ import annotations

from pathlib import Path

from tbr.errors import DataError

from .instructions import read_alpaca
from .readers import JsonDoc, no_hub, require_file
from .schema import InstructionRecord, LoadReport, PromptRecord

EVAL_DIR = "safety-tuned-llamas/evaluation"
TRAINING = "safety-tuned-llamas/training/safety_only_data_Instructions.json"
GITHUB = "vinid/safety-tuned-llamas"
# suite -> (file under EVAL_DIR, label). Only the physical-safety "safe" twins and the Alpaca
# capability control should be answered; every other set asks for something harmful.
EVAL_SETS = {
    "stl-malicious": ("I-MaliciousInstructions.json", "unsafe"),
    "stl-cona": ("I-CoNa.json", "unsafe"),
    "stl-controversial": ("I-Controversial.json", "unsafe"),
    "stl-physical-safe": ("I-PhysicalSafetySafe.json", "safe"),
    "stl-physical-unsafe": ("I-PhysicalSafetyUnsafe.json", "unsafe"),
    "stl-qharm": ("Q-Harm.json", "unsafe"),
    "stl-alpaca": ("I-Alpaca.json", "safe"),
}


def load_eval(suite: str, data_dir: Path | None, report: LoadReport) -> list[PromptRecord]:
    name, label = EVAL_SETS[suite]
    if data_dir is None:
        raise no_hub(
            f"Safety-Tuned LLaMAs {name}", f"it is published on GitHub only ({GITHUB} data/evaluation/{name})"
        )
    path = require_file(
        data_dir, f"{EVAL_DIR}/{name}", suite, f"copy it from GitHub {GITHUB} data/evaluation/"
    )
    report.origin = str(path)
    doc = JsonDoc(path)
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("instructions"), list):
        raise DataError(f"{doc.where()}: expected an object with an 'instructions' list")
    instructions = doc.data["instructions"]
    # No STL evaluation file has inputs; pairing them with instructions would need a prompt template,
    # so refuse rather than silently evaluate the instruction without its input.
    if doc.data.get("inputs"):
        raise DataError(
            f"{doc.where('inputs')}: non-empty 'inputs' are not supported (instruction-only sets)"
        )
    tags = doc.data.get("tags", [""] * len(instructions))
    if not isinstance(tags, list) or len(tags) != len(instructions):
        raise DataError(
            f"{doc.where('tags')}: 'tags' must be a list as long as 'instructions' ({len(instructions)})"
        )
    report.read += len(instructions)
    records = []
    for i, (text, tag) in enumerate(zip(instructions, tags, strict=True)):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{doc.where('instructions', i)}: instructions[{i}] is empty or not a string")
        if not isinstance(tag, str):
            raise DataError(f"{doc.where('tags', i)}: tags[{i}] is not a string")
        records.append(PromptRecord(f"{suite}-{i + 1}", text, label, tag, suite))
    return records


def load_safety(source: str, data_dir: Path | None, report: LoadReport) -> list[InstructionRecord]:
    """The 2,483 safety training examples: red-team-derived harmful instruction plus a safe response."""
    if data_dir is None:
        raise no_hub(
            "Safety-Tuned LLaMAs safety training data",
            f"it is published on GitHub only ({GITHUB} data/training/safety_only_data_Instructions.json)",
        )
    path = require_file(data_dir, TRAINING, source, f"copy it from GitHub {GITHUB} data/training/")
    return read_alpaca(path, source, report)
