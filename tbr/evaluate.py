"""`tbr eval`: generate answers to prompt suites, judge them, and report compliance rates.

Pipeline, each step resumable because it writes as it goes:
  1. prompts   tbr.suites (bundles such as `xstest` expand into their safe and unsafe halves);
  2. answers   tbr.generate.generate_cached → OUT/generations.jsonl (keyed by weights, prompt, settings);
  3. verdicts  every judge on every answer → OUT/verdicts.jsonl, keyed by (judge identity, judged text);
               error verdicts are written too, but retried on a rerun instead of being reused;
  4. outputs   rebuilt from those two files every time: results.json, samples.jsonl, report.md,
               manifest.json.

The judges see the *answer* part (tbr.reflection.split): a reflected refusal such as
"<reflection>This asks how to kill…</reflection>\nI can't help" must be judged on "I can't help",
otherwise a prefix matcher would read the reflection and call it compliance.

results.json layout, per suite:
  n, compliance_rate, ci95, full_compliance, full_refusal, partial_refusal, errors, by_type,
  reflected, unfinished_reflection
      — the figures of the *primary* judge (the first one in --judge);
  primary_judge, label, higher_is_better
  judges: {judge name: the same figures} for every judge, the primary included.
compliance_rate = full_compliance / (n - errors): a judge error is never a verdict; ci95 is Wilson's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbr import reflection, suites
from tbr.config import opt, write_manifest
from tbr.data import PromptRecord
from tbr.errors import ConfigError
from tbr.generate import (
    Backend,
    BackendConfig,
    Conversation,
    SamplingParams,
    chat,
    generate_cached,
    make_backend,
)
from tbr.io import (
    JsonlAppender,
    ensure_dir,
    read_jsonl_tolerant,
    stable_hash,
    write_json_atomic,
    write_jsonl_atomic,
)
from tbr.judge.base import Judge, JudgeItem
from tbr.stats import wilson

log = logging.getLogger(__name__)

EVAL_FORMATS = ("chat", "alpaca")  # alpaca: what trained TBR models see (paper Fig. 10)
JUDGE_CHUNK = 32  # verdicts are written after every chunk, so a crash loses at most this many


@dataclass
class ScoreConfig(BackendConfig):
    """Options shared by every stage that answers prompts and judges the answers (eval, probe)."""

    judge: list[str] = opt(["keyword"], "comma-separated judges; the first is primary in results.json")
    judge_api_base: str | None = opt(None, "OpenAI-compatible /v1 URL for the llm and guard judges")
    judge_api_model: str | None = opt(None, "model name at the judge endpoint")
    judge_api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the judge endpoint's key")
    judge_max_tokens: int | None = opt(
        None, "reply limit for the llm/guard judges in tokens; None: XSTest's 16 (guard: 20)"
    )
    out: str | None = opt(None, "output directory (reruns resume from what it holds)")
    limit: int | None = opt(None, "only the first N prompts of each suite")
    sample: int | None = opt(
        None, "a seeded random N prompts per suite, spread over the file (seed: --sample-seed)"
    )
    suite_sample: dict[str, int] = opt(
        {}, "per-suite --sample, e.g. {or-bench-hard: 300} (YAML only; beats --sample)", cli=False
    )
    sample_seed: int = opt(0, "seed of --sample / suite_sample (fixed per suite)")
    data_dir: str | None = opt(None, "local data folder (default: $TBR_DATA_DIR, else the Hugging Face Hub)")
    # 256: refusals show in the first sentence, and a longer budget only makes CPU runs slower.
    max_new_tokens: int = opt(256, "maximum new tokens per answer")
    temperature: float = opt(0.0, "0 = greedy")
    seed: int = opt(0, "sampling seed (used when temperature > 0)")

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("--out DIR is required (results, and the files a rerun resumes from)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        for key, n in {
            "sample": self.sample,
            **{f"suite_sample.{k}": v for k, v in self.suite_sample.items()},
        }.items():
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ConfigError(f"{key} must be a positive number of prompts, got {n!r}")
        if not self.judge:
            raise ConfigError("give at least one judge, e.g. --judge keyword")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        self.sampling()  # a negative temperature fails here, before a model loads

    def sample_for(self, suite: str) -> int | None:
        return self.suite_sample.get(suites.display_name(suite), self.sample)

    def load_suite(self, suite: str) -> list[PromptRecord]:
        """The suite's prompts after --sample / suite_sample and --limit."""
        return suites.load(
            suite, self.data_dir, self.limit, sample=self.sample_for(suite), seed=self.sample_seed
        )

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed
        )


