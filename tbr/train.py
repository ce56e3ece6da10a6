"""`tbr train`: safety-reflection instruction fine-tuning (paper §4.2) with TRL's SFTTrainer.

The paper's loss is plain causal-LM fine-tuning where a safety sample's target is reflection ⊕ refusal.
TRL already does exactly that for prompt-completion data, so this module only wires it up:

  * loss on completions only: SFTTrainer sets `completion_only_loss` for prompt-completion datasets and
    labels prompt tokens -100 (trl/trainer/sft_trainer.py, `tokenize_fn` + `build_labels`); we set it
    explicitly and `--show-masks N` prints TRL's own collated batch, so what is shown is what trains;
  * EOS: for the alpaca (plain string) template TRL appends `tokenizer.eos_token` to every completion; for
    the chat template the assistant turn ends with the template's end-of-turn token. Both are labelled,
    and the saved generation_config stops on them;
  * gradient accumulation: TRL/transformers pass `num_items_in_batch` (labelled tokens of the whole
    accumulated batch, summed across ranks with `average_tokens_across_devices`) to the loss, so the loss
    is a per-token mean over the optimizer step, not a mean of per-micro-batch means;
  * truncation: TRL keeps the start and silently drops samples whose completion was cut away entirely;
    we measure it first (with TRL's own tokenization), report it, and refuse to train if nothing is left;
  * bf16: autocast through accelerate; a forward hook records the dtype of a real activation so the
    manifest says what precision actually ran (a bf16 flag that does nothing is a known trap on CPUs).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr.config import opt, write_manifest
from tbr.errors import ConfigError, DataError, ModelError, TbrError
from tbr.io import read_jsonl
from tbr.models import DEFAULT_MODEL, SIDECAR, eos_token_ids

log = logging.getLogger(__name__)

TEMPLATES = ("alpaca", "chat")
REQUIRED_COLUMNS = ("prompt", "completion")


@dataclass
class TrainConfig:
    model: str = opt(DEFAULT_MODEL, "base model: a built-in name, a local HF checkpoint or a hub id")
    data: str = opt("", "a `tbr build` directory or a train.jsonl file")
    out: str = opt("runs/train", "output directory (the final checkpoint; checkpoints/ inside it)")
    method: str = opt("lora", "full fine-tuning or LoRA", choices=("full", "lora"))
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    lora_target_modules: list[str] = opt(["all-linear"], "LoRA target modules (comma-separated)")
    epochs: float = opt(3.0, "training epochs")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1: run all epochs)")
    lr: float | None = opt(None, "peak learning rate (default: 2e-4 for LoRA, 2e-5 for full)")
    lr_scheduler: str = opt("cosine", "learning-rate schedule (any transformers SchedulerType)")
    warmup_ratio: float = opt(0.03, "fraction of steps for linear warmup")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    batch_size: int = opt(8, "per-device micro-batch size")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_length: int = opt(1024, "maximum tokens per sample (prompt + completion + EOS); longer ones are cut")
    packing: bool = opt(
        False, "pack samples into max_length rows (TRL bfd, padding-free); isolation is checked first"
    )
    group_by_length: bool = opt(True, "batch samples of similar length together (less padding, same loss)")
    val_fraction: float = opt(0.05, "held-out validation fraction; the best checkpoint by eval loss is kept")
    seed: int = opt(0, "seed for the split, initialisation of LoRA weights and data order")
    bf16: str = opt("auto", "bf16 autocast: auto = only where native (CUDA, AVX512-BF16/AMX CPUs)",
                    choices=("auto", "true", "false"))  # fmt: skip
    gradient_checkpointing: bool = opt(False, "recompute activations in backward (saves memory, ~30% slower)")
    resume: bool = opt(False, "resume from the last checkpoint in OUT/checkpoints")
    merge: bool = opt(False, "LoRA: merge the adapter into the base weights before saving")
    show_masks: int = opt(0, "print N samples with their masked/trained spans and exit (no training)")
    logging_steps: int = opt(5, "log the training loss every N steps")
    eval_steps: int = opt(0, "evaluate and checkpoint every N steps (0: once per epoch)")
    save_total_limit: int = opt(2, "checkpoints to keep (the best one is always kept)")
    threads: int = opt(
        0,
        "torch CPU threads per process (0: all physical cores, for a machine of your own; 1 when it is shared)",
    )
    loss: str = opt(
        "completion",
        "completion: LM head only on labelled tokens, in CPU-sized vocabulary tiles; "
        "trl: TRL's fused head on every position with its entropy/accuracy metrics (the earlier path)",
        choices=("completion", "trl"),
    )
    compile: bool = opt(False, "torch.compile the model for training (inductor; compiles on the first steps)")
    token_metrics: bool = opt(
        False, "also log TRL's per-token entropy and accuracy (costs a little per step)"
    )

    def validate(self) -> None:
        if self.method not in ("full", "lora"):
            raise ConfigError(f"method={self.method!r}: use full or lora")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction}: must be in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio}: must be in [0, 1)")
        if self.merge and self.method != "lora":
            raise ConfigError("--merge only applies to --method lora (full fine-tuning saves full weights)")
        for name in ("batch_size", "grad_accum", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be at least 1")


# ----------------------------------------------------------------------------- data


def data_file(data: str) -> Path:
    """A build directory or a JSONL file → the train.jsonl to read."""
    if not data:
        raise ConfigError("no training data: pass --data BUILD_DIR (from `tbr build`) or a train.jsonl")
    p = Path(data).expanduser()
    if p.is_dir():
        p = p / "train.jsonl"
    if not p.is_file():
        raise DataError(f"{p}: not found; run `tbr build --out DIR` first or point --data at a train.jsonl")
    return p


def _row_template(row: dict[str, Any]) -> str | None:
    p, c = row["prompt"], row["completion"]
    if isinstance(p, str) and isinstance(c, str):
        return "alpaca"
    msgs_ok = all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in [*(p if isinstance(p, list) else [None]), *(c if isinstance(c, list) else [None])]
    )
    if isinstance(p, list) and isinstance(c, list) and p and c and msgs_ok:
        return "chat"
    return None


def load_rows(data: str) -> tuple[list[dict[str, Any]], dict[str, Any], Path]:
    """Read and check train.jsonl; returns (rows, build info {template, reflection_format}, file)."""
    path = data_file(data)
    rows: list[dict[str, Any]] = []
    template = None
    with path.open(encoding="utf-8") as f:
        linenos = [i for i, line in enumerate(f, 1) if line.strip()]
    for lineno, row in zip(linenos, read_jsonl(path), strict=True):
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing:
            raise DataError(
                f"{path}:{lineno}:1: missing column(s) {', '.join(missing)}; training rows need "
                f"'prompt' and 'completion' (build them with `tbr build`)"
            )
        t = _row_template(row)
        if t is None:
            raise DataError(
                f"{path}:{lineno}:1: prompt/completion must both be strings (alpaca template) or both "
                "non-empty lists of {role, content} messages (chat template)"
            )
        if template and t != template:
            raise DataError(f"{path}:{lineno}:1: {t}-template row in a {template}-template file")
        template = t
        if not (row["completion"] if t == "alpaca" else row["completion"][-1]["content"]).strip():
            raise DataError(f"{path}:{lineno}:1: empty completion; nothing to train on")
        rows.append({"id": str(row.get("id", lineno)), **{k: row[k] for k in ("prompt", "completion")},
                     "kind": row.get("kind")})  # fmt: skip
    if not rows:
        raise DataError(f"{path}: no training rows (the file is empty)")
    info = {"template": template, "reflection_format": "tagged"}
    manifest = path.parent / "manifest.json"
    if manifest.exists():  # the build records its choices; trust it over our guess when present
        build = json.loads(manifest.read_text())
        cfg = build.get("config", {})
        for key in ("template", "reflection_format"):
            val = build.get(key) or cfg.get(key)
            if val:
                info[key] = val
        if info["template"] != template:
            raise DataError(f"{manifest} says template={info['template']!r} but {path} holds {template} rows")
    return rows, info, path


def split_rows(rows: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded, stratified-by-kind hold-out split (safety samples are few; keep some in each side)."""
    if val_fraction <= 0 or len(rows) < 2:
        return rows, []
    rng = random.Random(seed)
    by_kind: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        by_kind.setdefault(r.get("kind"), []).append(i)
    val: set[int] = set()
    for idx in by_kind.values():
        rng.shuffle(idx)
        val.update(idx[: int(round(len(idx) * val_fraction))])
    if not val:
        val = {rng.randrange(len(rows))}
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


