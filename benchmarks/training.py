"""Training throughput: tbr's SFTTrainer settings against TRL's SFTTrainer with default arguments.

Every configuration trains SmolLM2-135M-Instruct on the same rows (a seeded sample of steps × batch
rows, so each row is seen exactly once) for the same number of optimizer steps, in one invocation.
Each configuration runs in its own subprocess, so its peak memory (max RSS) is its own, and with one
torch thread (--threads), because the machine is shared. Reported per configuration:

  * training tokens/s: real (non-padding) tokens through forward+backward+optimizer, per second of wall
    time and per second of process CPU time, from the start of step 1 to the end of the last step (so
    every configuration is timed on exactly the same tokens); steady-state figures (steps 2..N) too;
  * peak RSS; tokens/s and peak RSS as ratios to the TRL-default run;
  * MFU: model FLOPs / (CPU time × the best matmul GFLOP/s per CPU-second measured in the same
    subprocess, with the same thread count and in the dtype the configuration computed in). Model FLOPs = 6·N per token (full) or 4·N
    (LoRA: frozen weights get no weight gradient) over the non-embedding weights on every real token,
    + the LM head (d·V) on every *labelled* token (the only ones a loss needs; a configuration that
    scores prompt positions too does extra work that MFU does not credit), + causal attention 6·L·d·S
    per token of a length-S sample; padding and the recomputation of gradient checkpointing are not
    counted, as usual for MFU;
  * the dtype a real Linear layer produced during training (tbr.train.DtypeProbe), so "bf16" is checked,
    not assumed, and the per-step losses and token counts (equal counts = equal batches).

  python benchmarks/training.py --steps 2                 # fixture data (smoke)
  python benchmarks/training.py --data runs/local-smollm2/build/internal-g1-KEY --steps 6

TRL's defaults cannot run on a CPU at all (bf16=True raises "Your setup doesn't support bf16/gpu"), so
`trl-default` adds use_cpu=True, which leaves bf16 autocast on. Where bf16 is not native (AVX2-only
CPUs) it is emulated and ~10x slower than fp32, so the default baseline there is `trl-default-fp32`:
TRL's defaults at their best setting on that machine. `tbr-before` is tbr's previous loss path
(`tbr train --loss trl`) and `tbr-now` the current default, on the same length-grouped batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "train_alpaca.jsonl"


def _repo_relative(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


# TRL's default optimisation hyper-parameters (SFTConfig: lr 2e-5, linear decay, no warm-up, seed 42).
# The tbr configurations use them too, so only the settings that decide speed differ and losses compare.
SAME_OPT = {"seed": 42, "lr_scheduler": "linear", "warmup_ratio": 0.0}

# name → (description, SFTConfig extras for a TRL run | TrainConfig overrides for a tbr run)
CONFIGS: dict[str, tuple[str, dict]] = {
    "trl-default": (
        "TRL SFTTrainer, default SFTConfig (+use_cpu): bf16 autocast, grad. ckpt, random batches",
        {"trl": {}},
    ),  # fmt: skip
    "trl-default-fp32": (
        "TRL SFTTrainer defaults but bf16=False: TRL at its best on a CPU without native bf16",
        {"trl": {"bf16": False}},
    ),  # fmt: skip
    "tbr-before": (
        "tbr full FT as before this change: TRL's fused head on every position + entropy/accuracy metrics",
        {"tbr": {"method": "full", "loss": "trl", **SAME_OPT}},
    ),  # fmt: skip
    "tbr-now": (
        "tbr full FT now: LM head only on labelled tokens, CPU-sized vocab tiles, no metrics",
        {"tbr": {"method": "full", **SAME_OPT}},
    ),  # fmt: skip
    "tbr-now-ckpt": (
        "tbr-now with gradient checkpointing (less memory, one more forward per step)",
        {"tbr": {"method": "full", "gradient_checkpointing": True, **SAME_OPT}},
    ),  # fmt: skip
    "tbr-now-compile": (
        "tbr-now with torch.compile (inductor); compile time falls in the first steps",
        {"tbr": {"method": "full", "compile": True, **SAME_OPT}},
    ),  # fmt: skip
    "tbr-now-lora": (
        "tbr-now with tbr's default LoRA (r16, all linear layers, lr 2e-4)",
        {"tbr": {"method": "lora", **SAME_OPT}},
    ),
}


def cpu_flags() -> dict:
    """The flags that decide CPU matmul speed in each dtype (recorded with every timing)."""
    from tbr.models import cpu_flags as tbr_cpu_flags

    flags = tbr_cpu_flags()
    names = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {n: n in flags for n in names}


def default_configs() -> str:
    """TRL's true default where bf16 is native; elsewhere TRL at its best setting (fp32), since emulated
    bf16 is ~10x slower (benchmarks/README.md) and a ratio against it would flatter tbr."""
    import torch

    from tbr.models import cpu_supports_bf16

    trl = "trl-default" if torch.cuda.is_available() or cpu_supports_bf16() else "trl-default-fp32"
    return f"{trl},tbr-before,tbr-now,tbr-now-ckpt"


def matmul_peak(dtype: str, reps: int = 3) -> dict:
    """Best GFLOP/s of the matmuls a transformer runs, at this process's thread count.

    Both `x @ w.T` through F.linear (the forward) and plain `a @ b` (backward-style, untransposed) at a
    few shapes, because emulated bf16 is fast on some of these paths and very slow on others; the best one
    is the ceiling that MFU is measured against.
    """
    import torch
    import torch.nn.functional as F

    dt = getattr(torch, dtype)
    shapes = [(1024, 576, 1536), (1024, 1536, 576), (2048, 576, 576), (1024, 1024, 1024)]  # (m, k, n)
    best = {}
    for m, k, n in shapes:
        x, w, b = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt), torch.randn(k, n, dtype=dt)
        for op, f in (("linear", lambda x=x, w=w: F.linear(x, w)), ("matmul", lambda x=x, b=b: x @ b)):
            f()
            t = min(_timed(f) for _ in range(reps))
            best[f"{op} {m}x{k}x{n}"] = round(2 * m * k * n / t / 1e9, 2)
    return {"gflops": max(best.values()), "by_shape": best}


def _timed(f) -> float:
    # CPU time, like the training figures it is the ceiling for: on a shared machine wall time would
    # count the time the scheduler gave to other jobs and understate the peak (MFU > 100%).
    t = time.process_time()
    for _ in range(3):
        f()
    return (time.process_time() - t) / 3


def bench_rows(data: str, steps: int, batch_size: int) -> list[dict]:
    """A seeded sample of steps × batch_size rows: every configuration sees exactly these, once each."""
    from tbr.train import load_rows

    rows, _, _ = load_rows(data)
    n = steps * batch_size
    if n > len(rows):
        rows = rows * -(-n // len(rows))
    return random.Random(0).sample(rows, n)


def run_one(name: str, data: str, steps: int, batch_size: int, threads: int, profile: bool) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback

    from tbr.train import DtypeProbe

    datasets.disable_progress_bars()
    torch.set_num_threads(threads)
    _, spec = CONFIGS[name]
    tmp = tempfile.mkdtemp(prefix="tbr-bench-")
    rows = bench_rows(data, steps, batch_size)
    marks: list[tuple[float, float]] = []  # (wall, cpu) at the start of step 1, then at the end of every step

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not marks:
                marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), time.process_time()))

    class Profile(TrainerCallback):
        """torch.profiler around step 2 (step 1 carries one-off allocation)."""

        prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            if self.prof is not None and state.global_step == 2:
                self.prof.__exit__(None, None, None)

    if "trl" in spec:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from tbr.models import load_tokenizer, resolve

        ref = resolve("smollm2-135m-instruct")
        args = SFTConfig(output_dir=tmp, use_cpu=True, max_steps=steps, per_device_train_batch_size=batch_size,
                         logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True,
                         **spec["trl"])  # fmt: skip
        ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        # the model as a path, as TRL's own examples do (TRL then loads it in float32)
        trainer = SFTTrainer(
            model=ref.path, args=args, train_dataset=ds, processing_class=load_tokenizer(ref)
        )
        lora = False
    else:
        from tbr.train import TrainConfig, build_trainer, use_bf16

        cfg = TrainConfig(data=data, out=tmp, max_steps=steps, batch_size=batch_size, val_fraction=0.0,
                          logging_steps=1, threads=threads, **spec["tbr"])  # fmt: skip
        cfg.validate()
        trainer = build_trainer(cfg, rows, [], use_bf16(cfg.bf16), Path(tmp) / "checkpoints")
        trainer.args.save_strategy = "no"
        lora = cfg.method == "lora"
    trainer.add_callback(Clock())
    prof_cb = Profile() if profile else None
    if prof_cb:
        trainer.add_callback(prof_cb)
    model = trainer.model
    probe = DtypeProbe(model)
    load0 = os.getloadavg()[0]
    trainer.train()
    seen = probe.close()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the matmul peaks run
    logs = [h for h in trainer.state.log_history if "loss" in h and "num_tokens" in h]
    tokens = [0.0] + [float(h["num_tokens"]) for h in logs]

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    n_all = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)
    n_lora = sum(p.numel() for n, p in base.named_parameters() if "lora_" in n)
    n_emb = c.vocab_size * c.hidden_size
    n_body = n_all - n_emb * (1 if c.tie_word_embeddings else 2)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    n_tok = sum(lengths)
    # labelled next-token targets (the first token of a row is never a target)
    n_lab = sum(sum(1 for lab in x[1:] if lab != -100) for x in trainer.train_dataset["labels"])
    k = 4 if lora else 6
    # The LM head counts only where a loss needs it (labelled positions), for every configuration alike:
    # scoring prompt positions is work, not useful work.
    model_flops = (k * n_body + 6 * n_lora) * n_tok + k * c.hidden_size * c.vocab_size * n_lab \
        + 6 * c.num_hidden_layers * c.hidden_size * sum(s * s for s in lengths)  # fmt: skip
    wall = marks[-1][0] - marks[0][0]
    cpu = marks[-1][1] - marks[0][1]
    assert int(tokens[-1]) == n_tok, (tokens[-1], n_tok)  # every sampled row trained exactly once
    steady_tok = tokens[-1] - tokens[1]
    # The peak in the dtype this configuration computed in (an fp32 run is not held to a bf16 ceiling,
    # nor the reverse), same thread count, same process.
    run_dtype = "bfloat16" if seen == ["torch.bfloat16"] else "float32"
    peaks = {run_dtype: matmul_peak(run_dtype)}
    flops_per_s_cpu = model_flops / cpu
    out = {
        "name": name,
        "description": CONFIGS[name][0],
        "torch_threads": torch.get_num_threads(),
        "steps": trainer.state.global_step,
        "bf16_autocast": bool(trainer.args.bf16),
        "param_dtype": str(next(base.parameters()).dtype),
        "forward_dtype_seen": seen,
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "sampling": str(getattr(trainer.args, "train_sampling_strategy", "random")),
        "learning_rate": trainer.args.learning_rate,
        "losses": [round(float(h["loss"]), 5) for h in logs],
        "tokens_per_step": [int(b - a) for a, b in zip(tokens, tokens[1:], strict=False)],
        "real_tokens": n_tok,
        "labelled_tokens": n_lab,
        "tokens_per_s_wall": round(n_tok / wall, 2),
        "tokens_per_cpu_s": round(n_tok / cpu, 2),
        "steady_tokens_per_s_wall": round(steady_tok / (marks[-1][0] - marks[1][0]), 2),
        "steady_tokens_per_cpu_s": round(steady_tok / (marks[-1][1] - marks[1][1]), 2),
        "step_wall_s": [round(b[0] - a[0], 2) for a, b in zip(marks, marks[1:], strict=False)],
        "step_cpu_s": [round(b[1] - a[1], 2) for a, b in zip(marks, marks[1:], strict=False)],
        "train_wall_s": round(wall, 1),
        "train_cpu_s": round(cpu, 1),
        "cpu_share": round(cpu / wall, 3),  # < 1: the scheduler gave the process less than a core
        "peak_rss_mib": round(peak_rss, 1),
        "model_tflop": round(model_flops / 1e12, 4),
        "compute_dtype": run_dtype,
        "mfu": round(flops_per_s_cpu / (peaks[run_dtype]["gflops"] * 1e9), 4),  # CPU time, own dtype
        "matmul_peak_gflops": {dt: p["gflops"] for dt, p in peaks.items()},
        "matmul_peak_by_shape": {dt: p["by_shape"] for dt, p in peaks.items()},
        # CPU time is the denominator that matches a single-thread peak on a shared machine; wall also given
        "mfu_cpu": {dt: round(flops_per_s_cpu / (p["gflops"] * 1e9), 4) for dt, p in peaks.items()},
        "mfu_wall": {dt: round(model_flops / wall / (p["gflops"] * 1e9), 4) for dt, p in peaks.items()},
        "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }
    if prof_cb and prof_cb.prof is not None:
        out["profile_step2"] = prof_cb.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return out


def _cpu_model() -> str:
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()
    return line.split(":", 1)[1].strip()


def write_results(a: argparse.Namespace, results: list[dict]) -> None:
    # The baseline is TRL's default as it runs best on this machine (see default_configs).
    ref = next((r for r in results if r["name"].startswith("trl-default")), None)
    for r in results:
        if ref:
            for key in ("tokens_per_s_wall", "tokens_per_cpu_s"):
                r[f"{key}_ratio_vs_trl_default"] = round(r[key] / ref[key], 2)
            r["peak_rss_ratio_vs_trl_default"] = round(r["peak_rss_mib"] / ref["peak_rss_mib"], 2)
    by = {r["name"]: r for r in results}
    agreement = {}
    for x, y in (
        ("tbr-now", "tbr-before"),  # the same length-grouped batches: the loss must not change
        ("tbr-now-ckpt", "tbr-now"),
        ("trl-default-fp32", "trl-default"),
    ):
        if x in by and y in by:
            same = by[x]["tokens_per_step"] == by[y]["tokens_per_step"]
            diff = max(abs(p - q) for p, q in zip(by[x]["losses"], by[y]["losses"], strict=True))
            agreement[f"{x} vs {y}"] = {"same_batches": same, "max_abs_loss_diff": round(diff, 5)}
    import torch

    from tbr.models import cpu_supports_bf16

    out = {
        "benchmark": "training",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": a.command,
        "data": _repo_relative(a.data),  # results are committed: no machine-specific paths
        "model": "smollm2-135m-instruct",
        "steps": a.steps,
        "batch_size": a.batch_size,
        "rows": a.steps * a.batch_size,
        "threads": a.threads,
        "versions": {
            m: __import__(m).__version__ for m in ("torch", "transformers", "trl", "peft", "accelerate")
        },
        "baseline": ref["name"] if ref else None,
        "machine": {
            "cpu_flags": cpu_flags(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "native_bf16": cpu_supports_bf16(),
            "cuda": torch.cuda.is_available(),
            "platform": platform.platform(),
            "load_avg_at_end": os.getloadavg(),
        },
        "loss_agreement": agreement,
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(FIXTURE), help="a tbr build dir or train.jsonl")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    ap.add_argument("--configs", default="", help="comma-separated (default: see default_configs)")
    ap.add_argument(
        "--profile", default="", help="comma-separated configs to profile (step 2, torch.profiler)"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        r = run_one(a.one, a.data, a.steps, a.batch_size, a.threads, a.one in a.profile.split(","))
        print("RESULT " + json.dumps(r), flush=True)
        return 0
    a.command = "python benchmarks/training.py " + " ".join(sys.argv[1:])
    a.configs = a.configs or default_configs()
    unknown = [n for n in a.configs.split(",") if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    t = str(a.threads)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t,
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    results = []
    for name in a.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--data", a.data, "--steps", str(a.steps),
               "--batch-size", str(a.batch_size), "--threads", t, "--profile", a.profile]  # fmt: skip
        print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(line[7:])
        results.append(r)
        write_results(a, results)  # after every configuration: a slow or failed later one loses nothing
        if "profile_step2" in r:
            print(r["profile_step2"])
        print(f"  {r['tokens_per_s_wall']} tok/s wall, {r['tokens_per_cpu_s']} tok/CPU-s, peak "
              f"{r['peak_rss_mib']} MiB, MFU {r['mfu']:.1%} of the {r['compute_dtype']} peak "
              f"({r['matmul_peak_gflops'][r['compute_dtype']]} GFLOP/s), losses {r['losses']}",
              flush=True)  # fmt: skip
    for r in results:
        print(f"{r['name']:16} {r['tokens_per_s_wall']:8.1f} tok/s  {r['tokens_per_cpu_s']:8.1f} tok/CPU-s  "
              f"x{r.get('tokens_per_cpu_s_ratio_vs_trl_default', 1):6.2f} (CPU)  "
              f"mem x{r.get('peak_rss_ratio_vs_trl_default', 1):4.2f}  MFU {r['mfu']:6.1%} ({r['compute_dtype']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