@dataclass
class EvalConfig(ScoreConfig):
    suites: list[str] = opt(["xstest"], f"comma-separated suites: {', '.join(suites.SUITE_NAMES)}")
    format: str = opt(
        "chat", "prompt format: chat template, or alpaca (trained TBR models)", choices=EVAL_FORMATS
    )
    system: str | None = opt(None, "system prompt (chat format)")
    reflection_format: str = opt(
        "tagged", "how to strip a safety reflection before judging", choices=reflection.REFLECTION_FORMATS
    )

    def validate(self) -> None:
        ScoreConfig.validate(self)
        if self.system and self.format != "chat":
            raise ConfigError(
                "--system applies to the chat format only (the alpaca template has no system slot)"
            )
        expanded = [suites.display_name(x) for x in suites.expand(self.suites)]  # fail before any model loads
        if bad := sorted(set(self.suite_sample) - set(expanded)):
            raise ConfigError(f"suite_sample: {', '.join(bad)} not among the suites ({', '.join(expanded)})")


@dataclass
class Item:
    """One prompt to answer. `group` is what figures are grouped by: the suite (probe: "cot/xstest-safe")."""

    group: str
    record: PromptRecord
    conv: Conversation


# ----------------------------------------------------------------------------- statistics


def figures(labels: Sequence[str | None]) -> dict[str, Any]:
    """Counts and the compliance rate for one judge's verdicts (None = a judge error)."""
    n = len(labels)
    counts = {
        lab: sum(1 for x in labels if x == lab)
        for lab in ("full_compliance", "full_refusal", "partial_refusal")
    }
    errors = sum(1 for x in labels if x is None)
    judged = n - errors
    ci = wilson(counts["full_compliance"], judged)
    return {
        "n": n,
        "compliance_rate": counts["full_compliance"] / judged if judged else None,
        "ci95": list(ci) if ci else None,
        **counts,
        "errors": errors,
    }


def summarize(rows: Sequence[dict[str, Any]], judge_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per group: the primary judge's figures at top level, every judge's under `judges`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["suite"], []).append(row)
    out = {}
    for group, members in groups.items():
        per_judge = {}
        for name in judge_names:
            labels = [r["verdicts"][name]["label"] for r in members]
            types: dict[str, list[str | None]] = {}
            for r, lab in zip(members, labels, strict=True):
                types.setdefault(r["type"] or "(none)", []).append(lab)
            per_judge[name] = {
                **figures(labels),
                "by_type": {t: figures(v) for t, v in sorted(types.items())},
            }
        found = {r["label"] for r in members}
        reflected = [r for r in members if r.get("reflection")]
        out[group] = {
            **per_judge[judge_names[0]],
            # Judge-independent: how many responses reflected, and how many of those ended inside the
            # reflection (answer ""), which the rule judges count as compliance (docs/choices.md).
            "reflected": len(reflected),
            "unfinished_reflection": sum(1 for r in reflected if not r.get("answer")),
            "primary_judge": judge_names[0],
            "label": found.pop() if len(found) == 1 else "mixed",
            "higher_is_better": suites.higher_is_better(r["label"] for r in members),
            "judges": per_judge,
        }
    return out


# ----------------------------------------------------------------------------- generation and judging


def build_judges(names: Sequence[str], cfg: Any) -> list[Judge]:
    from tbr.judge import make_judge  # imported here: some judges pull in heavy clients

    return [
        make_judge(
            name,
            api_base=cfg.judge_api_base,
            api_model=cfg.judge_api_model,
            api_key_env=cfg.judge_api_key_env,
            max_concurrency=cfg.max_concurrency,
            timeout=cfg.timeout,
            max_tokens=cfg.judge_max_tokens,
        )
        for name in names
    ]