# ----------------------------------------------------------------------------- trainer


def use_bf16(setting: str) -> bool:
    import torch

    from tbr.models import cpu_supports_bf16

    if setting == "auto":
        return torch.cuda.is_available() or cpu_supports_bf16()
    return setting == "true"


def _sft_config(cfg: TrainConfig, ckpt_dir: Path, has_val: bool, bf16: bool) -> Any:
    import torch
    from trl import SFTConfig

    per_epoch = cfg.eval_steps <= 0
    strategy = "epoch" if per_epoch else "steps"
    return SFTConfig(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr if cfg.lr is not None else (2e-4 if cfg.method == "lora" else 2e-5),
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        weight_decay=cfg.weight_decay,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        average_tokens_across_devices=True,  # per-token mean over all ranks' tokens, not a mean of means
        max_length=cfg.max_length,
        packing=cfg.packing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        completion_only_loss=True,  # prompt tokens → -100; checked by tests/test_train.py
        # transformers 5 renamed gradient_checkpointing*; the old names still warn on every run.
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        bf16=bf16,
        fp16=False,
        torch_compile=cfg.compile,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy=strategy if has_val else "no",
        eval_steps=None if per_epoch else cfg.eval_steps,
        save_strategy=strategy,
        save_steps=None if per_epoch else cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_val,  # "select the best-performing checkpoint" (paper §5.1)
        metric_for_best_model="eval_loss" if has_val else None,
        greater_is_better=False if has_val else None,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )


