"""The learned refusal judge: design alternatives under leave-one-model-out, and judging speed on CPU.

On the three XSTest models' human-labelled completions ($TBR_DATA_DIR/xstest-completions), every
variant is scored per held-out model by a classifier fitted on the other two (C picked by
leave-one-file-out log loss inside those two), next to the two rule judges. Variants:
  rules             logistic regression on the keyword + xstest-strmatch verdicts only
  answer            embedding of the answer
  head              embedding of the answer's first 64 tokens
  answer+rules      ... plus the two rule verdicts (head+rules likewise)
  answer+head+rules tbr's default (tbr.judge.learned.DEFAULT_FEATURES)
  answer+prompt     embeddings of answer and prompt, concatenated (answer+prompt+rules likewise)
  joint             one embedding of "prompt\\n\\nanswer"
  vote              majority of keyword, xstest-strmatch and answer+head+rules (an ensemble)
  cross-encoder     (--cross) MiniLM's top two layers fine-tuned on "prompt [SEP] answer" + rules
                    (tbr.judge.cross), one fine-tuning per held-out model: about 5 CPU minutes more
Calibration of p(refusal) on the held-out rows: Brier score and 10-bin expected calibration error.

Speed: `LearnedJudge.judge` (tokenise, encode answer and prompt, rule features, head) on the first N
distinct answers, with 1 and 2 torch threads, after one warm-up batch.

    OMP_NUM_THREADS=1 python benchmarks/judge.py                 # writes benchmarks/results/judge.json
    OMP_NUM_THREADS=1 python benchmarks/judge.py --cross         # ... with the cross-encoder row
    OMP_NUM_THREADS=1 python benchmarks/judge.py --cross --cross-variants 4:3,0:3,0:5   # more layers/epochs
    OMP_NUM_THREADS=1 python benchmarks/judge.py --cross --cross-seeds 0,1,2       # ... and a seed ensemble
    python benchmarks/judge.py --speed-only --n 256
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tbr.embed import load_encoder
from tbr.judge.agreement import score
from tbr.judge.base import LABELS, Verdict
from tbr.judge.keyword import KeywordJudge
from tbr.judge.learned import featurize, verdicts
from tbr.judge.strmatch import StrmatchJudge
from tbr.judge.train import CS, default_completions, fit_head, load_groups
from tbr.models import cpu_flags

VARIANTS = {
    "rules": ("rules",),
    "answer": ("answer",),
    "head": ("head",),
    "answer+rules": ("answer", "rules"),
    "head+rules": ("head", "rules"),
    "answer+head+rules": ("answer", "head", "rules"),
    "answer+prompt": ("answer", "prompt"),
    "answer+prompt+rules": ("answer", "prompt", "rules"),
}
DEFAULT = "answer+head+rules"  # tbr.judge.learned.DEFAULT_FEATURES


def _calibration(p_refusal: np.ndarray, is_refusal: np.ndarray) -> dict[str, float]:
    brier = float(np.mean((p_refusal - is_refusal) ** 2))
    bins = np.minimum((p_refusal * 10).astype(int), 9)
    ece = sum(
        abs(p_refusal[bins == b].mean() - is_refusal[bins == b].mean()) * (bins == b).mean()
        for b in range(10)
        if (bins == b).any()
    )
    return {"brier": round(brier, 4), "ece": round(float(ece), 4)}


def lomo(groups, x: np.ndarray, name: str):
    y = np.array([LABELS.index(lab) for g in groups for lab in g.labels])
    gid = np.array([g.name for g in groups for _ in g.items])
    items = [it for g in groups for it in g.items]
    held, probs, cs = {}, np.zeros((len(items), 3)), {}
    for g in groups:
        train = gid != g.name
        head, info = fit_head(x[train], y[train], list(gid[train]), CS)
        p = head.proba(x[~train])
        probs[~train] = p
        held[g.name] = verdicts(name, [it for it, t in zip(items, ~train, strict=True) if t], p)
        cs[g.name] = info["C"]
    return held, probs, cs


def vote(a: list[Verdict], b: list[Verdict], c: list[Verdict]) -> list[Verdict]:
    out = []
    for va, vb, vc in zip(a, b, c, strict=True):
        refusals = [v for v in (va, vb, vc) if v.label != "full_compliance"]
        if len(refusals) >= 2:
            # Partial only if the learned judge (the only three-class voter) says so.
            lab = vc.label if vc.label != "full_compliance" else "full_refusal"
        else:
            lab = "full_compliance"
        out.append(Verdict("vote", lab, ""))
    return out


def _proba(vs: list[Verdict]) -> np.ndarray:
    """(n, 3) probabilities back from verdicts' raw JSON; an empty answer counts as sure compliance."""
    return np.array(
        [
            [1.0, 0.0, 0.0] if v.raw == "empty answer" else [json.loads(v.raw)[lab] for lab in LABELS]
            for v in vs
        ]
    )