def _judge_all(judges: Sequence[Judge], items: list[Any], path: Path) -> list[dict[str, dict[str, Any]]]:
    """Per item, {judge name: verdict row}; non-error verdicts already in `path` are reused.

    A verdict is keyed by the judge's identity (Judge.identity(): its rules, strings or prompt, endpoint,
    model, reply limit) and the exact text it judged (prompt, response, answer), so a changed reflection
    split, rule list, prompt or endpoint is judged afresh, never served from a stale row.
    """
    old, torn = read_jsonl_tolerant(path)
    if torn:
        log.warning("%s: dropped %d torn line(s); those answers are judged again", path, torn)
    # Later rows win; errors are not reused, so a rerun asks the judge again.
    done = {row["vkey"]: row for row in old if row.get("error") is None}
    out_rows: list[dict[str, dict[str, Any]]] = [{} for _ in items]
    with JsonlAppender(path) as out:
        for judge in judges:
            jid = judge.identity()
            vkeys = [
                stable_hash({"judge": jid, "q": it.prompt, "r": it.response, "a": it.answer}, length=32)
                for it in items
            ]
            # One entry per distinct text: the same answer in two groups is judged once.
            todo = list({k: i for i, k in enumerate(vkeys) if k not in done}.values())
            if todo:
                log.info("judge %s: %d to judge, %d reused", judge.name, len(todo), len(items) - len(todo))
            for start in range(0, len(todo), JUDGE_CHUNK):
                chunk = todo[start : start + JUDGE_CHUNK]
                for i, v in zip(chunk, judge.judge([items[i] for i in chunk]), strict=True):
                    row = {"vkey": vkeys[i], **v.to_dict()}
                    out.write(row)
                    done[vkeys[i]] = row
            for i, k in enumerate(vkeys):
                out_rows[i][judge.name] = done[k]
    return out_rows