def build_trainer(cfg: TrainConfig, train_rows: list, val_rows: list, bf16: bool, ckpt_dir: Path) -> Any:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from tbr.loss import completion_trainer_class, packing_leak
    from tbr.models import load_tokenizer, resolve

    ref = resolve(cfg.model)
    if ref.adapter:
        raise ModelError(
            f"{cfg.model} is a LoRA adapter; train from its base ({ref.base_name}) or merge it first "
            "(`tbr train ... --merge` saves merged weights)"
        )
    tok = load_tokenizer(ref)
    # fp32 master weights; bf16 (where chosen) is autocast, so optimizer state stays exact.
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    peft_config = None
    if cfg.method == "lora":
        from peft import LoraConfig

        targets: Any = cfg.lora_target_modules
        targets = targets[0] if targets == ["all-linear"] else targets
        peft_config = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
    if cfg.packing:
        # Packed rows must not attend to each other; measured on this model, not assumed (tbr/loss.py).
        leak = packing_leak(model)
        if leak > 1e-3:
            raise ConfigError(
                f"--packing: packed rows attend to each other with this model's attention "
                f"({model.config._attn_implementation}; logits differ by up to {leak:.3g}); drop --packing"
            )
    cols = ["prompt", "completion"]
    train_ds = Dataset.from_list([{k: r[k] for k in cols} for r in train_rows])
    val_ds = Dataset.from_list([{k: r[k] for k in cols} for r in val_rows]) if val_rows else None
    kwargs: dict[str, Any] = {}
    trainer_cls = SFTTrainer
    if cfg.loss == "completion":
        trainer_cls = completion_trainer_class()
        kwargs["tbr_token_metrics"] = cfg.token_metrics
    trainer = trainer_cls(
        model=model,
        args=_sft_config(cfg, ckpt_dir, bool(val_rows), bf16),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tok,
        peft_config=peft_config,
        **kwargs,
    )
    # Trainer's PrinterCallback print()s raw dicts; a redirected stdout holds them in its buffer for
    # many minutes on CPU, so a long run looked stuck. Log a flushed progress line instead.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(log_progress_callback())
    trainer.tbr_ref = ref
    trainer.tbr_raw_train = train_ds
    return trainer


