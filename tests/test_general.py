"""tbr general: lm-eval's tasks on our data files, its outputs, reflections, and equality with lm-eval's CLI."""

import csv
import functools
import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tbr.config import build
from tbr.errors import ConfigError, DataError
from tbr.general import (
    GeneralConfig,
    batch_cap,
    data_files,
    general,
    model_args,
    summary_lines,
    task_names,
)
from tbr.models import pick_dtype
from tbr.reflection import CLOSE_TAG, join
from tbr.tasks import TASKS_DIR, local

SHARED = Path(os.environ.get("TBR_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_shared = pytest.mark.skipif(
    not (SHARED / "arc-easy").is_dir(), reason="project data folder not present"
)

# ----------------------------------------------------------------------------- small data we wrote

ARC = [
    ("q1", "Which of these is a source of light?", ["the Sun", "a rock", "a shadow", "a chair"], "A"),
    ("q2", "What do plants need to make food?", ["darkness", "sunlight", "sand", "plastic"], "B"),
    ("q3", "Which state of matter has a fixed shape?", ["gas", "liquid", "solid"], "3"),
    ("q4", "What force pulls objects toward Earth?", ["magnetism", "friction", "gravity", "wind"], "C"),
    ("q5", "Which animal is a mammal?", ["shark", "frog", "eagle", "dog", "snake"], "D"),
    ("q6", "Water freezes at what temperature in Celsius?", ["0 degrees", "50 degrees", "100 degrees"], "1"),
]
GSM8K = [
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "3 + 2 = <<3+2=5>>5\n#### 5"),
    ("A box holds 4 pens. How many pens are in 3 boxes?", "4 * 3 = <<4*3=12>>12\n#### 12"),
    ("Sara had 10 dollars and spent 4. How many dollars are left?", "10 - 4 = <<10-4=6>>6\n#### 6"),
    ("There are 7 birds and 2 fly away. How many remain?", "7 - 2 = <<7-2=5>>5\n#### 5"),
    ("Each of 5 kids gets 2 cookies. How many cookies in all?", "5 * 2 = <<5*2=10>>10\n#### 10"),
    ("A rope of 9 meters is cut in 3 equal parts. How long is each?", "9 / 3 = <<9/3=3>>3\n#### 3"),
    ("Ann reads 6 pages a day for 2 days. How many pages?", "6 * 2 = <<6*2=12>>12\n#### 12"),
]


def _labels(n, key):
    return [str(i + 1) for i in range(n)] if key.isdigit() else "ABCDE"[:n]


def write_data(root: Path) -> Path:
    """A data folder in the project's layout: ARC official jsonl, GSM8K jsonl, one MMLU subject."""
    (root / "arc-easy").mkdir(parents=True)
    with (root / local.ARC_EASY_TEST).open("w") as f:
        for qid, stem, texts, key in ARC:
            labels = _labels(len(texts), key)
            choices = [{"text": t, "label": la} for t, la in zip(texts, labels, strict=True)]
            f.write(json.dumps({"id": qid, "question": {"stem": stem, "choices": choices}, "answerKey": key}))
            f.write("\n")
    (root / "gsm8k").mkdir()
    with (root / local.GSM8K_TEST).open("w") as f:
        for q, a in GSM8K:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    for split, rows in (("test", 3), ("dev", 5)):
        path = root / local.MMLU_TEST.format(subject="astronomy").replace("test", split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(local.MMLU_COLUMNS)
            for i in range(rows):
                w.writerow([f"Question {i}, with a comma?", "0", "4", "2, or 3", "Mars", i % 4])
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


@functools.cache
def _manager(data_dir):
    """lm-eval indexes its whole task tree (thousands of YAMLs) per TaskManager: build each one once."""
    from lm_eval.tasks import TaskManager

    return TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)}
    )


# ----------------------------------------------------------------------------- the local tasks