def agreement(args: argparse.Namespace) -> dict:
    groups = load_groups(default_completions(None), "tagged")
    enc = load_encoder()
    items = [it for g in groups for it in g.items]
    joint_items = [
        type(it)(it.prompt, it.response, f"{it.prompt}\n\n{it.answer}", it.reflection) for it in items
    ]
    cache = Path(args.emb_cache) if args.emb_cache else None
    t0 = time.perf_counter()
    z = dict(np.load(cache)) if cache and cache.is_file() else {}  # embeddings of an earlier run
    for f in ("answer", "head", "prompt"):
        if f not in z:
            z[f] = featurize(items, enc, (f,))
    if "joint" not in z:
        z["joint"] = featurize(joint_items, enc, ("answer",))
    if cache:
        np.savez(cache, **z)
    base, joint = {f: z[f] for f in ("answer", "head", "prompt")}, z["joint"]
    base["rules"] = featurize(items, enc, ("rules",))
    encode_s = time.perf_counter() - t0
    human = {g.name: g.labels for g in groups}
    results: dict[str, dict] = {g.name: {} for g in groups}
    calib, chosen_c = {}, {}
    rule_judges = {"keyword": KeywordJudge(), "xstest-strmatch": StrmatchJudge()}
    rule_held = {n: {g.name: j.judge(g.items) for g in groups} for n, j in rule_judges.items()}
    for n in rule_judges:
        for g in groups:
            results[g.name][n] = score(human[g.name], rule_held[n][g.name])
    is_ref = np.array([lab != "full_compliance" for g in groups for lab in g.labels], dtype=float)
    held_by = {}
    for name, feats in [*VARIANTS.items(), ("joint", ("answer",))]:
        x = joint if name == "joint" else np.concatenate([base[f] for f in feats], axis=1)
        held, probs, cs = lomo(groups, x, name)
        held_by[name] = held
        chosen_c[name] = cs
        calib[name] = _calibration(1 - probs[:, 0], is_ref)
        for g in groups:
            results[g.name][name] = score(human[g.name], held[g.name])
        print(
            f"{name}: "
            + ", ".join(f"{g.name} {results[g.name][name]['binary_agreement']:.3f}" for g in groups)
        )
    if args.cross:
        from tbr.judge.cross import CrossConfig
        from tbr.judge.train import lomo_cross_verdicts

        def add(name: str, held: dict[str, list[Verdict]]) -> None:
            probs = 1 - np.concatenate([_proba(held[g.name])[:, 0] for g in groups])  # p(refusal)
            calib[name] = _calibration(probs, is_ref)
            for g in groups:
                results[g.name][name] = score(human[g.name], held[g.name])
            print(
                f"{name}: "
                + ", ".join(f"{g.name} {results[g.name][name]['binary_agreement']:.3f}" for g in groups)
            )

        seeds = [int(s) for s in args.cross_seeds.split(",")]
        for spec in args.cross_variants.split(","):
            frozen, epochs = (int(x) for x in spec.split(":"))
            default = CrossConfig(frozen=frozen, epochs=epochs) == CrossConfig()
            base = "cross-encoder" if default else f"cross-encoder-f{frozen}-e{epochs}"
            by_seed = []
            for seed in seeds:
                cfg = CrossConfig(frozen=frozen, epochs=epochs, seed=seed)
                name = base if seed == 0 else f"{base}-s{seed}"
                held, folds = lomo_cross_verdicts(groups, enc, cfg, name=name)
                chosen_c[name] = {g: f["cpu_s"] for g, f in folds.items()}  # CPU s per fold
                add(name, held)
                by_seed.append(held)
            if len(seeds) > 1:
                # The seed ensemble: the mean of the seeds' three-class probabilities, decided as one
                # judge decides (tbr.judge.learned.verdicts), so the decision rule is unchanged.
                name = f"{base}-mean-of-{len(seeds)}-seeds"
                add(name, {
                    g.name: verdicts(name, g.items, np.mean([_proba(h[g.name]) for h in by_seed], axis=0))
                    for g in groups
                })  # fmt: skip
    for g in groups:
        v = vote(
            rule_held["keyword"][g.name],
            rule_held["xstest-strmatch"][g.name],
            held_by[DEFAULT][g.name],
        )
        results[g.name]["vote"] = score(human[g.name], v)
    return {
        "rows": len(items),
        "encode_all_s": round(encode_s, 1),
        "torch_threads": torch.get_num_threads(),
        "results": {
            g: {
                n: {
                    k: r[k]
                    for k in ("n", "binary_agreement", "binary_kappa", "accuracy", "kappa", "confusion")
                }
                for n, r in per.items()
            }
            for g, per in results.items()
        },
        "calibration": calib,
        "chosen_C": chosen_c,
    }


