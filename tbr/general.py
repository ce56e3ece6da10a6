"""`tbr general`: does a model keep its general ability? MMLU, GSM8K and ARC-Easy via lm-evaluation-harness.

We write no benchmark code: lm-eval builds the prompts, runs the model (its `hf` backend) and scores,
so a number here equals what `lm_eval` prints for the same checkpoint and settings. tbr adds
  * model names: built-ins, local/Hub checkpoints and LoRA adapters, through tbr.models.resolve;
  * offline data: with a data dir, the tbr_* tasks in tbr/tasks/ (lm-eval's standard YAMLs with only
    the document source swapped for our data folder's files); without one, lm-eval's own tasks;
  * per-task few-shot defaults (MMLU 5, GSM8K 5, ARC-Easy 0), where lm-eval has one number for all;
  * reflections: lm-eval's `think_end_token=</reflection>` drops a safety reflection from generated
    text before GSM8K's answer extraction (a no-op on text without the tag, see docs/results.md);
  * results.json, per-sample JSONL, summary.json and a manifest in one output folder, and resume:
    lm-eval's SQLite response cache lives there, so a rerun after a crash skips answered requests;
  * a loglikelihood batch that fits in memory (batch_cap below), for large-vocabulary models on a CPU.

    tbr general --model smollm2-135m-instruct --tasks arc_easy --data-dir ../shared/data --out OUT
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError
from tbr.io import ensure_dir, stable_hash, write_json_atomic
from tbr.models import DEFAULT_MODEL
from tbr.reflection import CLOSE_TAG

log = logging.getLogger(__name__)

# Common practice (MMLU paper and Open LLM Leaderboard v1: 5-shot; GSM8K: lm-eval's 5; ARC: 0-shot).
DEFAULT_SHOTS = {"mmlu": 5, "gsm8k": 5, "arc_easy": 0}
# lm-eval's simple_evaluate defaults (random, numpy, torch, fewshot), used when --seed is not given.
LM_EVAL_SEEDS = (0, 1234, 1234, 1234)


@dataclass
class GeneralConfig:
    model: str = opt(DEFAULT_MODEL, "built-in name, local checkpoint/adapter dir, or Hugging Face id")
    tasks: list[str] = opt(["mmlu", "gsm8k", "arc_easy"], "comma-separated lm-eval tasks")
    out: str | None = opt(None, "output folder (results.json, samples_<task>.jsonl, manifest.json)")
    data_dir: str | None = opt(
        None, "local data folder (default: $TBR_DATA_DIR; unset = lm-eval's HF datasets)"
    )
    limit: int | None = opt(None, "documents per task (per MMLU subject); for quick checks only")
    task_limits: dict[str, int] = opt(
        {}, "per-task --limit, e.g. {mmlu: 10, gsm8k: 100} (YAML only)", cli=False
    )
    num_fewshot: int | None = opt(None, "shots for every task (default: mmlu 5, gsm8k 5, arc_easy 0)")
    batch_size: int = opt(8, "lm-eval batch size (for loglikelihood tasks, the most: see --memory-fraction)")
    memory_fraction: float = opt(
        0.5, "cap each loglikelihood batch so its logits fit in this share of free memory (0: off)"
    )
    dtype: str = opt("auto", "auto (bf16 on CUDA or CPUs with native bf16, else fp32), fp32, bf16, fp16")
    device: str | None = opt(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    apply_chat_template: bool = opt(False, "wrap prompts in the model's chat template (lm-eval default: off)")
    fewshot_as_multiturn: bool | None = opt(
        None, "one chat turn per few-shot example (default, as lm-eval's CLI: on with --apply-chat-template)"
    )
    max_gen_toks: int | None = opt(None, "cap on generated tokens for GSM8K (default: lm-eval's 256)")
    # Not named think_end_token: manifests redact keys containing "token" (tbr.config.scrub).
    think_end: str = opt(CLOSE_TAG, "lm-eval's think_end_token: score generated text after it ('' = off)")
    seed: int | None = opt(
        None, "one seed for python/numpy/torch/few-shot (default: lm-eval's 0,1234,1234,1234)"
    )
    cache: bool = opt(True, "keep lm-eval's response cache in OUT/lm_cache, so reruns resume")
    log_samples: bool = opt(True, "write per-sample JSONL (samples_<task>.jsonl)")

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("--out DIR is required")
        if not self.tasks:
            raise ConfigError("--tasks is empty; e.g. --tasks mmlu,gsm8k,arc_easy")
        for name, n in {
            "limit": self.limit,
            **{f"task_limits.{t}": v for t, v in self.task_limits.items()},
        }.items():
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ConfigError(f"{name} must be a positive number of documents, got {n!r}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ConfigError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ConfigError("--fewshot-as-multiturn needs --apply-chat-template (as in lm-eval)")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.memory_fraction <= 1:
            raise ConfigError(f"--memory-fraction must be in [0, 1], got {self.memory_fraction}")

    def shots(self, task: str) -> int | None:
        """Few-shot count for a task; None = the task's own default (for tasks we have no default for)."""
        return (
            self.num_fewshot if self.num_fewshot is not None else DEFAULT_SHOTS.get(task.removeprefix("tbr_"))
        )

    def multiturn(self) -> bool:
        return self.apply_chat_template if self.fewshot_as_multiturn is None else self.fewshot_as_multiturn

    def limit_for(self, task: str) -> int | None:
        return self.task_limits.get(task, self.limit)

    def seeds(self) -> tuple[int, int, int, int]:
        return LM_EVAL_SEEDS if self.seed is None else (self.seed,) * 4