def log_progress_callback() -> Any:
    """A TrainerCallback that logs step/total, losses and time left (at this run's own pace) per logging step.

    Built in a function so that importing tbr.train (the CLI does, for its flags) stays free of transformers.
    """
    from transformers import TrainerCallback

    class LogProgress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # After a resume, global_step starts at the checkpoint's step; the pace counts this run only.
            self.t0, self.step0 = time.time(), state.global_step

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            if not state.is_world_process_zero or not logs:
                return
            step, total = state.global_step, state.max_steps
            shown = [
                f", {k} {logs[k]:.4g}"
                for k in ("loss", "eval_loss", "train_loss", "learning_rate")
                if _is_num(logs.get(k))
            ]
            done = step - self.step0
            left = (total - step) * (time.time() - self.t0) / done if done > 0 else None
            eta = f", {time.strftime('%H:%M:%S', time.gmtime(left))} left" if left is not None else ""
            log.info("step %d/%d (%d%%)%s%s", step, total, 100 * step // max(total, 1), eta, "".join(shown))

    return LogProgress()


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def truncation_stats(trainer: Any, rows: list[dict[str, Any]], max_length: int) -> dict[str, Any]:
    """Tokenize exactly as TRL does but without cutting, and say what max_length will cut.

    TRL keeps the first max_length tokens and drops rows left with no labelled token, without a word.
    A cut that keeps part of the completion also loses the EOS: the model is then never taught to stop
    on that sample.
    """
    args = copy.copy(trainer.args)  # shallow copy; SFTConfig.__post_init__ must not rerun
    args.max_length = None
    args.shuffle_dataset = False
    full = trainer._prepare_dataset(
        trainer.tbr_raw_train, trainer.processing_class, args, False, None, "length check"
    )
    lengths, cut, dropped, partial = [], [], [], []
    for row, ex in zip(rows, full, strict=True):
        n = len(ex["input_ids"])
        lengths.append(n)
        if n <= max_length:
            continue
        cut.append(n - max_length)
        kept = sum(1 for lab in ex["labels"][:max_length] if lab != -100)
        (partial if kept else dropped).append(row["id"])
    stats = {
        "max_length": max_length,
        "n": len(rows),
        "n_truncated": len(cut),
        "tokens_cut_max": max(cut, default=0),
        "tokens_cut_mean": round(sum(cut) / len(cut), 1) if cut else 0.0,
        "n_completion_partly_cut": len(partial),
        "n_dropped_no_completion_left": len(dropped),
        "dropped_ids": dropped[:50],
        "length_max": max(lengths),
        "length_mean": round(sum(lengths) / len(lengths), 1),
    }
    if cut:
        log.warning(
            "max_length=%d cuts %d/%d training samples (by up to %d tokens, mean %.1f); %d keep part of "
            "their completion but lose its EOS; %d lose all of it and are dropped%s",
            max_length, len(cut), len(rows), stats["tokens_cut_max"], stats["tokens_cut_mean"],
            len(partial), len(dropped), f" (ids: {', '.join(dropped[:10])})" if dropped else "",
        )  # fmt: skip
    if len(dropped) == len(rows):
        raise DataError(
            f"max_length={max_length} leaves no completion token in any of the {len(rows)} training "
            f"samples (prompts are up to {max(lengths)} tokens); raise --max-length"
        )
    return stats


# ----------------------------------------------------------------------------- masks


def render_masks(trainer: Any, n: int) -> str:
    """The first n training samples as TRL collates them: masked prompt spans vs trained spans."""
    tok = trainer.processing_class
    ds = trainer.train_dataset
    if trainer.args.packing:
        return "packing is on: samples are concatenated; run --show-masks without --packing to inspect them"
    feats = [{k: ds[i][k] for k in ("input_ids", "labels")} for i in range(min(n, len(ds)))]
    batch = trainer.data_collator(feats)
    out = []
    for i, (ids, labels) in enumerate(
        zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True)
    ):
        real = len(feats[i]["input_ids"])  # the rest is batch padding (labels -100)
        spans, cur, buf = [], None, []
        for tid, lab in zip(ids[:real], labels[:real], strict=True):
            state = lab != -100
            if state != cur and buf:
                spans.append((cur, buf))
                buf = []
            cur = state
            buf.append(tid)
        if buf:
            spans.append((cur, buf))
        n_lab = sum(1 for lab in labels[:real] if lab != -100)
        out.append(f"=== sample {i}: {real} tokens, {n_lab} trained, {real - n_lab} masked (-100) ===")
        for trained, toks in spans:
            tag = "TRAINED" if trained else "MASKED "
            out.append(f"[{tag} {len(toks):4d} tok] {tok.decode(toks)!r}")
        out.append("token-level (id:label):  " + " ".join(
            f"{tok.convert_ids_to_tokens(t)}({'-100' if lab == -100 else lab})"
            for t, lab in zip(ids[:real], labels[:real], strict=True)
        ))  # fmt: skip
    return "\n".join(out)


