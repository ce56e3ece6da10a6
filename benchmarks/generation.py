"""tbr's generation vs. lm-evaluation-harness vs. a one-prompt-at-a-time loop, in one run.

Same XSTest prompts (chat template), greedy, same max_new_tokens for every method, one torch thread by
default. Every method runs in the dtype this CPU computes natively (bf16 where it has avx512_bf16 or
AMX, else fp32) and in the other one (fp32 always in full; bf16 where it is emulated on --bf16-n
prompts only, since emulation is slow). The method names end in the dtype:
  lmeval-bN-DT       lm-evaluation-harness's HF backend, `generate_until`, batch N, on its own copy
                     of the model with transformers' default attention (SDPA). Batch sizes are tried in
                     order until a bigger one stops paying, per dtype, so its best setting is in the table
  tbr-bN-DT          tbr.generate.hf.TransformersBackend (own decode loop: a finished row takes the next
                     prompt or leaves the batch, KV cache allocated once per batch, decode attention of
                     tbr.generate.attention in bf16), the same batch-size search
  tbr-dyncache-bN-DT the same loop with transformers' DynamicCache, at tbr's best batch
  tbr-norefill-bN-DT the same loop without continuous batching (each batch of N drains before the next
                     starts), at tbr's best batch, when there are more prompts than N
  tbr-sdpaattn-bN-bf16    the same loop with SDPA attention instead of tbr's decode attention
  tbr-decodeattn-bN-bf16  the other way round on CPUs with AMX, where auto keeps SDPA (faster there)
  tbr-plainlinear-bN-DT  the same loop with plain F.linear instead of weights packed once per batch
                     (tbr.generate.packed: what auto does on CPUs with AMX, through oneDNN
                     in bf16 and MKL's packed SGEMM in fp32)
  tbr-packedlinear-bN-bf16  the other way round, on CPUs with native bf16 but no AMX, where auto
                     keeps F.linear: the packed weights it measured slower there
  naive-b1-DT        model.generate one prompt at a time (no batching, no padding), on --naive-n prompts
  hf-sorted-b16-fp32 the plain length-sorted loop around model.generate (only with --methods)
  tbr-compiled-bN-fp32  tbr's loop with each layer's MLP compiled by torch.compile (inductor, frozen
                     weights), at batch N, on a third fp32 copy (only with --methods; issue 14)
  llamacpp-bN-Q      tbr.generate.llamacpp.LlamaCppBackend: llama.cpp in-process on a GGUF that
                     tbr.generate.to_gguf wrote from the same checkpoint, weights in Q (q8_0, f32),
                     the same batch-size search; compared with lm-eval's best in the native dtype and
                     with tbr's transformers backend on keyword verdicts (needs llama-cpp-python)

Generated tokens are counted the same way for every method, from the output text: its tokens plus
the EOS when it stopped before the limit (capped at max_new_tokens). Greedy outputs are compared at
the same dtype. Timings are wall clock *and* process CPU time: on a shared machine the CPU time of a
single-threaded run is the steadier measure (it does not count time spent waiting for a core).

    python benchmarks/generation.py                 # the full run (make bench); prints the table
    python benchmarks/generation.py --quick         # smoke test: 8 prompts, 16 tokens
    python benchmarks/generation.py --table benchmarks/results/generation.json   # table of a past run
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from tbr.generate import packed
from tbr.generate.base import SamplingParams, chat
from tbr.generate.hf import TransformersBackend
from tbr.models import cpu_flags, cpu_supports_bf16, load

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


def run_tbr(
    model, tok, ref, convs, max_new, bs, kv_cache="preallocated", attention="auto", linear="auto", refill=4
):
    be = TransformersBackend(
        ref.name,
        batch_size=bs,
        progress=False,
        loaded=(model, tok, ref),
        kv_cache=kv_cache,
        attention=attention,
        linear=linear,
        refill=refill,
    )
    return be.generate(convs, SamplingParams(max_new_tokens=max_new))


def run_llamacpp(be, convs, max_new):
    return be.generate(convs, SamplingParams(max_new_tokens=max_new))


def cpu_info() -> dict:
    """The CPU model and the vector/matrix flags that decide which dtype is native."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: the model name from platform is all we have
        pass
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))
    return {"cpu": name, "cpu_flags": flags, "native_bf16": cpu_supports_bf16()}