def task_names(tasks: list[str], data_dir: Path | None) -> dict[str, str]:
    """User-facing task → lm-eval task name: our local tbr_* task with a data dir, else lm-eval's own."""
    from tbr.tasks import LOCAL_TASKS

    if data_dir is None:
        return {t: t for t in tasks}
    unknown = [t for t in tasks if t not in LOCAL_TASKS and not t.startswith("tbr_")]
    if unknown:
        raise ConfigError(
            f"with a data dir, tbr can run {', '.join(LOCAL_TASKS)} from local files; "
            f"{', '.join(unknown)} would need the Hugging Face Hub (drop --data-dir / TBR_DATA_DIR for those)"
        )
    return {t: LOCAL_TASKS.get(t, t) for t in tasks}


def data_files(tasks: list[str], data_dir: Path | None) -> list[Path]:
    """Every local file the tasks read; a missing one is a DataError before any model is loaded."""
    from tbr.tasks import local

    if data_dir is None:
        return []
    out = [f for t in tasks if t in DEFAULT_SHOTS for f in local.files(t, data_dir)]
    missing = [f for f in out if not f.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(
            f"data dir {data_dir} lacks {', '.join(map(str, missing[:3]))}{more}; expected the layout of "
            "the data-folder layout of README.md (mmlu/{test,dev}/<subject>_{test,dev}.csv, gsm8k/test.jsonl, "
            "arc-easy/ARC-Easy-Test.jsonl)"
        )
    return out


def model_args(cfg: GeneralConfig, ref: Any) -> dict[str, Any]:
    """lm-eval `hf` model arguments for a tbr ModelRef (the same string works on lm-eval's CLI)."""
    from tbr.models import default_device, pick_dtype

    device = cfg.device or default_device()
    args: dict[str, Any] = {
        "pretrained": ref.path,
        "dtype": str(pick_dtype(cfg.dtype, device)).split(".")[-1],
    }
    if ref.adapter:
        args["peft"] = ref.adapter
        # A tbr adapter directory may carry its own tokenizer (a training chat template), as in tbr.models.
        if (Path(ref.adapter) / "tokenizer_config.json").exists():
            args["tokenizer"] = ref.adapter
    if cfg.think_end:
        args["think_end_token"] = cfg.think_end
    return args


# lm-eval's loglikelihood scores a batch from [batch, longest request, vocabulary] logits, held twice:
# the model's output and its log-softmax. Measured (SmolLM2-135M, fp32, MMLU 5-shot, whose longest
# request is 2,724 tokens): peak RSS 2.88 GB at batch 1 and 5.01 GB at batch 3, i.e. 1.07 GB a row =
# 8 bytes a logit. With Qwen2.5's 151,936-token vocabulary a row is 3.3 GB, and lm-eval's default batch
# of 8 went past 20 GB. lm-eval's own `batch_size=auto` finds the batch by trying forward passes until
# one fails, which on a CPU is the OOM killer rather than an exception. So tbr sets the batch from the
# longest request (lm-eval sorts longest first, so the first batch is the largest) and the memory that
# is free when it starts; memory_fraction (0.5) is the margin for everything else.
LOGIT_COPIES = 2


def batch_cap(
    longest: int, vocab: int, bytes_per_logit: int, free_bytes: int, fraction: float, most: int
) -> int:
    """The largest batch, at most `most` and at least 1, whose logits fit in `fraction` of `free_bytes`."""
    per_row = max(1, longest) * vocab * bytes_per_logit * LOGIT_COPIES
    return max(1, min(most, int(free_bytes * fraction) // per_row))


def free_memory(device: str) -> int:
    """Bytes free for new tensors on the device (CPU: what the OS can give without swapping)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil

    return int(psutil.virtual_memory().available)


def cap_batches(lm: Any, cfg: GeneralConfig, device: str) -> list[dict[str, Any]]:
    """Make lm-eval's batch search (`_detect_batch_size`, which it calls only under `batch_size=auto`)
    apply batch_cap; returns the list that every decision is appended to, for the manifest."""
    import torch

    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    width = torch.finfo(lm.softmax_dtype or lm.model.dtype).bits // 8
    chosen: list[dict[str, Any]] = []

    def detect(requests: Any = None, pos: int = 0) -> int:
        if not requests:  # generate_until: transformers' generate keeps only the last position's logits
            return cfg.batch_size
        _, context, continuation = requests[pos]
        longest = min(len(context) + len(continuation) - 1, lm.max_length)  # lm-eval's truncation
        free = free_memory(device)
        batch = batch_cap(longest, vocab, width, free, cfg.memory_fraction, cfg.batch_size)
        gb = round(free / 2**30, 2)
        chosen.append({"longest_tokens": longest, "vocab": vocab, "free_gb": gb, "batch_size": batch})
        log.info("lm-eval loglikelihood batch %d (longest request %d tokens, vocabulary %d, %.1f GB free)",
                 batch, longest, vocab, free / 2**30)  # fmt: skip
        row_gb = longest * vocab * width * LOGIT_COPIES / 2**30
        if row_gb > free * cfg.memory_fraction / 2**30:
            log.warning("one row's logits need %.1f GB, more than %.0f%% of the %.1f GB free: expect swapping "
                        "or the OOM killer", row_gb, 100 * cfg.memory_fraction, free / 2**30)  # fmt: skip
        return batch

    lm._detect_batch_size = detect  # noqa: SLF001 - the one hook lm-eval's auto batch size goes through
    lm.max_batch_size = cfg.batch_size
    return chosen


def _leaves(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    subs = group_subtasks.get(name)
    return [name] if not subs else [leaf for s in subs for leaf in _leaves(s, group_subtasks)]


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One lm-eval results dict from several simple_evaluate calls (one call per few-shot count)."""
    merged = dict(parts[0])
    for p in parts[1:]:
        for key, value in p.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "config":
                merged[key] = {**merged[key], **value}
    return merged


def _check_hub_tasks(manager: Any, tasks: list[str]) -> None:
    """Without a data dir lm-eval fetches datasets from the Hub: fail clearly, before loading a model."""
    try:
        manager.load(tasks)
    except Exception as e:  # noqa: BLE001 - datasets/hub raise many types; all mean "cannot get the data"
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(
            f"lm-eval could not load {', '.join(tasks)} from the Hugging Face Hub ({type(e).__name__}: "
            f"{first}). Offline? Pass --data-dir (or set TBR_DATA_DIR) to a folder in the data layout of "
            "README.md (Data) to run tbr's local copies of mmlu, gsm8k and arc_easy."
        ) from None


def evaluate(cfg: GeneralConfig) -> dict[str, Any]:
    """Run lm-eval and write OUT; returns the summary (also written to OUT/summary.json)."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    from tbr.data import resolve_data_dir
    from tbr.models import default_device, resolve
    from tbr.tasks import TASKS_DIR

    out = ensure_dir(cfg.out, "--out")  # type: ignore[arg-type]  # before any model is resolved or loaded
    data_dir = resolve_data_dir(cfg.data_dir)
    names = task_names(cfg.tasks, data_dir)
    files = data_files(cfg.tasks, data_dir)
    ref = resolve(cfg.model)
    device = cfg.device or default_device()
    margs = model_args(cfg, ref)

    metadata = {"data_dir": str(data_dir)} if data_dir else {}
    # With a data dir only our tbr_* tasks run, so skip indexing lm-eval's thousands of task YAMLs.
    if data_dir:
        manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    else:
        manager = TaskManager(metadata=metadata)
    if data_dir is None:
        _check_hub_tasks(manager, list(names.values()))
    capped = cfg.memory_fraction > 0
    batch_arg = (
        {"batch_size": "auto", "max_batch_size": cfg.batch_size} if capped else {"batch_size": cfg.batch_size}
    )
    lm = get_model("hf").create_from_arg_obj(margs, {**batch_arg, "device": device})
    batches = cap_batches(lm, cfg, device) if capped else []
    seeds = cfg.seeds()
    # lm-eval keys its response cache by request only, so the file name carries the weights and the
    # model args (dtype, adapter, think_end_token: all change the responses).
    cache = str(out / "lm_cache" / f"{ref.weights_hash[:16]}-{stable_hash(margs, 8)}") if cfg.cache else None
    if cache:
        Path(cache).parent.mkdir(exist_ok=True)

    # lm-eval takes one few-shot count and one limit per call: one call per distinct pair.
    calls: dict[tuple[int | None, int | None], list[str]] = {}
    for task in cfg.tasks:
        calls.setdefault((cfg.shots(task), cfg.limit_for(task)), []).append(names[task])
    parts = []
    for (shots, limit), group in calls.items():
        log.info("lm-eval: %s with num_fewshot=%s, limit=%s", ",".join(group), shots, limit)
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=group,
            num_fewshot=shots,
            batch_size=cfg.batch_size,
            device=device,
            use_cache=cache,
            limit=limit,
            log_samples=cfg.log_samples,
            apply_chat_template=cfg.apply_chat_template,
            fewshot_as_multiturn=cfg.multiturn(),
            gen_kwargs={"max_gen_toks": cfg.max_gen_toks} if cfg.max_gen_toks else None,
            task_manager=manager,
            random_seed=seeds[0],
            numpy_random_seed=seeds[1],
            torch_random_seed=seeds[2],
            fewshot_random_seed=seeds[3],
            metadata=metadata,
        )
        parts.append(res)
    results = _merge(parts)
    # simple_evaluate was handed a model object; record how lm-eval's CLI would build the same one.
    results["config"].update(model="hf", model_args=margs, batch_size=cfg.batch_size, device=device)
    limits = {names[t]: cfg.limit_for(t) for t in cfg.tasks}
    results["config"]["limit"] = cfg.limit if len(set(limits.values())) == 1 else limits

    samples = results.pop("samples", {})
    for task, rows in samples.items():
        with (out / f"samples_{task}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
    # lm-eval's results hold numpy numbers and the like; its own serializer makes them plain JSON.
    results = json.loads(json.dumps(results, default=handle_non_serializable))
    write_json_atomic(out / "results.json", results)
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))

    summary = summarize(results, names, cfg)
    summary["model"] = ref.name
    write_json_atomic(out / "summary.json", summary)
    write_manifest(
        out,
        "general",
        cfg,
        models=[ref.manifest()],
        data_files=files,
        extra={
            "lm_eval": {
                "version": importlib.metadata.version("lm-eval"),
                "model": "hf",
                # as lm-eval's CLI takes it (a string also survives the manifest's secret scrubbing)
                "model_args": ",".join(f"{k}={v}" for k, v in margs.items()),
                "tasks": names,
                "include_path": str(TASKS_DIR) if data_dir else None,
                "task_versions": results.get("versions", {}),
                "n_shot": results.get("n-shot", {}),
                "seeds": dict(zip(("random", "numpy", "torch", "fewshot"), seeds, strict=True)),
                "batch_size": cfg.batch_size,
                "memory_fraction": cfg.memory_fraction,
                "loglikelihood_batches": batches,
                "dtype": margs["dtype"],
                "device": device,
                "apply_chat_template": cfg.apply_chat_template,
                "fewshot_as_multiturn": cfg.multiturn(),
                "think_end": cfg.think_end or None,
                "limits": {t: cfg.limit_for(t) for t in cfg.tasks},
                "cache": cache,
            },
            "data_dir": str(data_dir) if data_dir else None,
        },
    )
    return summary


def summarize(results: dict[str, Any], names: dict[str, str], cfg: GeneralConfig) -> dict[str, Any]:
    """Per user-facing task: lm-eval's metrics (with stderr), shots and documents scored."""
    tasks = {}
    groups = results.get("group_subtasks", {})
    for user, name in names.items():
        # lm-eval's metric keys are "metric,filter" (stderr: "metric_stderr,filter"); the rest is labels.
        metrics = {k: v for k, v in results["results"].get(name, {}).items() if "," in k}
        leaves = _leaves(name, groups)
        n = sum(results.get("n-samples", {}).get(leaf, {}).get("effective", 0) for leaf in leaves)
        tasks[user] = {
            "lm_eval_task": name,
            "num_fewshot": cfg.shots(user),
            "limit": cfg.limit_for(user),
            "n": n,
            "metrics": metrics,
        }
    return {"tasks": tasks}


def general(cfg: GeneralConfig) -> dict[str, Any]:
    """For the experiment runner: run and return the summary dict."""
    cfg.validate()
    return evaluate(cfg)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per task: `metric[filter]=value ± stderr` (lm-eval writes stderr "N/A" where n is 1)."""

    def num(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, int | float) else str(v)

    lines = []
    for task, row in summary["tasks"].items():
        shown = ", ".join(
            f"{k.split(',')[0]}[{k.split(',')[1]}]={num(v)} ± {num(row['metrics'].get(k.replace(',', '_stderr,', 1)))}"
            for k, v in row["metrics"].items()
            if "_stderr," not in k
        )
        lines.append(f"{task} ({row['num_fewshot']}-shot, n={row['n']}): {shown}")
    return lines


def run(cfg: GeneralConfig) -> int:
    summary = general(cfg)
    print("\n".join(summary_lines(summary)))
    print(f"wrote {cfg.out}/results.json")
    return 0