# ----------------------------------------------------------------------------- outputs


class DtypeProbe:
    """Forward hook on one real Linear layer: the dtype its output actually had during training."""

    def __init__(self, model: Any):
        import torch

        self.seen: set[str] = set()
        layer = next(
            m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
        )
        self.handle = layer.register_forward_hook(lambda _m, _i, o: self.seen.add(str(o.dtype)))

    def close(self) -> list[str]:
        self.handle.remove()
        return sorted(self.seen)


def write_loss_curve(log_history: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    rows = []
    for h in log_history:
        if "loss" in h:
            rows.append({"step": h["step"], "epoch": h.get("epoch"), "split": "train", "loss": h["loss"],
                         "lr": h.get("learning_rate")})  # fmt: skip
        if "eval_loss" in h:
            rows.append({"step": h["step"], "epoch": h.get("epoch"), "split": "val", "loss": h["eval_loss"],
                         "lr": None})  # fmt: skip
    with (out / "loss.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "epoch", "split", "loss", "lr"])
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for split, style in (("train", "-"), ("val", "o--")):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=split)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)
    train = [r["loss"] for r in rows if r["split"] == "train"]
    val = [r["loss"] for r in rows if r["split"] == "val"]
    return {
        "first_train_loss": train[0] if train else None,
        "final_train_loss": train[-1] if train else None,
        "final_val_loss": val[-1] if val else None,
        "best_val_loss": min(val) if val else None,
    }


def save_final(trainer: Any, cfg: TrainConfig, info: dict[str, Any], out: Path) -> None:
    """A checkpoint directory that tbr.models.load, lm-eval and vLLM take as it is."""
    tok = trainer.processing_class
    model = trainer.model
    if cfg.method == "lora" and cfg.merge:
        if not trainer.is_world_process_zero():
            return
        model = model.merge_and_unload()
        model.save_pretrained(str(out))
    else:
        # every rank calls it: under FSDP / ZeRO-3 the weights are gathered from all of them
        trainer.save_model(str(out))  # LoRA: adapter_config.json + adapter_model.safetensors
    if not trainer.is_world_process_zero():
        return
    tok.save_pretrained(str(out))
    # Generation must stop where training taught it to: the tokenizer's EOS ends every target.
    gen = copy.deepcopy(model.generation_config)
    gen.eos_token_id = eos_token_ids(gen.eos_token_id, tok.eos_token_id)
    gen.pad_token_id = tok.pad_token_id
    gen.save_pretrained(str(out))
    base, where = cfg.model, {}
    if Path(base).expanduser().is_dir():
        # relative to the checkpoint, not an absolute machine path (tbr.models resolves it back)
        base = os.path.relpath(Path(base).expanduser().resolve(), out.resolve())
        where = {"base_is_relative": True}
    (out / SIDECAR).write_text(json.dumps({"base": base, **where, **info}, indent=2) + "\n")