def test_local_tasks_read_our_formats(data):
    tasks = _manager(data).load(["tbr_arc_easy", "tbr_gsm8k", "tbr_mmlu_astronomy"])["tasks"]
    arc = tasks["tbr_arc_easy"]
    docs = list(arc.test_docs())
    assert len(docs) == len(ARC)
    assert docs[2]["question"] == "Which state of matter has a fixed shape?"
    assert docs[2]["choices"] == {"text": ["gas", "liquid", "solid"], "label": ["1", "2", "3"]}
    # lm-eval's own target template maps answerKey to the choice index, numeric labels included
    assert [arc.doc_to_target(d) for d in docs] == [0, 1, 2, 2, 3, 0]
    assert arc.doc_to_text(docs[0]) == "Question: Which of these is a source of light?\nAnswer:"

    gsm = tasks["tbr_gsm8k"]
    assert len(list(gsm.test_docs())) == len(GSM8K)
    assert gsm.config.num_fewshot == 5
    assert gsm.doc_to_target(gsm.test_docs()[0]).endswith("#### 5")

    mmlu = tasks["tbr_mmlu_astronomy"]
    test, dev = list(mmlu.test_docs()), list(mmlu.fewshot_docs())
    assert (len(test), len(dev)) == (3, 5)
    # choices stay strings (no "0" → 0 guessing) and quoted commas survive
    assert test[1]["choices"] == ["0", "4", "2, or 3", "Mars"] and test[1]["answer"] == 1
    assert mmlu.doc_to_text(test[1]).startswith("Question 1, with a comma?\nA. 0\nB. 4\nC. 2, or 3\nD. Mars")


@needs_shared
def test_project_data_counts():
    tasks = _manager(SHARED).load(["tbr_arc_easy", "tbr_gsm8k", "tbr_mmlu_abstract_algebra"])["tasks"]
    assert len(tasks["tbr_arc_easy"].test_docs()) == 2376
    assert len(tasks["tbr_gsm8k"].test_docs()) == 1319
    mmlu = tasks["tbr_mmlu_abstract_algebra"]
    assert (len(mmlu.test_docs()), len(mmlu.fewshot_docs())) == (100, 5)
    assert len(data_files(["mmlu"], SHARED)) == 2 * 57


def _lm_eval_yaml(rel):
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(lm_eval.__file__).parent / "tasks" / rel, resolve_func=False)


def _ours(rel):
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(TASKS_DIR / rel, resolve_func=False)


SOURCE_KEYS = {
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "custom_dataset",
    "task",
    "task_alias",
    "tag",
}
SOURCE_KEYS |= {"training_split", "validation_split", "test_split", "fewshot_split", "include", "description"}


@pytest.mark.parametrize(
    "ours, upstream",
    [
        ("arc/tbr_arc_easy.yaml", "arc/arc_easy.yaml"),
        ("gsm8k/tbr_gsm8k.yaml", "gsm8k/gsm8k.yaml"),
        ("mmlu/_default_template_yaml", "mmlu/default/_default_template_yaml"),
    ],
)
def test_task_configs_equal_lm_eval_except_the_source(ours, upstream):
    a, b = _ours(ours), _lm_eval_yaml(upstream)
    strip = lambda c: {k: v for k, v in c.items() if k not in SOURCE_KEYS}  # noqa: E731
    assert strip(a) == strip(b)
    assert a.get("test_split") == b.get("test_split") == "test"


def test_mmlu_subjects_and_groups_match_lm_eval():
    import lm_eval

    from tbr.tasks.mmlu._generate_configs import generate

    files = generate(out_dir=None)
    for name, text in files.items():  # the shipped files are what the generator makes from lm-eval
        assert (TASKS_DIR / "mmlu" / name).read_text() == text, name
    upstream = glob.glob(str(Path(lm_eval.__file__).parent / "tasks/mmlu/default/mmlu_*.yaml"))
    assert len(local.mmlu_subjects()) == len(upstream) == 57


# ----------------------------------------------------------------------------- bad input