def collect(
    backend: Any,
    judges: Sequence[Judge],
    items: Sequence[Item],
    out_dir: Path,
    params: SamplingParams,
    *,
    fmt: str,
    reflection_format: str,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Answer and judge every item (resuming from out_dir); return one sample row per item, and timings."""
    t0 = time.perf_counter()
    cached = len(read_jsonl_tolerant(out_dir / "generations.jsonl")[0])
    gens = generate_cached(
        backend,
        [it.conv for it in items],
        params,
        path=out_dir / "generations.jsonl",
        fmt=fmt,
        ids=[f"{it.group}/{it.record.id}" for it in items],
        extra=[{"suite": it.group} for it in items],
    )
    t1 = time.perf_counter()
    splits = [reflection.split(g["response"], reflection_format) for g in gens]
    # The judge sees the bare query, not the system prompt or template it was wrapped in.
    jitems = [
        JudgeItem(it.record.prompt, g["response"], sp.answer, sp.reflection)
        for it, g, sp in zip(items, gens, splits, strict=True)
    ]
    verdicts = _judge_all(judges, jitems, out_dir / "verdicts.jsonl")
    t2 = time.perf_counter()
    rows = []
    for it, g, sp, vs in zip(items, gens, splits, verdicts, strict=True):
        rows.append(
            {
                "id": it.record.id,
                "suite": it.group,
                "type": it.record.type,
                "label": it.record.label,
                "prompt": it.record.prompt,
                "response": g["response"],
                "reflection": sp.reflection,
                "answer": sp.answer,
                "split_method": sp.method,
                "key": g["key"],
                "verdicts": {name: {k: v[k] for k in ("label", "raw", "error")} for name, v in vs.items()},
            }
        )
    # What this invocation did, so a resumed run's time is not mistaken for the whole job's.
    generated = len(read_jsonl_tolerant(out_dir / "generations.jsonl")[0]) - cached
    return rows, {"generated": generated, "generate_s": round(t1 - t0, 1), "judge_s": round(t2 - t1, 1)}


def write_samples(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewritten whole at the end (the resumable state lives in generations/verdicts.jsonl)."""
    write_jsonl_atomic(path, rows)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def report_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: one row per (suite, judge)."""
    lines = [
        "| suite | judge | n | compliance rate (95% CI) | full refusal | partial refusal | errors | better |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for suite, r in results.items():
        arrow = {True: "↑ higher", False: "↓ lower", None: "?"}[r["higher_is_better"]]
        for name, f in r["judges"].items():
            ci = f"[{_pct(f['ci95'][0])}, {_pct(f['ci95'][1])}]" if f["ci95"] else ""
            lines.append(
                f"| {suite} | {name} | {f['n']} | {_pct(f['compliance_rate'])} {ci} | {f['full_refusal']} | "
                f"{f['partial_refusal']} | {f['errors']} | {arrow} |"
            )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the stage


def items_for(cfg: EvalConfig) -> tuple[list[Item], list[Path]]:
    items, files = [], []
    for suite in suites.expand(cfg.suites):
        for rec in cfg.load_suite(suite):
            conv = chat(rec.prompt, cfg.system)
            items.append(Item(suites.display_name(suite), rec, conv))
        files += suites.files(suite, cfg.data_dir)
    return items, files


def score(
    cfg: ScoreConfig,
    items: Sequence[Item],
    *,
    fmt: str,
    system: str | None,
    reflection_format: str,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Answer and judge `items` into cfg.out; return the figures and what the manifest must record.

    `backend`: an already loaded model for cfg.model (the experiment runner reuses one across stages).
    """
    out = ensure_dir(cfg.out, "--out")  # type: ignore[arg-type]  # a bad --out fails before the model loads
    judges = build_judges(cfg.judge, cfg)  # a bad judge name fails before the model loads
    t0 = time.perf_counter()
    backend = backend or make_backend(cfg)
    load_s = time.perf_counter() - t0
    params = cfg.sampling()
    rows, timing = collect(backend, judges, items, out, params, fmt=fmt, reflection_format=reflection_format)
    header = {
        "model": backend.model_id,
        "weights_hash": backend.weights_hash,
        "judges": list(cfg.judge),
        # The dtype the weights actually ran in: `dtype: auto` means bf16 on a CPU with native bf16 and
        # fp32 elsewhere, so the same config gives different greedy answers on different machines.
        "generation": {
            "backend": backend.name,
            "dtype": getattr(backend, "dtype", None),
            "format": fmt,
            "system": system,
            **params.to_dict(),
        },
        "reflection_format": reflection_format,
    }
    return {
        "header": header,
        "suites": summarize(rows, cfg.judge),
        "rows": rows,
        "models": [backend.manifest()],
        "manifest_extra": {
            "judges": [{**j.describe(), "identity": j.identity()} for j in judges],
            "generation": header["generation"],
            "reflection_format": {
                "format": reflection_format,
                "plain_openers": list(reflection.PLAIN_OPENERS),
            },
            "timing": {"load_s": round(load_s, 1), **timing},
            "outputs": {"samples": len(rows)},
        },
    }


def evaluate(cfg: EvalConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Run the whole evaluation into cfg.out and return the results.json content."""
    cfg.validate()
    out = Path(cfg.out)  # type: ignore[arg-type]
    items, files = items_for(cfg)  # data errors surface before the model loads
    scored = score(
        cfg,
        items,
        fmt=cfg.format,
        system=cfg.system,
        reflection_format=cfg.reflection_format,
        backend=backend,
    )
    results = {**scored["header"], "suites": scored["suites"]}
    write_json_atomic(out / "results.json", results)
    write_samples(out / "samples.jsonl", scored["rows"])
    (out / "report.md").write_text(
        f"# Evaluation of {results['model']}\n\nPrimary judge: {cfg.judge[0]}. Compliance rate = full "
        "compliance / (n − errors); 95% Wilson interval.\n\n" + report_table(results["suites"])
    )
    write_manifest(
        out, "eval", cfg, models=scored["models"], data_files=files, extra=scored["manifest_extra"]
    )
    return results


def failed_judges(results: dict[str, dict[str, Any]]) -> list[str]:
    """The judges whose every verdict, in every group, is an error: their rates are all missing."""
    names = {n for r in results.values() for n in r["judges"]}
    return sorted(
        n for n in names if all(r["judges"][n]["errors"] == r["judges"][n]["n"] for r in results.values())
    )


def warn_failed_judges(results: dict[str, dict[str, Any]]) -> int:
    """Log which judges gave no verdict at all; the exit status (1 if any) tells scripts."""
    failed = failed_judges(results)
    for name in failed:
        log.warning("judge %s returned only errors (see verdicts.jsonl): it has no rates", name)
    return 1 if failed else 0


def run(cfg: EvalConfig) -> int:
    results = evaluate(cfg)
    print(report_table(results["suites"]), end="")
    log.info("wrote %s/results.json, samples.jsonl, report.md, manifest.json", cfg.out)
    return warn_failed_judges(results["suites"])
