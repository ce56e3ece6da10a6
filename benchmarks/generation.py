"""Batched generation vs. a one-prompt-at-a-time loop vs. lm-evaluation-harness, in one run.

Same XSTest prompts (chat template), greedy, same max_new_tokens for every method. Methods:
  naive        model.generate one prompt at a time (no batching, no padding), fp32
  hf-sorted    the plain length-sorted batch loop around model.generate (what tbr did before)
  lmeval       lm-evaluation-harness's HF backend, `generate_until`, batch 16
  tbr          tbr.generate.hf.TransformersBackend (our decode loop: finished rows leave the batch)

Generated tokens are counted the same way for every method, from the output text: its tokens plus
the EOS when it stopped before the limit (capped at max_new_tokens). Greedy outputs are compared at
the same dtype. Timings are wall clock *and* process CPU time: on a shared machine the CPU time of a
single-threaded run is the steadier measure (it does not count time spent waiting for a core).

    python benchmarks/generation.py                 # the full run (~15 min on 2 idle cores)
    python benchmarks/generation.py --quick         # smoke test: 8 prompts, 16 tokens
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from tbr.generate.base import SamplingParams, chat
from tbr.generate.hf import TransformersBackend
from tbr.models import cpu_supports_bf16, load

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def xstest_prompts(data_dir: str, n: int) -> list[str]:
    try:
        from tbr.data import load_prompts

        return [r.prompt for r in load_prompts("xstest", data_dir=data_dir, limit=n)]
    except ImportError:  # the data loader is optional for this script
        with open(Path(data_dir) / "xstest" / "xstest_prompts.csv", newline="") as f:
            return [r["prompt"] for r in csv.DictReader(f)][:n]


class Timer:
    def __enter__(self):
        gc.collect()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_naive(model, tok, texts, max_new):
    out = []
    for t in texts:
        enc = tok(t, return_tensors="pt", add_special_tokens=False)
        g = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(g[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def run_hf_sorted(model, tok, texts, max_new, bs):
    order = sorted(
        range(len(texts)), key=lambda i: -len(tok(texts[i], add_special_tokens=False)["input_ids"])
    )
    out = [""] * len(texts)
    for s in range(0, len(order), bs):
        idx = order[s : s + bs]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        g = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        for i, t in zip(
            idx, tok.batch_decode(g[:, enc["input_ids"].shape[1] :], skip_special_tokens=True), strict=True
        ):
            out[i] = t
    return out


def run_lmeval(model, tok, texts, max_new, bs):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, max_length=2048)
    reqs = [
        Instance("generate_until", {}, (t, {"until": [], "max_gen_toks": max_new, "do_sample": False}), i)
        for i, t in enumerate(texts)
    ]
    return lm.generate_until(reqs, disable_tqdm=True)


def run_tbr(model, tok, ref, convs, max_new, bs):
    be = TransformersBackend(ref.name, batch_size=bs, progress=False, loaded=(model, tok, ref))
    return be.generate(convs, SamplingParams(max_new_tokens=max_new))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    # the shared data folder beside the checkout, as the Makefile uses it, unless TBR_DATA_DIR says otherwise
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data-dir", default=os.environ.get("TBR_DATA_DIR", str(shared)))
    ap.add_argument("--n", type=int, default=64, help="XSTest prompts")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--naive-n", type=int, default=8, help="prompts for the slow one-at-a-time loop")
    ap.add_argument("--bf16-n", type=int, default=16, help="prompts for the (emulated here) bf16 runs")
    ap.add_argument("--tbr-batch-sizes", default="16,32,64")
    ap.add_argument("--suffix", default="", help="appended to every prompt (e.g. ask for short answers)")
    ap.add_argument("--methods", default="", help="comma-separated subset of the method names (default all)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="8 prompts, 16 new tokens: a smoke test")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation.json"))
    a = ap.parse_args()
    if a.quick:
        a.n, a.max_new_tokens, a.naive_n, a.bf16_n = 8, 16, 2, 8
        if a.out == ap.get_default("out"):  # a smoke run never replaces the committed results
            a.out = str(Path(tempfile.gettempdir()) / "tbr-generation-quick.json")
    torch.set_num_threads(a.threads)
    prompts = xstest_prompts(a.data_dir, a.n)
    convs = [chat(p + a.suffix) for p in prompts]
    tbr_bs = [int(b) for b in a.tbr_batch_sizes.split(",")]

    models = {}
    for dt in ("fp32", "bf16"):
        models[dt] = load(a.model, dtype=dt, device="cpu")
    for _, t, _ in models.values():
        t.padding_side = "left"  # decoder-only batches are left-padded (lm-eval sets this itself)
    tok, ref = models["fp32"][1], models["fp32"][2]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]

    def count(text: str) -> int:  # same rule for every method: text tokens + EOS, capped
        return min(a.max_new_tokens, len(tok(text.strip(), add_special_tokens=False)["input_ids"]) + 1)

    # (name, dtype, number of prompts, function). The plain sorted loop only runs in fp32: it is there to
    # separate what our decode loop buys from what batching buys.
    m32, m16 = models["fp32"][0], models["bf16"][0]
    n16 = min(a.n, a.bf16_n)
    plan = [
        ("lmeval-b16-fp32", "fp32", a.n, lambda: run_lmeval(m32, tok, texts, a.max_new_tokens, 16)),
        ("hf-sorted-b16-fp32", "fp32", a.n, lambda: run_hf_sorted(m32, tok, texts, a.max_new_tokens, 16)),
    ]
    for bs in tbr_bs:
        plan.append(
            (
                f"tbr-b{bs}-fp32",
                "fp32",
                a.n,
                lambda bs=bs: run_tbr(m32, tok, ref, convs, a.max_new_tokens, bs),
            )
        )
    t16 = models["bf16"][1]
    plan += [
        ("lmeval-b16-bf16", "bf16", n16, lambda: run_lmeval(m16, t16, texts[:n16], a.max_new_tokens, 16)),
        ("tbr-b16-bf16", "bf16", n16, lambda: run_tbr(m16, t16, ref, convs[:n16], a.max_new_tokens, 16)),
        (
            "naive-b1-fp32",
            "fp32",
            a.naive_n,
            lambda: run_naive(m32, tok, texts[: a.naive_n], a.max_new_tokens),
        ),
    ]

    if a.methods:
        plan = [p for p in plan if p[0] in a.methods.split(",")]
    meta = {
        "model": a.model,
        "prompts": a.n,
        "suffix": a.suffix,
        "max_new_tokens": a.max_new_tokens,
        "threads": a.threads,
        "quick": a.quick,
        "cpu": platform.processor() or platform.machine(),
        "native_bf16": cpu_supports_bf16(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)

    def save(summary: dict | None = None) -> None:  # after every method: a crash keeps what was measured
        slim = {k: {**r, "outputs": r["outputs"][:3]} for k, r in results.items()}
        doc = {"meta": meta, "summary": summary, "results": slim}
        Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")

    # Warm-up (first calls allocate and pick kernels), then one timed pass per method.
    run_tbr(m32, tok, ref, convs[:2], 4, 2)
    results = {}
    for name, dt, n, fn in plan:
        with Timer() as tm:
            outs = fn()
        toks = sum(count(o) for o in outs)
        load1 = os.getloadavg()[0]
        results[name] = {
            "dtype": dt,
            "prompts": n,
            "tokens": toks,
            "wall_s": round(tm.wall, 2),
            "cpu_s": round(tm.cpu, 2),
            "tok_per_s": round(toks / tm.wall, 2),
            "tok_per_cpu_s": round(toks / tm.cpu, 2),
            "stopped_early": sum(count(o) < a.max_new_tokens for o in outs),
            "loadavg_1m_after": round(load1, 1),
            "outputs": [o.strip() for o in outs],
        }
        print(
            f"{name:20} n={n:3d} {toks:6d} tok  {tm.wall:7.1f} s wall {toks / tm.wall:7.1f} tok/s   "
            f"{tm.cpu:7.1f} s cpu {toks / tm.cpu:7.1f} tok/cpu-s  load {load1:.1f}",
            flush=True,
        )
        save()

    # Output equality at the same dtype, over the prompts both methods ran.
    def match(x: str, y: str) -> dict | None:
        if x not in results or y not in results:
            return None
        ox, oy = results[x]["outputs"], results[y]["outputs"]
        k = min(len(ox), len(oy))
        return {"pair": [x, y], "prompts": k, "identical": sum(ox[i] == oy[i] for i in range(k))}

    best_tbr = max(
        (f"tbr-b{b}-fp32" for b in tbr_bs if f"tbr-b{b}-fp32" in results),
        key=lambda k: results[k]["tok_per_cpu_s"],
    )
    checks = [
        match(best_tbr, "lmeval-b16-fp32"),
        match(best_tbr, "hf-sorted-b16-fp32"),
        match("tbr-b16-fp32", "naive-b1-fp32"),
        match("tbr-b16-bf16", "lmeval-b16-bf16"),
    ]
    checks += [match(f"tbr-b{b}-fp32", "tbr-b16-fp32") for b in tbr_bs if b != 16]
    checks = [c for c in checks if c]

    def ratio(x: str, y: str, key: str) -> float | None:
        if x not in results or y not in results:
            return None
        return round(results[x][key] / results[y][key], 2)

    best_lmeval = max(
        (k for k in ("lmeval-b16-fp32", "lmeval-b16-bf16") if k in results),
        key=lambda k: results[k]["tok_per_cpu_s"],
        default=None,
    )
    ratios = {
        f"{best_tbr} / {y}": {
            "wall": ratio(best_tbr, y, "tok_per_s"),
            "cpu": ratio(best_tbr, y, "tok_per_cpu_s"),
        }
        for y in ("naive-b1-fp32", "lmeval-b16-fp32", "lmeval-b16-bf16", "hf-sorted-b16-fp32", "tbr-b16-fp32")
    }
    summary = {
        "best_tbr": best_tbr,
        "best_lmeval": best_lmeval,
        "tbr_vs_best_lmeval": ratios.get(f"{best_tbr} / {best_lmeval}"),
        "ratios": ratios,
        "equality": checks,
    }
    for k, v in summary.items():
        print(k, json.dumps(v))
    save(summary)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