def _clear_final(out: Path) -> None:
    """Remove a previous run's final files (not checkpoints/) so a stale adapter never mixes in."""
    for p in out.iterdir() if out.exists() else []:
        if p.name != "checkpoints" and p.is_file():
            p.unlink()


def train(cfg: TrainConfig) -> Path:
    """Fine-tune and return the output checkpoint directory."""
    import datasets
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    datasets.disable_progress_bars()  # one bar per map() call drowns the training log
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t0, cpu0 = time.time(), time.process_time()
    rows, info, path = load_rows(cfg.data)
    train_rows, val_rows = split_rows(rows, cfg.val_fraction, cfg.seed)
    out = Path(cfg.out).expanduser()
    ckpt_dir = out / "checkpoints"
    resume_from = None
    if cfg.resume:
        resume_from = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint-* directory in {ckpt_dir}; run without --resume")
    elif ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*")) and not cfg.show_masks:
        raise ConfigError(f"{ckpt_dir} holds checkpoints of an earlier run; pass --resume or another --out")
    bf16 = use_bf16(cfg.bf16)
    trainer = build_trainer(cfg, train_rows, val_rows, bf16, ckpt_dir)
    if cfg.show_masks:
        print(render_masks(trainer, cfg.show_masks))
        return out
    trunc = truncation_stats(trainer, train_rows, cfg.max_length)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        _clear_final(out)
    probe = DtypeProbe(trainer.model)
    result = trainer.train(resume_from_checkpoint=resume_from)
    seen = probe.close()
    if bf16 and seen and seen != ["torch.bfloat16"]:
        raise TbrError(f"bf16 was requested but the forward pass ran in {seen}; autocast is not active")
    save_final(trainer, cfg, info, out)
    if not trainer.is_world_process_zero():
        return out
    losses = write_loss_curve(trainer.state.log_history, out)
    state = trainer.state
    n_labelled = sum(sum(1 for lab in ex["labels"] if lab != -100) for ex in trainer.train_dataset)
    write_manifest(
        out,
        "train",
        cfg,
        models=[trainer.tbr_ref.manifest()],
        data_files=[path],
        extra={
            "build": info,
            "n_train": len(train_rows),
            "n_val": len(val_rows),
            "n_train_labelled": n_labelled,  # (a key with "token" in it would be scrubbed as a secret)
            "truncation": trunc,
            "losses": {
                **losses,
                "train_loss_mean": result.training_loss,
                "best_metric": state.best_metric,
                "best_checkpoint": state.best_model_checkpoint,
            },
            "steps": state.global_step,
            "resumed_from": resume_from,
            "precision": {
                "bf16_setting": cfg.bf16,
                "bf16_autocast": bf16,
                "forward_dtype_seen": seen,
                "master_weights": "float32",
                "torch_threads": torch.get_num_threads(),
            },
            # which loss actually ran: `completion` falls back to TRL's for models it does not cover
            "loss_path": "completion-head" if getattr(trainer, "tbr_completion_head", False) else "trl",
            "world_size": trainer.args.world_size,
            "trl_args": {
                k: getattr(trainer.args, k)
                for k in (
                    "learning_rate",
                    "lr_scheduler_type",
                    "warmup_steps",
                    "num_train_epochs",
                    "max_steps",
                    "per_device_train_batch_size",
                    "gradient_accumulation_steps",
                    "completion_only_loss",
                    "average_tokens_across_devices",
                    "packing",
                    "padding_free",
                    "max_length",
                    "gradient_checkpointing",
                    "load_best_model_at_end",
                    "metric_for_best_model",
                )
            },  # fmt: skip
            "wall_time_s": round(time.time() - t0, 1),
            "cpu_time_s": round(time.process_time() - cpu0, 1),
            # the process's high-water mark so far (Linux reports KiB): what limits parallel trainings
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
    )
    log.info("saved %s (%d steps, final train loss %s)", out, state.global_step, losses["final_train_loss"])
    return out


def run(cfg: TrainConfig) -> int:
    train(cfg)
    return 0


__all__ = ["TrainConfig", "train", "run", "load_rows", "split_rows", "render_masks", "truncation_stats"]