def speed(n: int, judge_dir: str | None) -> dict:
    from tbr.judge import make_judge

    groups = load_groups(default_completions(None), "tagged")
    seen, items = set(), []
    for it in (it for g in groups for it in g.items):
        if it.answer not in seen:
            seen.add(it.answer)
            items.append(it)
    items = items[:n]
    judge = make_judge(f"learned:{judge_dir}" if judge_dir else "learned")
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        judge.judge(items[:32])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        judge.judge(items)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[f"{threads}_thread"] = {
            "n": len(items),
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "per_s": round(len(items) / wall, 1),
        }
        print(
            f"{threads} thread(s): {len(items)} judgments in {wall:.1f} s = {len(items) / wall:.1f}/s (CPU {cpu:.1f} s)"
        )
    chars = [len(it.answer) for it in items]
    out["answer_chars"] = {"mean": round(float(np.mean(chars))), "max": int(max(chars))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="answers to judge for the speed test")
    ap.add_argument("--judge-dir", help="judge directory for the speed test (default: the shipped judge)")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--cross", action="store_true", help="add the cross-encoder row (~5 CPU min more)")
    ap.add_argument(
        "--cross-variants",
        default="4:3",
        help="with --cross: FROZEN:EPOCHS per row, comma-separated (4:3 is tbr's default: the lower 4 of "
        "MiniLM's 6 layers frozen, 3 epochs; 0:4 fine-tunes all six layers for 4 epochs)",
    )
    ap.add_argument(
        "--cross-seeds",
        default="0",
        help="with --cross: training seeds per variant, comma-separated; with more than one, the mean of "
        "their probabilities is scored as one more row (the seed ensemble)",
    )
    ap.add_argument(
        "--emb-cache", help="an .npz to keep the embeddings in between runs (variant experiments)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "judge.json"))
    args = ap.parse_args()
    flags = cpu_flags()
    res: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
            "torch": torch.__version__,
        }
    }
    if not args.speed_only:
        res["agreement"] = agreement(args)
    res["speed"] = speed(args.n, args.judge_dir)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