def table(doc: dict) -> str:
    """The results as a markdown table, each row against lm-eval's best setting in the same dtype."""
    res, summ = doc["results"], doc.get("summary") or {}
    lines = [
        "| method | dtype | prompts | tok / CPU-s | tok/s wall | ÷ best lm-eval, same dtype (llamacpp: native) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in res.items():
        base = summ.get(f"best_lmeval_{r['dtype']}") or summ.get(f"best_lmeval_{summ.get('native_dtype')}")
        same_n = base in res and res[base]["prompts"] == r["prompts"]
        rel = f"{r['tok_per_cpu_s'] / res[base]['tok_per_cpu_s']:.2f}×" if same_n else "–"
        emu = " (emulated)" if r["dtype"] == "bf16" and not doc["meta"].get("native_bf16") else ""
        lines.append(
            f"| {name} | {r['dtype']}{emu} | {r['prompts']} | {r['tok_per_cpu_s']:.1f} | {r['tok_per_s']:.1f} | {rel} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    # the shared data folder beside the checkout, as the Makefile uses it, unless TBR_DATA_DIR says otherwise
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data-dir", default=os.environ.get("TBR_DATA_DIR", str(shared)))
    ap.add_argument("--n", type=int, default=128, help="XSTest prompts")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--naive-n", type=int, default=4, help="prompts for the slow one-at-a-time loop")
    ap.add_argument("--bf16-n", type=int, default=8, help="prompts for bf16 where it is emulated (slow)")
    ap.add_argument(
        "--lmeval-batch-sizes",
        default="16,64,128",
        help="tried in order; stops at the first that is not faster than the one before",
    )
    ap.add_argument("--tbr-batch-sizes", default="64,128")
    ap.add_argument(
        "--llamacpp-types", default="q8_0,f32", help="GGUF weight types for llama.cpp ('' = none)"
    )
    ap.add_argument("--suffix", default="", help="appended to every prompt (e.g. ask for short answers)")
    ap.add_argument("--methods", default="", help="comma-separated subset of the method names (default all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is comparable)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per method; the fastest counts (a shared machine's noise)",
    )
    ap.add_argument("--quick", action="store_true", help="8 prompts, 16 new tokens: a smoke test")
    ap.add_argument("--table", metavar="JSON", help="only print the table of an earlier run's results file")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation.json"))
    a = ap.parse_args()
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    if a.quick:
        a.n, a.max_new_tokens, a.naive_n, a.bf16_n = 8, 16, 2, 4
        a.lmeval_batch_sizes, a.tbr_batch_sizes = "4,8", "8"
        if a.out == ap.get_default("out"):  # a smoke run never replaces the committed results
            a.out = str(Path(tempfile.gettempdir()) / "tbr-generation-quick.json")
    torch.set_num_threads(a.threads)
    prompts = xstest_prompts(a.data_dir, a.n)
    convs = [chat(p + a.suffix) for p in prompts]

    # A batch above the prompt count is the same run as one of exactly n: keep only the first such size.
    def sizes(spec: str) -> list[int]:
        bs = [int(b) for b in spec.split(",")]
        return [b for i, b in enumerate(bs) if i == 0 or bs[i - 1] < a.n]

    lm_bs, tbr_bs = sizes(a.lmeval_batch_sizes), sizes(a.tbr_batch_sizes)
    wanted = set(a.methods.split(",")) if a.methods else None

    # The dtype this CPU runs natively first; bf16 where it is emulated runs on --bf16-n prompts only.
    native = "bf16" if cpu_supports_bf16() else "fp32"
    dtypes = ["bf16", "fp32"] if native == "bf16" else ["fp32", "bf16"]
    # Two copies per dtype: tbr's backend switches its copy to tbr's decode attention in bf16, and
    # lm-eval and the naive loop must run the model as transformers ships it.
    tbr_models = {dt: load(a.model, dtype=dt, device="cpu") for dt in dtypes}
    lm_models = {dt: load(a.model, dtype=dt, device="cpu") for dt in dtypes}
    for _, t, _ in [*tbr_models.values(), *lm_models.values()]:
        t.padding_side = "left"  # decoder-only batches are left-padded (lm-eval sets this itself)
    tok = lm_models["fp32"][1]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
    n16 = min(a.n, a.bf16_n)

    def count(text: str) -> int:  # same rule for every method: text tokens + EOS, capped
        return min(a.max_new_tokens, len(tok(text.strip(), add_special_tokens=False)["input_ids"]) + 1)

    meta = {
        "model": a.model,
        "prompts": a.n,
        "suffix": a.suffix,
        "max_new_tokens": a.max_new_tokens,
        "threads": a.threads,
        "repeats": a.repeats,
        "quick": a.quick,
        **cpu_info(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}

    def save(summary: dict | None = None) -> None:  # after every method: a crash keeps what was measured
        slim = {k: {**r, "outputs": r["outputs"][:3]} for k, r in results.items()}
        doc = {"meta": meta, "summary": summary, "results": slim}
        Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")

    def measure(name: str, dt: str, n: int, fn) -> float | None:
        if wanted is not None and name not in wanted:
            return None
        runs = []
        for _ in range(a.repeats):  # the fastest of N back-to-back runs, the same for every method
            with Timer() as t:
                outs = fn()
            runs.append((t, outs))
        tm, outs = min(runs, key=lambda r: r[0].cpu)
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
            **({"cpu_s_runs": [round(t.cpu, 2) for t, _ in runs]} if a.repeats > 1 else {}),
            # greedy decoding is deterministic: every repeat must give the same text
            **({"repeats_identical": all(o == outs for _, o in runs)} if a.repeats > 1 else {}),
            "outputs": [o.strip() for o in outs],
        }
        print(
            f"{name:24} n={n:3d} {toks:6d} tok  {tm.wall:7.1f} s wall {toks / tm.wall:7.1f} tok/s   "
            f"{tm.cpu:7.1f} s cpu {toks / tm.cpu:7.1f} tok/cpu-s  load {load1:.1f}",
            flush=True,
        )
        save()
        return toks / tm.cpu

    # Warm-up (first calls allocate and pick kernels), then one timed pass per method.
    for dt in dtypes:
        run_tbr(*tbr_models[dt], convs[:2], 4, 2)

    def search(prefix: str, dt: str, batch_sizes: list[int], n: int, fn) -> None:
        """Bigger batches until one stops paying: the best of them is this method's setting here."""
        prev = 0.0
        for bs in batch_sizes:
            got = measure(f"{prefix}-b{bs}-{dt}", dt, n, lambda bs=bs: fn(bs))
            if got is not None and got <= prev:
                break
            prev = max(prev, got or 0.0)

    def best(prefix: str, dt: str) -> str | None:
        keys = [k for k in results if k.startswith(f"{prefix}-b") and k.endswith(f"-{dt}")]
        return max(keys, key=lambda k: results[k]["tok_per_cpu_s"], default=None)

    def bs_of(name: str | None, default: int) -> int:
        return int(name.rsplit("-", 2)[1][1:]) if name else default

    # Native dtype first. Each dtype gets its own batch-size search for lm-eval and tbr, so every row
    # is that method's best setting in that dtype; lm-eval runs on its own copy of the model with
    # transformers' default attention (SDPA), exactly as `lm_eval --model hf` would.
    def bench_dtype(dt: str) -> None:
        n = a.n if dt == native or dt == "fp32" else n16
        lm_model, lm_tok, _ = lm_models[dt]
        lm_texts = texts[:n]
        search(
            "lmeval", dt, lm_bs, n, lambda bs: run_lmeval(lm_model, lm_tok, lm_texts, a.max_new_tokens, bs)
        )
        search("tbr", dt, tbr_bs, n, lambda bs: run_tbr(*tbr_models[dt], convs[:n], a.max_new_tokens, bs))
        b0 = bs_of(best("tbr", dt), tbr_bs[0])
        # What each of tbr's own parts buys, at tbr's best batch: transformers' DynamicCache instead of the
        # preallocated one; SDPA instead of tbr's decode attention (bf16 only: fp32 always uses SDPA).
        measure(
            f"tbr-dyncache-b{b0}-{dt}",
            dt,
            n,
            lambda: run_tbr(*tbr_models[dt], convs[:n], a.max_new_tokens, b0, kv_cache="dynamic"),
        )
        if n > b0:  # more prompts than rows: each batch drains on its own instead of taking the next prompts
            measure(
                f"tbr-norefill-b{b0}-{dt}",
                dt,
                n,
                lambda: run_tbr(*tbr_models[dt], convs[:n], a.max_new_tokens, b0, refill=1),
            )
        if dt == "bf16":  # the other attention than auto's choice (SDPA on AMX, else tbr's two matmuls)
            auto = TransformersBackend(a.model, progress=False, loaded=tbr_models[dt]).attention
            other_attn = "decode" if auto == "sdpa" else "sdpa"
            measure(
                f"tbr-{other_attn}attn-b{b0}-{dt}",
                dt,
                n,
                lambda: run_tbr(*tbr_models[dt], convs[:n], a.max_new_tokens, b0, attention=other_attn),
            )
        # The other linear-layer choice than the one auto made here: plain where auto packs (AMX),
        # packed where auto stays plain but the packed path exists (avx512_bf16 without AMX).
        other = "plain" if packed.usable(tbr_models[dt][0]) else "packed"
        if other == "plain" or packed.kind(tbr_models[dt][0]) is not None:
            measure(
                f"tbr-{other}linear-b{b0}-{dt}",
                dt,
                n,
                lambda: run_tbr(*tbr_models[dt], convs[:n], a.max_new_tokens, b0, linear=other),
            )
        measure(
            f"naive-b1-{dt}",
            dt,
            a.naive_n,
            lambda: run_naive(lm_model, lm_tok, texts[: a.naive_n], a.max_new_tokens),
        )

    for dt in dtypes:
        bench_dtype(dt)
    if wanted and "hf-sorted-b16-fp32" in wanted:  # the old plain loop: only when asked for by name
        measure(
            "hf-sorted-b16-fp32",
            "fp32",
            a.n,
            lambda: run_hf_sorted(lm_models["fp32"][0], tok, texts, a.max_new_tokens, 16),
        )

    # torch.compile of the decode step (issue 14), only when asked for by name: tbr's loop on a third
    # fp32 copy whose MLPs are compiled by inductor (weights frozen, shapes dynamic after the first
    # recompile). Whole-layer and whole-model compiles recompile on every cache length (the
    # preallocated cache's fill level is a Python int); the model-level one compiled for 11 minutes on
    # one core and then ran no faster. The compile (a warm-up on 2 prompts, its compile workers'
    # CPU time included) is recorded beside the timed run, which starts warm.
    for name in sorted(k for k in wanted or () if k.startswith("tbr-compiled-b") and k.endswith("-fp32")):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        cm, ctok, cref = load(a.model, dtype="fp32", device="cpu")
        for layer in cm.model.layers:
            layer.mlp = torch.compile(layer.mlp)
        bs = bs_of(name, tbr_bs[0])
        t0, c0 = time.perf_counter(), os.times()
        run_tbr(cm, ctok, cref, convs[:2], 4, 2)
        c1 = os.times()
        compile_cpu = sum(c1[:4]) - sum(c0[:4])
        measure(
            name,
            "fp32",
            a.n,
            lambda cm=cm, ctok=ctok, cref=cref, bs=bs: run_tbr(cm, ctok, cref, convs, a.max_new_tokens, bs),
        )
        if name in results:
            results[name]["compile_wall_s"] = round(time.perf_counter() - t0 - results[name]["wall_s"], 2)
            results[name]["compile_cpu_s"] = round(compile_cpu, 2)
            save()

    # llama.cpp on GGUFs written from the same checkpoint (its threads = --threads).
    qtypes = [q for q in a.llamacpp_types.split(",") if q]
    if qtypes and importlib.util.find_spec("llama_cpp") is None:
        print("llama-cpp-python is not installed: no llamacpp rows (pip install 'tbr[server]')")
        qtypes = []
    for q in qtypes:
        from tbr.generate.llamacpp import LlamaCppBackend

        be = LlamaCppBackend(a.model, qtype=q, batch_size=2, threads=a.threads, progress=False)
        run_llamacpp(be, convs[:2], 4)  # warm-up; the GGUF is written once, before any timing

        def at(bs: int, be=be) -> list[str]:
            be.batch_size = bs
            return run_llamacpp(be, convs, a.max_new_tokens)

        search("llamacpp", q, tbr_bs, a.n, at)

    # Output equality at the same dtype, over the prompts both methods ran.
    from tbr.judge.keyword import KeywordJudge

    kw = KeywordJudge()

    def match(x: str | None, y: str | None) -> dict | None:
        if x not in results or y not in results:
            return None
        ox, oy = results[x]["outputs"], results[y]["outputs"]
        k = min(len(ox), len(oy))
        # bf16 greedy text diverges after any near-tie, so also count equal refusal verdicts (the
        # paper's keyword judge), which is what an evaluation reads off the text
        same_verdict = sum((kw.match(ox[i]) is None) == (kw.match(oy[i]) is None) for i in range(k))
        return {
            "pair": [x, y],
            "prompts": k,
            "identical": sum(ox[i] == oy[i] for i in range(k)),
            "same_keyword_verdict": same_verdict,
        }

    def ratio(x: str | None, y: str | None, key: str) -> float | None:
        if x not in results or y not in results:
            return None
        return round(results[x][key] / results[y][key], 2)

    summary: dict = {"native_dtype": native}
    checks = []
    for dt in dtypes:
        bt, bl = best("tbr", dt), best("lmeval", dt)
        summary[f"best_tbr_{dt}"], summary[f"best_lmeval_{dt}"] = bt, bl
        summary[f"tbr_vs_best_lmeval_{dt}"] = {
            "cpu": ratio(bt, bl, "tok_per_cpu_s"),
            "wall": ratio(bt, bl, "tok_per_s"),
        }
        summary[f"ratios_cpu_{dt}"] = {
            f"{bt} / {k}": ratio(bt, k, "tok_per_cpu_s") for k in results if k != bt and k.endswith(f"-{dt}")
        }
        checks += [match(bt, k) for k in results if k != bt and k.endswith(f"-{dt}")]
    # Across dtypes: how often bf16 gives the fp32 answer (tbr at each dtype's best batch).
    checks.append(match(best("tbr", "bf16"), best("tbr", "fp32")))
    # llama.cpp against lm-eval's best and tbr's transformers backend in the native dtype and fp32.
    for q in qtypes:
        bq = best("llamacpp", q)
        summary[f"best_llamacpp_{q}"] = bq
        summary[f"llamacpp_{q}_vs_best_lmeval_{native}"] = {
            "cpu": ratio(bq, best("lmeval", native), "tok_per_cpu_s"),
            "wall": ratio(bq, best("lmeval", native), "tok_per_s"),
        }
        checks += [match(bq, best("tbr", dt)) for dt in dtypes] + [match(bq, best("lmeval", native))]
    summary["equality"] = [c for c in checks if c]
    for k, v in summary.items():
        print(k, json.dumps(v))
    save(summary)
    print(table(json.loads(Path(a.out).read_text())))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
