"""Regenerate the 57 tbr_mmlu_<subject>.yaml files and the group files from the installed lm-eval.

    python tbr/tasks/mmlu/_generate_configs.py

Like lm-eval's own mmlu/_generate_configs.py; we derive ours from lm-eval's mmlu/default so subjects,
descriptions, aliases and category tags are exactly lm-eval's. Only names get a `tbr_` prefix (so they
never shadow lm-eval's own tasks) and each subject names its file through `dataset_kwargs`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CATEGORIES = ("stem", "other", "social_sciences", "humanities")


def lm_eval_default_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).resolve().parent / "tasks" / "mmlu" / "default"


def subject_config(upstream: dict) -> dict:
    subject = upstream["dataset_name"]
    return {
        "dataset_kwargs": {"subject": subject},
        "description": upstream["description"],
        "tag": "tbr_" + upstream["tag"],
        "include": "_default_template_yaml",
        "task": "tbr_" + upstream["task"],
        "task_alias": upstream["task_alias"],
    }


def group_config(upstream: dict) -> dict:
    out = dict(upstream)
    out["group"] = "tbr_" + upstream["group"]
    out["group_alias"] = upstream.get("group_alias", upstream["group"])  # prints as "mmlu", "stem", ...
    out["task"] = ["tbr_" + t for t in upstream["task"]]
    return out


def generate(out_dir: Path = HERE) -> dict[str, str]:
    """{file name: YAML text} for every generated file (written to out_dir unless it is None)."""
    src = lm_eval_default_dir()
    files = {}
    for path in sorted(src.glob("mmlu_*.yaml")):
        cfg = subject_config(yaml.safe_load(path.read_text()))
        files[f"{cfg['task']}.yaml"] = yaml.safe_dump(cfg, sort_keys=False, width=1000)
    for name in ("", *(f"_{c}" for c in CATEGORIES)):
        cfg = group_config(yaml.safe_load((src / f"_mmlu{name}.yaml").read_text()))
        files[f"_tbr_mmlu{name}.yaml"] = yaml.safe_dump(cfg, sort_keys=False, width=1000)
    if out_dir is not None:
        for name, text in files.items():
            (out_dir / name).write_text(text)
    return files


if __name__ == "__main__":
    print(f"wrote {len(generate())} files to {HERE}")
