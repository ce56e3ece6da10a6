"""Training throughput: tbr's SFTTrainer settings against TRL's SFTTrainer with default arguments.

Same data, model, batch size and number of steps for every configuration, in one invocation; each
configuration runs in its own subprocess so its peak memory (max RSS) is its own. Reported:

  * training tokens/s: real (non-padding) tokens fed through forward+backward, per second of wall time,
    measured from the end of step 1 to the end of the last step (step 1 carries one-off warm-up);
  * peak RSS, and both as ratios to the TRL-default run;
  * MFU: model FLOPs / (wall time × a matmul peak measured in this same run with the same thread count).
    Model FLOPs per token = 6·N (full) or 4·N (LoRA: no weight gradients) over the non-embedding
    weights N, + the LM head only on labelled (completion) tokens, + causal attention 6·L·d·S̄;
    activation recomputation (gradient checkpointing) is not counted, as usual for MFU.
  * the per-step losses, to show that the faster settings train the same objective.

  python benchmarks/training.py                       # fixture data, 5 steps, batch 8
  python benchmarks/training.py --data /tmp/tbr-build-g1 --steps 10

TRL's defaults cannot run on a CPU at all (bf16=True raises "Your setup doesn't support bf16/gpu"), so
the baseline adds use_cpu=True — which leaves bf16 autocast on, emulated on CPUs without native bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "train_alpaca.jsonl"

# name → (description, tbr TrainConfig overrides or None for TRL defaults, torch threads (0 = default))
CONFIGS: dict[str, tuple[str, dict | None, int]] = {
    "trl-default": ("TRL SFTTrainer, default SFTConfig (+use_cpu)", None, 0),
    "tbr-full": ("tbr full FT: fp32 (auto), no grad. ckpt, length-grouped", {"method": "full"}, 0),
    "tbr-full-1t": ("tbr full FT, 1 torch thread", {"method": "full"}, 1),
    "tbr-lora-1t": ("tbr LoRA r16 all-linear, 1 torch thread", {"method": "lora"}, 1),
}


def matmul_peak(threads: int, dtype: str = "float32", n: int = 1024, reps: int = 8) -> float:
    """Best-of-reps GFLOP/s of an n×n matmul: the ceiling MFU is measured against."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_one(name: str, data: str, steps: int, batch_size: int) -> dict:
    import torch
    from transformers import TrainerCallback

    _, overrides, threads = CONFIGS[name]
    if threads:
        torch.set_num_threads(threads)
    tmp = tempfile.mkdtemp(prefix="tbr-bench-")
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    from tbr.train import TrainConfig, build_trainer, load_rows

    rows, _, _ = load_rows(data)
    rows = rows * max(1, -(-steps * batch_size // len(rows)))  # enough rows for `steps` full batches
    if overrides is None:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from tbr.models import load_tokenizer, resolve

        ref = resolve("smollm2-135m-instruct")
        args = SFTConfig(output_dir=tmp, use_cpu=True, max_steps=steps, per_device_train_batch_size=batch_size,
                         logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True)  # fmt: skip
        ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        trainer = SFTTrainer(
            model=ref.path, args=args, train_dataset=ds, processing_class=load_tokenizer(ref)
        )
        lora = False
    else:
        cfg = TrainConfig(data=data, out=tmp, max_steps=steps, batch_size=batch_size, val_fraction=0.0,
                          logging_steps=1, threads=threads, **overrides)  # fmt: skip
        trainer = build_trainer(cfg, rows, [], False, Path(tmp) / "checkpoints")
        trainer.args.save_strategy = "no"
        lora = cfg.method == "lora"
    trainer.add_callback(Clock())
    model = trainer.model
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h and "num_tokens" in h]
    tokens = [float(h["num_tokens"]) for h in logs]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    n_all = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    n_emb = c.vocab_size * c.hidden_size
    n_body = n_all - n_emb * (1 if c.tie_word_embeddings else 2)
    ds = trainer.train_dataset
    n_tok = sum(len(x) for x in ds["input_ids"])
    n_lab = sum(sum(1 for v in x if v != -100) for x in ds["labels"])
    mean_len = n_tok / len(ds)
    k = 4 if lora else 6
    flops_per_token = k * n_body + k * c.hidden_size * c.vocab_size * (n_lab / n_tok) \
        + 6 * c.num_hidden_layers * c.hidden_size * mean_len  # fmt: skip
    timed_tokens = tokens[-1] - tokens[0]
    timed_s = times[-1] - times[0]
    tps = timed_tokens / timed_s
    peak = matmul_peak(threads)
    return {
        "name": name,
        "description": CONFIGS[name][0],
        "torch_threads": torch.get_num_threads(),
        "steps": trainer.state.global_step,
        "bf16_autocast": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "sampling": str(getattr(trainer.args, "train_sampling_strategy", "random")),
        "losses": [round(float(h["loss"]), 4) for h in logs],
        "tokens_per_s": round(tps, 2),
        "step_s": [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)],
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "model_gflop_per_token": round(flops_per_token / 1e9, 3),
        "matmul_peak_gflops_fp32": round(peak, 1),
        "mfu": round(tps * flops_per_token / (peak * 1e9), 4),
    }


def write_results(a: argparse.Namespace, results: list[dict]) -> None:
    ref = next((r for r in results if r["name"] == "trl-default"), None)
    for r in results:
        if ref:
            r["speedup_vs_trl_default"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)
            r["peak_memory_ratio_vs_trl_default"] = round(r["peak_rss_mib"] / ref["peak_rss_mib"], 2)
    import platform

    import torch

    from tbr.models import cpu_supports_bf16

    out = {
        "benchmark": "training",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": a.data,
        "model": "smollm2-135m-instruct",
        "steps": a.steps,
        "batch_size": a.batch_size,
        "machine": {
            "cpu_count": os.cpu_count(),
            "native_bf16": cpu_supports_bf16(),
            "cuda": torch.cuda.is_available(),
            "platform": platform.platform(),
            "load_avg_at_end": os.getloadavg(),
        },  # fmt: skip
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(FIXTURE))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(run_one(a.one, a.data, a.steps, a.batch_size)), flush=True)
        return 0
    results = []
    for name in a.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--data", a.data, "--steps", str(a.steps),
               "--batch-size", str(a.batch_size)]  # fmt: skip
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(line[7:])
        results.append(r)
        write_results(a, results)  # after every configuration: a slow or failed later one loses nothing
        print(
            f"  {r['tokens_per_s']} tok/s  peak {r['peak_rss_mib']} MiB  MFU {r['mfu']:.1%}  losses {r['losses']}"
        )
    for r in results:
        print(f"{r['name']:14} {r['tokens_per_s']:8.1f} tok/s  x{r.get('speedup_vs_trl_default', 1):5.2f}  "
              f"mem x{r.get('peak_memory_ratio_vs_trl_default', 1):4.2f}  MFU {r['mfu']:6.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
