"""lm-eval task configs for MMLU, GSM8K and ARC-Easy read from a local data folder.

Each YAML here copies the prompt, target, choices, metrics and filters of lm-eval's own task
(lm_eval/tasks/{mmlu/default,gsm8k,arc}) and replaces only where the documents come from: a
`custom_dataset` function in `tbr.tasks.local` that reads our data folder's files and yields the
Hugging Face schema the standard task expects. `tests/test_general.py` checks that the copied fields
still equal the installed lm-eval's, so a number from these tasks is the standard task's number.

Use them from lm-eval's own CLI too:
    TBR_DATA_DIR=../shared/data python -m lm_eval --include_path $(python -c \
        "import tbr.tasks; print(tbr.tasks.TASKS_DIR)") --tasks tbr_arc_easy ...
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

# user-facing name → our local task (or group) name
LOCAL_TASKS = {"mmlu": "tbr_mmlu", "gsm8k": "tbr_gsm8k", "arc_easy": "tbr_arc_easy"}