def test_missing_data_file_is_a_clear_error(data, tmp_path):
    with pytest.raises(DataError, match=r"lacks .*gsm8k/test\.jsonl"):
        data_files(["gsm8k"], tmp_path)
    with pytest.raises(DataError, match=r"ARC-Easy test split: missing file .*ARC-Easy-Test\.jsonl"):
        local.load_arc_easy(data_dir=str(tmp_path))
    # through the stage: fails before any model is loaded
    with pytest.raises(DataError, match=r"lacks .*mmlu/test/abstract_algebra_test\.csv"):
        general(GeneralConfig(tasks=["mmlu"], data_dir=str(data), out=str(tmp_path / "out")))


def test_malformed_rows_name_file_and_line(tmp_path):
    bad = write_data(tmp_path / "d")
    lines = (bad / local.ARC_EASY_TEST).read_text().splitlines()
    row = json.loads(lines[3])
    row["answerKey"] = "Z"
    lines[3] = json.dumps(row)
    (bad / local.ARC_EASY_TEST).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ARC-Easy-Test\.jsonl:4: answerKey 'Z' is not one of"):
        local.load_arc_easy(data_dir=str(bad))
    (bad / local.GSM8K_TEST).write_text('{"question": "q", "answer": "4"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl:1: answer has no final '#### <number>'"):
        local.load_gsm8k(data_dir=str(bad))
    mmlu = bad / local.MMLU_TEST.format(subject="astronomy")
    mmlu.write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,B\n")
    with pytest.raises(DataError, match=r"astronomy_test\.csv:2: answer must be a 0-based index"):
        local.load_mmlu("astronomy", data_dir=str(bad))


def test_data_dir_needed_and_tasks_checked(monkeypatch, tmp_path):
    monkeypatch.delenv("TBR_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="TBR_DATA_DIR"):
        local.load_arc_easy()
    with pytest.raises(ConfigError, match="hellaswag would need the Hugging Face Hub"):
        task_names(["arc_easy", "hellaswag"], tmp_path)
    assert task_names(["mmlu", "arc_easy"], None) == {"mmlu": "mmlu", "arc_easy": "arc_easy"}
    assert task_names(["mmlu"], tmp_path) == {"mmlu": "tbr_mmlu"}
    with pytest.raises(ConfigError, match="--out"):
        general(GeneralConfig(tasks=["arc_easy"]))


def test_default_shots_and_override():
    cfg = GeneralConfig(out="x")
    assert [cfg.shots(t) for t in ("mmlu", "gsm8k", "arc_easy")] == [5, 5, 0]
    cfg = GeneralConfig(out="x", num_fewshot=2)
    assert [cfg.shots(t) for t in ("mmlu", "gsm8k", "arc_easy")] == [2, 2, 2]
    # the experiment runner's YAML gives per-task limits
    cfg = build(GeneralConfig, {"out": "x", "limit": 3, "task_limits": {"mmlu": 10}})
    assert [cfg.limit_for(t) for t in ("mmlu", "gsm8k")] == [10, 3]
    with pytest.raises(ConfigError, match=r"task_limits\.gsm8k must be a positive number"):
        build(GeneralConfig, {"out": "x", "task_limits": {"gsm8k": 0}})


def test_batch_cap_keeps_a_large_vocabulary_within_memory():
    gib = 2**30
    # Qwen2.5 (151,936 tokens), MMLU's longest 5-shot prompt (2,724 tokens), fp32: 3.3 GB a row
    assert batch_cap(2724, 151_936, 4, 20 * gib, 0.5, 8) == 3
    # SmolLM2's 49,152-token vocabulary fits the whole batch of 8 in the same memory
    assert batch_cap(2724, 49_152, 4, 20 * gib, 0.5, 8) == 8
    # bf16 logits are half the bytes: twice the rows
    assert batch_cap(2724, 151_936, 2, 20 * gib, 0.5, 8) == 6
    # never above the configured batch, never below one row (a warning, not a silent zero)
    assert batch_cap(10, 100, 4, 20 * gib, 0.5, 8) == 8
    assert batch_cap(2724, 151_936, 4, gib, 0.5, 8) == 1
    with pytest.raises(ConfigError, match="memory-fraction must be in"):
        GeneralConfig(out="x", memory_fraction=1.5).validate()


def test_summary_lines_show_stderr_even_when_lm_eval_has_none():
    summary = {
        "tasks": {
            "mmlu": {"num_fewshot": 5, "n": 57, "metrics": {"acc,none": 0.3, "acc_stderr,none": "N/A"}},
            "gsm8k": {
                "num_fewshot": 5,
                "n": 20,
                "metrics": {"exact_match,strict-match": 0.05, "exact_match_stderr,strict-match": 0.05},
            },
        }
    }
    assert summary_lines(summary) == [
        "mmlu (5-shot, n=57): acc[none]=0.3000 ± N/A",
        "gsm8k (5-shot, n=20): exact_match[strict-match]=0.0500 ± 0.0500",
    ]


# ----------------------------------------------------------------------------- reflections


def _gsm8k_extract(text: str, think_end_token: str | None) -> dict[str, str]:
    """What lm-eval's hf backend and gsm8k's two filters make of one generation."""
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.models.utils import postprocess_generated_text

    cfg = _ours("gsm8k/tbr_gsm8k.yaml")
    text = postprocess_generated_text(text, cfg["generation_kwargs"]["until"], think_end_token)
    out = {}
    for f in cfg["filter_list"]:
        kw = {k: v for k, v in f["filter"][0].items() if k != "function"}
        out[f["name"]] = RegexFilter(**kw).apply([[text]], [{}])[0][0]
    return out


def test_think_end_token_scores_the_answer_after_a_reflection():
    answer = "She has 3 + 2 = 5 apples.\n#### 5"
    # A reflection that quotes the prompt's "Question:" stop string would cut the whole answer away.
    reflected = join("Question: is this request safe? Yes, it is plain arithmetic with 7 items.", answer)
    assert reflected.startswith("<reflection>") and CLOSE_TAG in reflected
    assert _gsm8k_extract(reflected, CLOSE_TAG) == {"strict-match": "5", "flexible-extract": "5"}
    assert _gsm8k_extract(reflected, None)["strict-match"] == "[invalid]"
    # Numbers inside a reflection must not be taken as the answer either.
    reflected = join("This asks for 7 and 9 and 11, harmless.", "The answer is 4")
    assert _gsm8k_extract(reflected, CLOSE_TAG)["flexible-extract"] == "4"


@pytest.mark.parametrize(
    "text",
    [
        "She has 3 + 2 = 5 apples.\n#### 5",
        "  leading spaces then 12.\n#### 12\n\nQuestion: next one",
        "no number at all",
        "Costs $1,250.50 in total.\n#### 1,250.50",
    ],
)
def test_think_end_token_is_a_no_op_without_the_tag(text):
    assert _gsm8k_extract(text, CLOSE_TAG) == _gsm8k_extract(text, None)


# ----------------------------------------------------------------------------- real runs (SmolLM2)

LIMIT = 5


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("general")
    cfg = GeneralConfig(
        tasks=["arc_easy", "gsm8k"], data_dir=str(data), out=str(out), limit=LIMIT, max_gen_toks=24
    )
    summary = general(cfg)
    return out, summary, cfg


@pytest.mark.slow
def test_results_samples_and_manifest(run_dir):
    out, summary, _ = run_dir
    res = json.loads((out / "results.json").read_text())
    arc = res["results"]["tbr_arc_easy"]
    for metric in ("acc,none", "acc_norm,none"):
        assert 0.0 <= arc[metric] <= 1.0
        assert arc[metric.replace(",", "_stderr,")] >= 0.0
    gsm = res["results"]["tbr_gsm8k"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(gsm)
    assert res["n-shot"] == {"tbr_arc_easy": 0, "tbr_gsm8k": 5}
    assert res["config"]["model_args"]["think_end_token"] == CLOSE_TAG
    assert "tbr_gsm8k" in res["configs"] and res["configs"]["tbr_gsm8k"]["num_fewshot"] == 5

    arc_rows = [json.loads(x) for x in (out / "samples_tbr_arc_easy.jsonl").read_text().splitlines()]
    assert len(arc_rows) == LIMIT and {"doc", "target", "resps", "acc"} <= set(arc_rows[0])
    assert arc_rows[0]["doc"]["id"] == "q1" and len(arc_rows[0]["resps"]) == 4
    gsm_rows = (out / "samples_tbr_gsm8k.jsonl").read_text().splitlines()
    assert len(gsm_rows) == LIMIT * 2  # one row per filter
    assert summary["tasks"]["arc_easy"]["n"] == LIMIT
    assert summary["tasks"]["arc_easy"]["metrics"]["acc,none"] == arc["acc,none"]

    man = json.loads((out / "manifest.json").read_text())
    le = man["lm_eval"]
    # auto → the precision this CPU runs natively (bf16 with AVX512-BF16/AMX, else fp32)
    assert le["version"] == "0.4.13" and le["dtype"] == str(pick_dtype("auto")).removeprefix("torch.")
    assert le["n_shot"] == {"tbr_arc_easy": 0, "tbr_gsm8k": 5}
    assert le["task_versions"]["tbr_gsm8k"] == 3.0
    assert le["seeds"] == {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}
    assert le["think_end"] == CLOSE_TAG and le["model_args"].endswith(f",think_end_token={CLOSE_TAG}")
    assert le["limits"] == {"arc_easy": LIMIT, "gsm8k": LIMIT}
    assert man["models"][0]["name"] == "smollm2-135m-instruct"
    assert {Path(p).name for p in man["data"]} == {"ARC-Easy-Test.jsonl", "test.jsonl"}


@pytest.mark.slow
def test_memory_cap_changes_the_batch_not_the_scores(data, tmp_path, caplog):
    """A memory budget too small for one row runs lm-eval one row at a time, with the same scores.

    Both runs in fp32: in bf16 a GEMM's rounding depends on its row count on some CPUs (on an AMX Xeon
    batch 1 and batch 8 gave log-likelihoods up to 0.3 apart, in CI on 2026-12-07)."""
    outs = {}
    for name, cap in (("small", {"memory_fraction": 1e-9}), ("full", {})):
        outs[name] = tmp_path / name
        with caplog.at_level(logging.WARNING, logger="tbr.general"):
            general(
                GeneralConfig(
                    tasks=["arc_easy"],
                    data_dir=str(data),
                    out=str(outs[name]),
                    limit=LIMIT,
                    dtype="fp32",
                    **cap,
                )
            )
        assert any("one row's logits need" in r.getMessage() for r in caplog.records) == (name == "small")
        caplog.clear()
    batches = {
        k: json.loads((d / "manifest.json").read_text())["lm_eval"]["loglikelihood_batches"]
        for k, d in outs.items()
    }
    small, full = batches["small"], batches["full"]
    assert [b["batch_size"] for b in small] == [1] and [b["batch_size"] for b in full] == [8]
    assert small[0]["vocab"] == 49_152 and small[0]["longest_tokens"] == full[0]["longest_tokens"] > 10
    rows = lambda d: [json.loads(x) for x in (d / "samples_tbr_arc_easy.jsonl").read_text().splitlines()]  # noqa: E731
    ours, theirs = rows(outs["small"]), rows(outs["full"])
    assert [r["acc"] for r in ours] == [r["acc"] for r in theirs]
    lls = lambda rs: [float(resp[0][0]) for r in rs for resp in r["resps"]]  # noqa: E731
    assert lls(ours) == pytest.approx(lls(theirs), abs=1e-4)


@pytest.mark.slow
def test_rerun_answers_every_request_from_lm_eval_cache(run_dir, caplog):
    out, summary, cfg = run_dir
    with caplog.at_level(logging.INFO, logger="lm_eval"):
        again = general(cfg)
    assert again == summary
    seen = [r.getMessage() for r in caplog.records if "Cached requests:" in r.getMessage()]
    assert len(seen) == 2  # arc (loglikelihood) and gsm8k (generate_until)
    assert all(m.endswith("Requests remaining: 0") for m in seen), seen


@pytest.mark.slow
def test_same_number_as_lm_eval_cli(run_dir, data, tmp_path):
    """lm-eval's own entry point, same checkpoint and settings, prints the same accuracy."""
    from tbr.models import resolve

    out = run_dir[0]
    ours = json.loads((out / "results.json").read_text())["results"]["tbr_arc_easy"]
    args = model_args(GeneralConfig(out="x"), resolve("smollm2-135m-instruct"))
    cmd = [
        sys.executable, "-m", "lm_eval",
        "--model", "hf",
        "--model_args", ",".join(f"{k}={v}" for k, v in args.items()),
        "--tasks", "tbr_arc_easy",
        "--include_path", str(TASKS_DIR),
        "--metadata", json.dumps({"data_dir": str(data)}),
        "--limit", str(LIMIT),
        "--batch_size", "8",
        "--device", "cpu",
        "--output_path", str(tmp_path),
        "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(tmp_path / "**" / "results_*.json"), recursive=True)
    theirs = json.loads(Path(path).read_text())["results"]["tbr_arc_easy"]
    for metric in ("acc,none", "acc_norm,none", "acc_stderr,none"):
        assert theirs[metric] == ours[metric], metric
    assert "|arc_easy|" in proc.stdout.replace(" ", "")  # the table lm-eval prints
    # and the same log-likelihood for every choice of every question
    (spath,) = glob.glob(str(tmp_path / "**" / "samples_tbr_arc_easy_*.jsonl"), recursive=True)
    their_rows = [json.loads(x) for x in Path(spath).read_text().splitlines()]
    our_rows = [json.loads(x) for x in (out / "samples_tbr_arc_easy.jsonl").read_text().splitlines()]
    # (lm-eval's CLI logger writes the floats as strings; str(float) round-trips exactly)
    lls = lambda rows: [[float(resp[0][0]) for resp in r["resps"]] for r in rows]  # noqa: E731
    assert lls(their_rows) == lls(our_rows) and len(lls(our_rows)[0]) == 4
    assert [r["doc"]["id"] for r in their_rows] == ["q1", "q2", "q3", "q4", "q5"]


@pytest.mark.slow
def test_lora_adapter_goes_to_lm_eval_as_peft(run_dir, data, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tbr.models import resolve

    base = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct").path, dtype=torch.float32)
    torch.manual_seed(0)
    # non-zero LoRA weights, so scores must move if (and only if) the adapter is really applied
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out"
    general(
        GeneralConfig(
            model=str(tmp_path / "adapter"), tasks=["arc_easy"], data_dir=str(data), out=str(out), limit=2
        )
    )
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["model_args"]["peft"] == str((tmp_path / "adapter").resolve())
    assert json.loads((out / "manifest.json").read_text())["models"][0]["kind"] == "adapter"
    ours = [json.loads(x)["resps"] for x in (out / "samples_tbr_arc_easy.jsonl").read_text().splitlines()]
    base_rows = (run_dir[0] / "samples_tbr_arc_easy.jsonl").read_text().splitlines()[:2]
    assert ours != [json.loads(x)["resps"] for x in base_rows]


def test_offline_without_data_dir_says_to_pass_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TBR_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, "-m", "tbr.cli", "general", "--tasks", "arc_easy"]
    proc = subprocess.run(
        cmd + ["--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0
    assert "could not load arc_easy from the Hugging Face Hub" in proc.stderr
    assert "Pass --data-dir (or set TBR_DATA_DIR)" in proc.stderr
    assert not (tmp_path / "results.json").exists()
