"""`tbr run EXPERIMENT.yaml`: the whole experiment, in order, resumable.

    reflect (per source) → [contrast] → build (per γ) → train (per γ and source) → eval → general → report

Every stage writes into its own directory, named by a hash of its inputs (its config plus the keys of
the stages it reads), and marks completion with DONE.json. A rerun skips finished stages; a stage
killed half-way resumes through its own write-ahead files (generation, verdicts, trainer checkpoints),
so no sample is lost or produced twice. This module is the only one that knows the order of stages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tbr.config import build, load_yaml, opt, write_manifest
from tbr.errors import ConfigError
from tbr.io import stable_hash, write_json_atomic
from tbr.isolate import run_isolated

log = logging.getLogger(__name__)

SOURCES = ("internal", "external")


@dataclass
class RunConfig:
    experiment: str = opt("", "experiment YAML (see configs/)", positional=True, nargs="?")
    out: str | None = opt(None, "run directory (default: the experiment's `out`, else runs/<name>)")
    plan: bool = opt(False, "print the stage plan and exit without running anything")
    report_only: bool = opt(
        False, "write runs.json and the report from the stages finished so far; run nothing"
    )
    only: list[str] = opt(
        [], "run only these variants (labels as in --plan: base, wo-g0.0, external-g1, …) and what they read"
    )


@dataclass
class Experiment:
    """The experiment file. Stage sections hold overrides for that stage's config dataclass."""

    name: str = "experiment"
    description: str = ""
    out: str | None = None
    model: str = "smollm2-135m-instruct"
    data_dir: str | None = None
    seed: int = 0
    gammas: list[float] = field(default_factory=lambda: [0.0, 1.0])
    sources: list[str] = field(default_factory=lambda: ["internal"])
    evaluate_base: bool = True  # also evaluate the model before fine-tuning
    base_format: str = "chat"  # the untuned model is asked through its own chat template
    # External reflection endpoint: {api_base, api_model} or {serve: <built-in name>} to start llama.cpp,
    # or {model: <name>} to run a local model with the reflect section's backend (a batched transformers
    # loop beats a one-request-at-a-time llama.cpp server on CPU). Any other key overrides the `reflect`
    # section for the external source only (e.g. audit: keep, prompt: figure8).
    external: dict[str, Any] = field(default_factory=dict)
    reflect: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    general: dict[str, Any] | None = field(default_factory=dict)  # null skips general ability
    report: dict[str, Any] = field(default_factory=dict)
    # Other run directories whose finished stages with the same key (same inputs) are copied in
    # rather than run again, e.g. a γ sweep reusing the γ=0 and γ=1 models of an earlier run.
    reuse: list[str] = field(default_factory=list)
    # Train every γ>0 variant once per reflection format ([tagged, prose]: the tag against the paper's
    # untagged prose). The first keeps the plain label (internal-g1); the others add "-<format>".
    # Empty: one arm, in the build section's reflection_format.
    reflection_formats: list[str] = field(default_factory=list)
    # Train every arm once per seed (each redraws the reflected prompts, the safety sample, the γ
    # selection and the training order). Empty: one arm at `seed`. The first seed keeps the plain
    # labels and keys (internal-g1), the others end in -s<seed> (internal-g1-s1); the report
    # aggregates each arm across its seeds.
    seeds: list[int] = field(default_factory=list)
    # Extra w/o (γ=0) arms trained on this many safety samples, drawn straight from the safety
    # source: the safety / over-refusal trade-off curve that TBR is compared against (wo-n110, …).
    safety_ns: list[int] = field(default_factory=list)
    # γ values whose eval asks every prompt of every suite (eval.suite_sample and eval.sample dropped),
    # e.g. [0, 1] in a sweep that samples OR-Bench for the middle γ only.
    full_eval_gammas: list[float] = field(default_factory=list)
    # The contrast arm ("reflect, then answer", docs/choices.md §10): {n: 100, source: internal} adds
    # <source>-g1-contrast per seed, γ=1 plus n general rows with sensitive wording whose target is a
    # benign reflection and their ordinary answer (tbr.contrast). Other keys override ContrastConfig.
    # null (the default): no contrast arm, and no stage of the experiment changes.
    contrast: dict[str, Any] | None = None
    # A finished training's checkpoints/ (optimizer state and the last few steps' weights, ~3x the
    # model) only serve the resume of an unfinished one; they are deleted once its DONE.json is
    # written (measured: 1.6 of the 2.1 GB per SmolLM2 training). true keeps them.
    keep_checkpoints: bool = False
    # Memory (GB) that the stages of this run directory may hold at once, across all its `tbr run`
    # workers (default: 90% of the machine's). A stage whose kind's measured peak (max_rss_mb in the
    # DONE.json of finished stages of that kind) would not fit beside the peaks of the stages other
    # workers are running waits (memory_wait): two Qwen trainings at 18.5 GB each on a 24 GB machine.
    # A kind with no finished stage yet runs one stage at a time until its peak is measured.
    memory_gb: float | None = None

    def validate(self) -> None:
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ConfigError(f"memory_gb must be a positive number of GB, got {self.memory_gb}")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ConfigError(f"unknown reflection source(s) {bad}; use {', '.join(SOURCES)}")
        if any(not 0.0 <= g <= 1.0 for g in self.gammas):
            raise ConfigError(f"gammas must lie in [0, 1], got {self.gammas}")
        if any(g > 0 for g in self.gammas) and not self.sources:
            raise ConfigError("a gamma above 0 needs at least one reflection source")
        ext = self.external
        if "external" in self.sources and not (ext.get("api_base") or ext.get("serve") or ext.get("model")):
            raise ConfigError(
                "the external source needs external.api_base (+ api_model), external.serve, "
                "or external.model (a local model, run by the reflect section's backend)"
            )
        from tbr.reflection import REFLECTION_FORMATS

        if bad := [f for f in self.reflection_formats if f not in REFLECTION_FORMATS]:
            raise ConfigError(f"reflection_formats: unknown {bad}; use {', '.join(REFLECTION_FORMATS)}")
        if len(set(self.reflection_formats)) != len(self.reflection_formats):
            raise ConfigError(f"reflection_formats: {self.reflection_formats} repeats a format")
        own = self.build.get("reflection_format")
        if self.reflection_formats and own is not None and own != self.reflection_formats[0]:
            raise ConfigError(
                f"build.reflection_format={own!r} must be the first of reflection_formats "
                f"{self.reflection_formats} (the arm that keeps the plain labels), or be left out"
            )

        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} repeats a seed")
        if self.seeds and self.seed not in (0, self.seeds[0]):
            raise ConfigError(
                f"seed={self.seed} and seeds={self.seeds}: set one (seeds[0] plays seed's part)"
            )
        if bad := [n for n in self.safety_ns if isinstance(n, bool) or not isinstance(n, int) or n <= 0]:
            raise ConfigError(f"safety_ns: {bad} are not positive counts of safety samples")
        if len(set(self.safety_ns)) != len(self.safety_ns):
            raise ConfigError(f"safety_ns: {self.safety_ns} repeats a count")
        if bad := [g for g in self.full_eval_gammas if g not in self.gammas]:
            raise ConfigError(f"full_eval_gammas: {bad} not among gammas {self.gammas}")
        if self.contrast is not None:
            src = self.contrast.get("source", "internal")
            if src not in self.sources:
                raise ConfigError(
                    f"contrast.source={src!r} must be one of sources {self.sources}: the contrast arm is that "
                    "source's γ=1 arm plus the contrast rows"
                )

    def seed_list(self) -> list[int]:
        return list(self.seeds) or [self.seed]

    def formats(self) -> list[str]:
        return self.reflection_formats or [str(self.build.get("reflection_format", "tagged"))]


@dataclass
class Stage:
    kind: str  # reflect | contrast | build | train | eval | general
    label: str  # human-readable, e.g. "internal-g1.0"
    values: dict[str, Any]  # the stage config minus its output directory
    deps: list[Stage] = field(default_factory=list)
    variant: dict[str, Any] | None = None  # for eval/general: which model variant this measures
    # Hashes of inputs that are not config values (the category keyword asset, user suite files): an
    # edited file is a new input. Left out of the key when empty, so other stages keep their keys.
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        body: dict[str, Any] = {"kind": self.kind, "values": self.values, "deps": [d.key for d in self.deps]}
        if self.inputs:
            body["inputs"] = self.inputs
        return stable_hash(body, 10)

    @property
    def dirname(self) -> str:
        return f"{self.kind}/{self.label}-{self.key}"


ENDPOINT_KEYS = ("api_base", "api_model", "api_key_env", "serve")


def _external_model(ext: dict[str, Any]) -> dict[str, Any]:
    """The stage values that say which model an external stage asks: its endpoint (always through the
    openai backend), or else the local `external.model`."""
    if ext.get("api_base") or ext.get("serve"):
        values = {k: ext[k] for k in ("api_base", "api_key_env") if k in ext}
        return {
            **values,
            "api_model": ext.get("api_model") or ext.get("serve"),
            "serve": ext.get("serve"),
            "backend": "openai",
        }
    return {"model": ext["model"]}


def coarse_to_fine(values: list[float]) -> list[float]:
    """The ends first, then the middle of each gap: a sweep stopped early still spans its range.

    [0, .2, .4, .6, .8, 1] → [0, 1, .4, .2, .6, .8]"""
    xs = sorted(set(values))
    if len(xs) <= 2:
        return xs
    order, gaps = [xs[0], xs[-1]], [(0, len(xs) - 1)]
    while gaps:
        lo, hi = gaps.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(xs[mid])
            gaps += [(lo, mid), (mid, hi)]
    return order


def plan(exp: Experiment) -> list[Stage]:
    """Expand the experiment into an ordered list of stages.

    Order: one model at a time (base; then per seed, per γ, coarse to fine, and source: [reflect] →
    build → train → eval → general; then the safety-share arms), each reflection stage just before the
    first build that reads it, so a run stopped early already holds complete rows for the models it
    reached, and a multi-seed run stopped early holds whole seeds."""
    seeds = exp.seed_list()
    many = len(seeds) > 1
    data = {"data_dir": exp.data_dir} if exp.data_dir else {}
    stages: list[Stage] = []
    # One reflection pool per (source, seed): the seed draws which prompts are reflected on, so every
    # seed has its own sample (docs/choices.md, Seeds).
    reflections: dict[tuple[str, int], Stage] = {}

    def reflect_stage(src: str, seed: int) -> Stage:
        if (src, seed) not in reflections:
            values = {**exp.reflect, "model": exp.model, "seed": seed, **data, "source": src}
            if src == "external":
                ext = exp.external
                values.update({k: v for k, v in ext.items() if k not in ENDPOINT_KEYS})
                values.update(_external_model(ext))
            label = src + (f"-s{seed}" if seed != seeds[0] else "")
            reflections[src, seed] = Stage("reflect", label, values, inputs=category_inputs(values))
        return reflections[src, seed]

    contrasts: dict[int, Stage] = {}

    def contrast_stage(seed: int) -> Stage:
        """One contrast pool per seed (the seed draws which general rows), like the reflections."""
        if seed not in contrasts:
            from tbr.contrast import asset_hashes

            cx = dict(exp.contrast or {})
            src = cx.pop("source", "internal")
            values = {**cx, "model": exp.model, "seed": seed, **data, "source": src}
            # the build's own general pool (rows are matched back by id) and the experiment's eval suites
            values["general_source"] = exp.build.get("general_source", _default("build", "general_source"))
            values["suites"] = exp.eval.get("suites") or _default("eval", "suites")
            if src == "external":
                values.update(_external_model(exp.external))
            inputs = {**asset_hashes(), **suites.file_hashes(str(x) for x in values["suites"])}
            label = src + (f"-s{seed}" if seed != seeds[0] else "")
            contrasts[seed] = Stage("contrast", label, values, inputs=inputs)
        return contrasts[seed]

    from tbr import suites

    suite_inputs = suites.file_hashes(str(x) for x in exp.eval.get("suites") or [])
    formats = exp.formats()
    default_format = formats[0]

    def measure(
        label: str, variant: dict[str, Any], train: Stage | None, refl_format: str, seed: int, full: bool
    ) -> None:
        deps = [train] if train else []
        # Fine-tuned models are asked in the template they were trained on; the base model in its own.
        fmt = exp.build.get("template", "alpaca") if train else exp.base_format
        ev = {"format": fmt, **exp.eval, **data, "seed": seed}
        if full:  # every prompt: the sampled suites' seeded subsample is a subset of these
            ev = {k: v for k, v in ev.items() if k not in ("suite_sample", "sample")}
        if train and refl_format != exp.eval.get("reflection_format", "tagged"):
            ev["reflection_format"] = refl_format  # the judges split the arm's own format
        stages.append(
            Stage("eval", label, ev if train else {**ev, "model": exp.model}, deps, variant, suite_inputs)
        )
        if exp.general is not None:
            gv = {**exp.general, **data}
            if train and refl_format != "tagged" and "think_end" not in exp.general:
                gv["think_end"] = think_end_for(refl_format)
            stages.append(Stage("general", label, gv if train else {**gv, "model": exp.model}, deps, variant))

    def arm(
        label: str, bvalues: dict[str, Any], refl: Stage | None, seed: int, contrast: Stage | None = None
    ) -> Stage:
        """build → train for one arm, after the reflection (and contrast) stage it reads if not planned yet."""
        # Only a build without reflections categorises (the reflect stage's key covers the rest).
        reads = [d for d in (refl, contrast) if d]  # the reflect stage first: check_plan reads deps[0]
        b = Stage("build", label, bvalues, reads, inputs={} if refl else category_inputs(bvalues))
        t = Stage("train", label, {**exp.train, "model": exp.model, "seed": seed}, [b])
        stages.extend(d for d in reads if d not in stages)
        stages.extend([b, t])
        return t

    def variant_of(name: str, seed: int, **kw: Any) -> dict[str, Any]:
        # Several seeds: the name is unique per seed (the sample browser keys on it) and `arm` groups them.
        extra = {"arm": name, "seed": seed} if many else {}
        return {"name": f"{name} · s{seed}" if many else name, **kw, **extra}

    if exp.evaluate_base:
        # The untuned model reads no seeded input (greedy decoding, fixed suite samples): one stage.
        base = {"name": "base", "source": "base", "gamma": None}
        measure("base", base, None, default_format, seeds[0], False)
    for seed in seeds:
        # The first seed keeps the plain labels, so its stage directories are those of a one-seed run:
        # adding seeds to a finished run (or `reuse`-ing one) trains only the new seeds.
        tag = f"-s{seed}" if seed != seeds[0] else ""
        for gamma in coarse_to_fine(exp.gammas):
            full = gamma in exp.full_eval_gammas
            # γ=0 carries no reflection, so it is one baseline shared by every source ("w/o" in Table 3).
            for src in ["none"] if gamma == 0 else exp.sources:
                # γ=0 has no reflection to format: one baseline, whatever the formats.
                for k, refl_format in enumerate(formats[:1] if gamma == 0 else formats):
                    bvalues = {**exp.build, **data, "seed": seed, "gamma": gamma}
                    if refl_format != exp.build.get("reflection_format", "tagged"):
                        bvalues["reflection_format"] = refl_format
                    # γ=0 reads the first source's reflection file too (and ignores the reflections), so
                    # the baseline is trained on the very same safety prompts as the TBR models ("the same
                    # dataset where responses to the harmful inputs exclude rationale", §5).
                    has_refl = any(g > 0 for g in exp.gammas) and exp.sources
                    refl = reflect_stage(exp.sources[0] if src == "none" else src, seed) if has_refl else None
                    fmt_tag = f"-{refl_format}" if k else ""
                    label = ("wo-g0.0" if gamma == 0 else f"{src}-g{gamma:g}{fmt_tag}") + tag
                    t = arm(label, bvalues, refl, seed)
                    name = "w/o" if gamma == 0 else f"{src} γ={gamma:g}" + (f" ({refl_format})" if k else "")
                    variant = variant_of(name, seed, source=src, gamma=gamma)
                    if gamma > 0 and len(formats) > 1:
                        variant["reflection_format"] = refl_format
                    measure(label, variant, t, refl_format, seed, full)
        if exp.contrast is not None:
            # γ=1 of the contrast source in the first format, plus the contrast rows: the build equals
            # <source>-g1's but for them, so the paired difference isolates "reflect, then answer".
            src = exp.contrast.get("source", "internal")
            bvalues = {**exp.build, **data, "seed": seed, "gamma": 1.0}
            if default_format != exp.build.get("reflection_format", "tagged"):
                bvalues["reflection_format"] = default_format
            label = f"{src}-g1-contrast{tag}"
            t = arm(label, bvalues, reflect_stage(src, seed), seed, contrast_stage(seed))
            variant = variant_of(f"{src} γ=1 (contrast)", seed, source=src, gamma=1.0, sweep="contrast")
            measure(label, variant, t, default_format, seed, 1.0 in exp.full_eval_gammas)
        # The trade-off curve: w/o models with less or more refusal data. They need no reflections, so
        # they draw straight from the safety source (a count above the reflection pool is fine).
        for n in exp.safety_ns:
            bvalues = {**exp.build, **data, "seed": seed, "gamma": 0.0, "safety_n": n}
            for key in ("safety_source", "categorizer"):  # the pool the reflect stage draws from
                if key not in exp.build and key in exp.reflect:
                    bvalues[key] = exp.reflect[key]
            label = f"wo-n{n}{tag}"
            t = arm(label, bvalues, None, seed)
            measure(label, variant_of(f"w/o n={n}", seed, source="none", gamma=0.0, safety_n=n, sweep="safety_n"), t,
                    default_format, seed, False)  # fmt: skip
    return stages


def _default(section: str, key: str) -> Any:
    """A stage config field's default (what the stage uses when the experiment leaves it out)."""
    import dataclasses

    if section == "build":
        from tbr.build import BuildConfig as cls
    else:
        from tbr.evaluate import EvalConfig as cls
    f = {x.name: x for x in dataclasses.fields(cls)}[key]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def think_end_for(refl_format: str) -> str:
    """lm-eval's think_end_token for a trained format: the tag, or (prose) off.

    lm-eval scores the text after the token and only when it is present; the prose connector
    ("Therefore,") also ends ordinary reasoning, so prose arms are scored on the whole answer."""
    from tbr.reflection import CLOSE_TAG

    return CLOSE_TAG if refl_format == "tagged" else ""


def category_inputs(values: dict[str, Any]) -> dict[str, str]:
    """The categoriser's asset hash for a stage that assigns harm categories (reflect; build at γ=0)."""
    from tbr.categories import asset_hashes

    return asset_hashes(str(values.get("categorizer", "keyword")))


# ----------------------------------------------------------------------------- checking a plan

# Which experiment section a stage kind's values come from, for error messages.
SECTIONS = {
    "reflect": "reflect", "contrast": "contrast", "build": "build", "train": "train", "eval": "eval",
    "general": "general",
}  # fmt: skip
# With `audit: drop`, flagged reflections are removed: 15% of SmolLM2-135M's own (docs/results.md), and
# external splits that miss the refusal are dropped even with `keep`. The build needs its safety_n
# after that, so the reflect stage must ask for this much more.
AUDIT_DROP_MARGIN = 0.15
PLACEHOLDER = "<from the stage it reads>"


def stage_config(stage: Stage) -> Any:
    """The stage's config dataclass built from its values (what _execute builds, minus real paths)."""
    values = {**stage.values, "out": PLACEHOLDER}
    if stage.kind == "reflect":
        from tbr.reflect import ReflectConfig as cls

        if values.pop("serve", None) and not values.get("api_base"):
            values["api_base"] = "http://127.0.0.1:0/v1"  # started by tbr run
    elif stage.kind == "contrast":
        from tbr.contrast import ContrastConfig as cls

        if values.pop("serve", None) and not values.get("api_base"):
            values["api_base"] = "http://127.0.0.1:0/v1"  # started by tbr run
    elif stage.kind == "build":
        from tbr.build import BuildConfig as cls

        for d in stage.deps:
            values["reflections" if d.kind == "reflect" else d.kind] = PLACEHOLDER
    elif stage.kind == "train":
        from tbr.train import TrainConfig as cls

        values["data"] = PLACEHOLDER
    elif stage.kind == "eval":
        from tbr.evaluate import EvalConfig as cls
    elif stage.kind == "general":
        from tbr.general import GeneralConfig as cls
    else:
        raise ConfigError(f"unknown stage kind {stage.kind}")
    if stage.deps and stage.kind in ("eval", "general"):
        values["model"] = PLACEHOLDER
    return build(cls, values, source=f"stage {stage.label}")


def check_plan(exp: Experiment, stages: list[Stage], source: str = "experiment") -> list[str]:
    """Build every stage's config and check sample counts before anything runs; return notes.

    A typo in a stage section (`train: {lrr: 1}`) or an infeasible count then fails in seconds, naming
    the section and key, instead of hours later when that stage starts."""
    from tbr.report import check_judges

    configs: dict[str, Any] = {}
    for s in stages:
        try:
            configs[s.dirname] = stage_config(s)
            if s.kind == "eval":
                check_judges(configs[s.dirname].judge)  # judges are built only when the eval starts
        except ConfigError as e:
            external = s.kind == "reflect" and s.values.get("source") == "external"
            section = "external" if external else SECTIONS[s.kind]
            why = str(e).removeprefix(f"stage {s.label}: ")
            raise ConfigError(f"{source}: section `{section}` (stage {s.label}): {why}") from None
    from tbr.report import ReportConfig

    try:
        build(ReportConfig, {"run_dirs": ["<run dir>"], **exp.report}, source="report")
    except ConfigError as e:
        raise ConfigError(f"{source}: section `report`: {e}") from None
    notes: list[str] = []
    for s in stages:
        if s.kind != "build" or not s.deps or s.deps[0].kind != "reflect":
            continue
        b, r = configs[s.dirname], configs[s.deps[0].dirname]
        if b.safety_n == -1:
            continue
        section = "external" if s.deps[0].values.get("source") == "external" else "reflect"
        if r.n < b.safety_n:
            raise ConfigError(
                f"{source}: build.safety_n={b.safety_n} but `{section}` reflects on n={r.n} prompts; "
                f"raise {section}.n to at least {b.safety_n} (more with audit: drop) or lower build.safety_n"
            )
        need = math.ceil(b.safety_n / (1 - AUDIT_DROP_MARGIN))
        if r.audit == "drop" and r.n < need:
            raise ConfigError(
                f"{source}: build.safety_n={b.safety_n} needs that many reflections after the audit, but "
                f"{section}.n={r.n} with audit: drop leaves fewer whenever more than {r.n - b.safety_n} are "
                f"flagged (SmolLM2-135M: ~15%); set {section}.n >= {need}, audit: keep, or a lower safety_n"
            )
    notes += pool_notes(exp, stages, configs, source)
    notes += contrast_notes(stages, configs, source)
    return notes


def contrast_notes(stages: list[Stage], configs: dict[str, Any], source: str) -> list[str]:
    """Is contrast.n feasible: enough general rows with sensitive wording once eval prompts are dropped?"""
    from tbr.contrast import candidates
    from tbr.data import resolve_data_dir
    from tbr.data.safety import BUILTIN_SOURCES
    from tbr.suites import DEMO_SUITES

    BUILTIN = {*BUILTIN_SOURCES, "demo", *DEMO_SUITES}  # read from the package, no data directory needed

    notes: list[str] = []
    counted: dict[tuple[str, tuple[str, ...], str | None], Any] = {}  # one count per pool
    for s in stages:
        if s.kind != "contrast":
            continue
        c = configs[s.dirname]
        names = [*str(c.general_source).split(","), *c.suites]
        local = all(x.strip() in BUILTIN or x.strip().endswith((".json", ".jsonl", ".csv")) for x in names)
        if not local and resolve_data_dir(c.data_dir) is None:
            notes.append(f"{s.label}: contrast pool not checked (no data directory)")
            continue
        pool = (str(c.general_source), tuple(c.suites), c.data_dir)
        if pool not in counted:
            counted[pool] = candidates(c.general_source, list(c.suites), c.data_dir)
        cands = counted[pool]
        if c.n > len(cands.rows):
            raise ConfigError(
                f"{source}: section `contrast` n={c.n} (stage contrast/{s.label}) but {c.general_source} has only "
                f"{len(cands.rows)} rows with sensitive wording that are no eval prompt ({cands.matched} matched "
                f"tbr/assets/contrast_words.json, {len(cands.eval_overlap)} dropped as prompts of {c.suites}); "
                f"lower contrast.n or use a larger general_source"
            )
        notes.append(
            f"contrast/{s.label}: {len(cands.rows)} sensitive-wording general rows for n={c.n} "
            f"({len(cands.eval_overlap)} eval prompts dropped)"
            + ("; audit: drop keeps fewer" if c.audit == "drop" else "")
        )
    return notes


def pool_notes(exp: Experiment, stages: list[Stage], configs: dict[str, Any], source: str) -> list[str]:
    """Per-category feasibility of the samples drawn straight from the safety data (reflect stages, and
    builds without reflections such as the safety_ns arms), where the safety data is local."""
    from tbr.categories import CATEGORIES, feasibility
    from tbr.data import resolve_data_dir

    notes = []
    counted: dict[tuple[str, str | None, str], dict[str, int]] = {}  # one count per pool: --plan stays fast
    for s in stages:
        if s.kind == "reflect":
            c = configs[s.dirname]
            n, section = c.n, "reflect"
        elif s.kind == "build" and not s.deps and configs[s.dirname].safety_n > 0:
            c = configs[s.dirname]
            n, section = c.safety_n, "build"
        else:
            continue
        local = c.safety_source in ("demo-safety",) or str(c.safety_source).endswith((".json", ".jsonl"))
        if not local and resolve_data_dir(c.data_dir) is None:
            notes.append(f"{s.label}: {c.safety_source} comes from the Hub; category counts not checked")
            continue
        if c.categorizer != "keyword":
            notes.append(f"{s.label}: categorizer {c.categorizer}: category counts are checked when it runs")
            continue
        pool = (str(c.safety_source), c.data_dir, c.categorizer)
        if pool not in counted:
            counted[pool] = feasibility(c.safety_source, c.data_dir, c.categorizer)
        counts = counted[pool]
        drawn = sum(counts.get(k, 0) for k in CATEGORIES)
        if drawn < n:
            what = "n" if section == "reflect" else "safety_n"
            raise ConfigError(
                f"{source}: `{section}` {what}={n} (stage {s.label}) but {c.safety_source} has only {drawn} "
                f"categorised prompts ({', '.join(f'{k}: {counts.get(k, 0)}' for k in CATEGORIES)}); "
                f"lower {what}"
            )
        share = n // len(CATEGORIES)
        thin = [k for k in CATEGORIES if counts.get(k, 0) < share]
        notes.append(
            f"{s.label}: {drawn} categorised prompts for n={n} ({share} per category)"
            + (f"; too few in {', '.join(thin)} (their share goes to the others)" if thin else "")
        )
    return notes


def select(stages: list[Stage], labels: list[str]) -> list[Stage]:
    """The stages of the named variants plus everything they read, in plan order (all when empty).

    Keys do not change, so an arm run alone lands in the same directories as in the full run: a later
    full run (or `reuse`) skips it, and one worker per arm can split an experiment."""
    if not labels:
        return stages
    known = sorted({s.label for s in stages if s.kind == "eval"})
    if bad := [x for x in labels if x not in known]:
        raise ConfigError(f"--only: no variant {bad} in this experiment; its variants are {', '.join(known)}")
    keep: set[str] = set()
    todo = [s for s in stages if s.label in labels]
    while todo:
        s = todo.pop()
        if s.dirname not in keep:
            keep.add(s.dirname)
            todo += s.deps
    return [s for s in stages if s.dirname in keep]


# ----------------------------------------------------------------------------- executing stages


def _port_for(key: str) -> int | None:
    """A port fixed by the stage key, so a resumed stage talks to the "same" endpoint: the endpoint URL is
    part of the generation cache key. Falls back to any free port if it is taken (then it regenerates)."""
    port = 20000 + int(key, 16) % 20000
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


@contextlib.contextmanager
def _external_server(values: dict[str, Any], key: str) -> Iterator[dict[str, Any]]:
    """Start llama.cpp for external reflection when asked; always stop it, even if the stage fails."""
    serve = values.pop("serve", None)
    if not serve or values.get("api_base"):
        yield values
        return
    from tbr.errors import EndpointError
    from tbr.serve import LlamaServer

    with LlamaServer(serve, port=_port_for(key)) as server:
        log.info("started local OpenAI-compatible server for %s at %s", serve, server.base_url)
        try:
            yield {**values, "api_base": server.base_url, "api_model": server.model}
        except EndpointError as e:
            # "connection error" on every request usually means the server died: say so, with its log
            if server.proc is not None and server.proc.poll() is not None:
                raise EndpointError(
                    f"{e}\nthe local llama.cpp server for {serve} exited with code "
                    f"{server.proc.returncode} during the stage; its output ends with:\n{server.log_tail()}"
                ) from e
            raise
    log.info("stopped the local server")


def _execute(stage: Stage, out: Path, root: Path) -> dict[str, Any]:
    """Run one stage into `out` and return what downstream stages need to know about it."""
    values = dict(stage.values)
    deps = {d.kind: root / d.dirname for d in stage.deps}
    if stage.kind == "reflect":
        from tbr.reflect import ReflectConfig, reflect

        with _external_server(values, stage.key) as v:
            reflect(build(ReflectConfig, {**v, "out": str(out)}, source=f"stage {stage.dirname}"))
        return {}
    if stage.kind == "contrast":
        from tbr.contrast import ContrastConfig, contrast

        with _external_server(values, stage.key) as v:
            contrast(build(ContrastConfig, {**v, "out": str(out)}, source=f"stage {stage.dirname}"))
        return {}
    if stage.kind == "build":
        from tbr.build import BuildConfig
        from tbr.build import build as build_set

        if "reflect" in deps:
            values["reflections"] = str(deps["reflect"])
        if "contrast" in deps:
            values["contrast"] = str(deps["contrast"])
        build_set(build(BuildConfig, {**values, "out": str(out)}, source=f"stage {stage.dirname}"))
        return {}
    if stage.kind == "train":
        from tbr.train import TrainConfig, train

        # A run killed mid-training continues from the stage's last checkpoint.
        resume = any((out / "checkpoints").glob("checkpoint-*"))
        path = train(
            build(
                TrainConfig,
                {**values, "data": str(deps["build"]), "out": str(out), "resume": resume},
                source=f"stage {stage.dirname}",
            )
        )
        return {"checkpoint": str(path)}
    if stage.kind in ("eval", "general"):
        if "train" in deps:
            values["model"] = json.loads((deps["train"] / "DONE.json").read_text())["checkpoint"]
        if stage.kind == "eval":
            from tbr.evaluate import EvalConfig, evaluate

            evaluate(build(EvalConfig, {**values, "out": str(out)}, source=f"stage {stage.dirname}"))
        else:
            from tbr.general import GeneralConfig, general

            general(build(GeneralConfig, {**values, "out": str(out)}, source=f"stage {stage.dirname}"))
        return {}
    raise ConfigError(f"unknown stage kind {stage.kind}")


def _reusable(stage: Stage, dirs: list[str]) -> Path | None:
    return next(
        (Path(d) / stage.dirname for d in dirs if (Path(d) / stage.dirname / "DONE.json").is_file()), None
    )


def _adopt(src: Path, out: Path) -> dict[str, Any]:
    """Copy a finished stage from another run. The key covers the stage's inputs and its dependencies'
    keys, so equal keys mean the same work. A trained model's resume checkpoints stay behind (they are
    only read by an unfinished training), and DONE.json is written last, so a crash mid-copy reruns."""
    shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", "DONE.json"))
    info = json.loads((src / "DONE.json").read_text())
    ckpt = info.get("checkpoint")
    if isinstance(ckpt, str) and Path(ckpt).resolve().is_relative_to(src.resolve()):
        # downstream stages load the copy
        info["checkpoint"] = str(out / Path(ckpt).resolve().relative_to(src.resolve()))
    return {**info, "reused_from": str(src)}


def _auto_is_bf16(hw: dict[str, Any]) -> bool | None:
    """What `dtype: auto` / `bf16: auto` resolve to on the machine a manifest's `hardware` describes."""
    return True if hw.get("cuda") else hw.get("cpu_bf16")


def precision_note(stage: Stage, out: Path, here_bf16: bool | None) -> str | None:
    """A warning when a finished stage ran where `auto` precision meant something other than here.

    Keys cover the config, not the precision `auto` resolves to, so a run resumed (or `reuse`d) on
    another machine would silently mix fp32 and bf16 models (measured: w/o XSTest-safe 0.26 in fp32
    vs 0.23 in bf16, docs/results.md)."""
    if stage.kind == "build" or stage.values.get("backend") == "openai":
        return None  # no local weights ran (builds; reflections from an endpoint)
    pinned = stage.values.get("bf16" if stage.kind == "train" else "dtype", "auto")
    if str(pinned).lower() != "auto":
        return None
    try:
        there = _auto_is_bf16(json.loads((out / "manifest.json").read_text())["hardware"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if there is None or here_bf16 is None or there == here_bf16:
        return None
    name = {True: "bf16", False: "fp32"}
    return (
        f"{stage.dirname} ran in {name[there]} (precision auto there), this machine's auto is "
        f"{name[here_bf16]}: the run mixes precisions; pin `dtype` / `bf16` to compare across machines"
    )


def _fmt_s(s: float) -> str:
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"


def _stage_seconds(out: Path) -> float:
    return float(json.loads((out / "DONE.json").read_text()).get("seconds", 0.0))


def _say(msg: str) -> None:
    print(msg, flush=True)  # flushed at once: the progress view must not wait in a pipe's buffer


@contextlib.contextmanager
def _claim(out: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on a stage directory: True if this process may run the stage.

    Several `tbr run` processes on one run directory then share the work (each takes the next stage
    whose inputs are done and that nobody else holds). The OS drops the lock when a process dies, so
    a crashed worker's stage is taken over by the next rerun."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    # The lock file sits beside the stage directory, not in it: stages clean their own directory.
    with out.with_name(out.name + ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def peak_mb(root: Path, kind: str) -> float:
    """The largest peak RSS of the finished stages of one kind in a run directory (0: none yet)."""
    peaks = []
    for done in root.glob(f"{kind}/*/DONE.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            peaks.append(float(json.loads(done.read_text()).get("max_rss_mb") or 0))
    return max(peaks, default=0.0)


def running_stages(root: Path, mine: str) -> list[str]:
    """Stage directories (kind/label-key) whose lock another process holds: the stages running now."""
    import fcntl

    held = []
    for lock in root.glob("*/*.lock"):
        name = f"{lock.parent.name}/{lock.name.removesuffix('.lock')}"
        if name == mine or (lock.with_suffix("") / "DONE.json").exists():
            continue
        with lock.open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(name)
            else:
                fcntl.flock(f, fcntl.LOCK_UN)
    return held


def memory_wait(root: Path, stage: Stage, limit_mb: float) -> str | None:
    """Why `stage` must wait for memory, or None if it may start now.

    A stage's need is the measured peak of its kind in this run directory. Peaks, not free memory,
    because a training reaches its peak minutes after it starts, when a second worker that looked at
    free memory would already have started a second one. With nothing else running the stage always
    starts: waiting would not free anything. A kind with no measured peak yet runs one stage at a time
    until its first stage finishes: the first two Qwen trainings of a fresh directory would otherwise
    start together and the second be OOM-killed (seen on a 24 GB machine)."""
    need = peak_mb(root, stage.kind)
    others = running_stages(root, stage.dirname)
    if not others:
        return None
    if not need:
        same = [o for o in others if o.split("/")[0] == stage.kind]
        if not same:
            return None
        return (
            f"{stage.dirname} waits for memory: no {stage.kind} stage has finished here yet, so its "
            f"peak is unknown, and {same[0]} is running; the first of a kind runs alone until measured"
        )
    held = sum(peak_mb(root, o.split("/")[0]) for o in others)
    if need + held <= limit_mb:
        return None
    return (
        f"{stage.dirname} waits for memory: its kind peaked at {need / 1024:.1f} GB, and the "
        f"{len(others)} running stage(s) at {held / 1024:.1f} GB, over the {limit_mb / 1024:.1f} GB "
        "limit (memory_gb)"
    )


def pick_order(stages: list[Stage], leaves: set[str], running: list[str]) -> list[tuple[int, Stage]]:
    """The order in which a worker looks for its next stage, as (plan position, stage) pairs.

    Plan order keeps one model at a time, so a run stopped early holds complete rows. With several
    workers that starves the stages that feed others: when a training finished, both workers took its
    evaluation and general stages while the next trainings, which memory lets run only one at a time,
    waited (Qwen, 2026-12-07). So while another worker is already measuring (running a leaf: an eval
    or general stage, which nothing depends on), this one looks at the feeding stages first."""
    order = list(enumerate(stages, 1))
    if not any(r in leaves for r in running):
        return order
    return sorted(order, key=lambda p: p[1].dirname in leaves)  # stable: plan order within each group


def memory_limit_mb(exp: Experiment) -> float:
    import psutil

    return exp.memory_gb * 1024 if exp.memory_gb else 0.9 * psutil.virtual_memory().total / 2**20


def execute(
    exp: Experiment,
    root: Path,
    *,
    only: list[str] | None = None,
    progress: Callable[[str], None] = _say,
    poll_s: float = 30.0,
) -> Path:
    full = plan(exp)
    stages = select(full, only or [])
    check_plan(exp, full)  # a bad stage section fails now, not when its stage starts
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, "run", exp, extra={"plan": [s.dirname for s in full], "only": only or []})
    t0 = time.time()
    done = {s.dirname: (root / s.dirname / "DONE.json").exists() for s in stages}
    # Seconds per stage kind, seeded from stages finished earlier (by a crashed run or another
    # worker), so the time-left estimate is useful from the first stage of a resumed run.
    durations: dict[str, float] = {}
    from tbr.config import hardware

    here_bf16 = _auto_is_bf16(hardware())

    def warn_precision(stage: Stage) -> None:
        if note := precision_note(stage, root / stage.dirname, here_bf16):
            log.warning(note)
            progress(f"warning: {note}")

    for i, stage in enumerate(stages, 1):
        if done[stage.dirname]:
            durations[stage.kind] = _stage_seconds(root / stage.dirname)
            progress(f"[{i}/{len(stages)}] {stage.dirname}: done earlier, skipped")
            warn_precision(stage)
    waiting = False
    limit_mb = memory_limit_mb(exp)
    told: set[str] = set()  # stages whose memory wait was already reported
    leaves = {s.dirname for s in full} - {d.dirname for s in full for d in s.deps}
    while not all(done.values()):
        ran = False
        for i, stage in pick_order(stages, leaves, running_stages(root, "")):
            out = root / stage.dirname
            if done[stage.dirname] or not all(done[d.dirname] for d in stage.deps):
                continue
            with _claim(out) as mine:
                if not mine:
                    continue  # another worker is on it
                if (out / "DONE.json").exists():  # finished by another worker meanwhile
                    done[stage.dirname] = True
                    durations[stage.kind] = _stage_seconds(out)
                    continue
                src = _reusable(stage, exp.reuse)
                if src is not None:
                    write_json_atomic(out / "DONE.json", _adopt(src, out))
                    durations[stage.kind] = _stage_seconds(out)
                    done[stage.dirname] = ran = True
                    progress(f"[{i}/{len(stages)}] {stage.dirname}: same inputs finished in {src}, copied")
                    warn_precision(stage)
                    break
                if why := memory_wait(root, stage, limit_mb):
                    if stage.dirname not in told:
                        progress(f"[{i}/{len(stages)}] {why}")
                        told.add(stage.dirname)
                    continue  # another stage may fit; else wait below for the running ones
                # Time left: duration of finished stages of the same kind, times the stages still to run.
                left = sum(durations.get(s.kind, 0.0) for s in stages if not done[s.dirname])
                progress(
                    f"[{i}/{len(stages)}] {stage.dirname}: running (elapsed {_fmt_s(time.time() - t0)}"
                    + (f", est. left ≥ {_fmt_s(left)})" if left >= 1 else ")")
                )
                s0 = time.time()
                # Each stage in a fresh process (tbr.isolate): a worker no longer grows from stage to
                # stage. Its CPU time (all threads) is the stage's: on a shared machine it is the
                # steadier cost figure than the wall clock.
                info, cpu, rss_mb = run_isolated(f"stage {stage.dirname}", _execute, stage, out, root)
                write_json_atomic(
                    out / "DONE.json",
                    {
                        "stage": stage.kind,
                        "key": stage.key,
                        "seconds": time.time() - s0,
                        "cpu_seconds": cpu,
                        "max_rss_mb": round(rss_mb, 1),
                        **info,
                    },
                )
                if stage.kind == "train" and not exp.keep_checkpoints:
                    # after DONE.json: a crash before this line leaves a finished stage, never a
                    # stage that lost its checkpoints without being marked done
                    shutil.rmtree(out / "checkpoints", ignore_errors=True)
                durations[stage.kind] = time.time() - s0
                done[stage.dirname] = ran = True
                waiting = False
                break  # back to the first stage: earlier ones may have become runnable
        if not ran:
            # Everything left is held by other workers or waits on their stages.
            if not waiting:
                progress("waiting for stages held by another `tbr run` on this directory")
                waiting = True
            time.sleep(poll_s)
            done = {s.dirname: (root / s.dirname / "DONE.json").exists() for s in stages}
    wall = time.time() - t0
    session = {"start": t0, "end": time.time(), "wall_s": wall, "only": only or []}
    write_report(exp, root, session=session)
    progress(f"done in {_fmt_s(wall)}; report: {root / 'report.html'}")
    return root


def write_report(exp: Experiment, root: Path, session: dict[str, Any] | None = None) -> Path:
    """runs.json + report over the finished stages; a model whose eval is not done is left out, so a
    run stopped early (or still going in another process) can be reported as far as it got."""
    stages = plan(exp)
    finished = {
        s.dirname: json.loads((root / s.dirname / "DONE.json").read_text())
        for s in stages
        if (root / s.dirname / "DONE.json").exists()
    }
    seconds = {d: float(info.get("seconds", 0.0)) for d, info in finished.items()}
    cpu = {
        d: float(info["cpu_seconds"]) for d, info in finished.items() if info.get("cpu_seconds") is not None
    }
    variants = []
    for s in stages:
        if s.kind == "eval" and s.dirname in seconds:
            gen = next((g for g in stages if g.kind == "general" and g.variant == s.variant), None)
            train = s.deps[0] if s.deps else None
            safety_n = _built_safety_n(root / train.deps[0].dirname) if train else None
            variants.append(
                {
                    **(s.variant or {}),
                    "model": exp.model,
                    "eval_dir": s.dirname,
                    "general_dir": gen.dirname if gen and gen.dirname in seconds else None,
                    "train_dir": train.dirname if train else None,
                    **({"safety_n": safety_n} if safety_n is not None else {}),
                }
            )
    if not variants:
        raise ConfigError(f"{root}: no evaluation has finished yet, so there is nothing to report")
    runs_json = root / "runs.json"
    previous = json.loads(runs_json.read_text()) if runs_json.exists() else {}
    write_json_atomic(
        runs_json,
        {
            "experiment": exp.name,
            "variants": variants,
            "complete": len(seconds) == len(stages),
            # every worker session (several may overlap); total_stage_s counts each stage once
            "sessions": [*previous.get("sessions", []), *([session] if session else [])],
            "total_stage_s": sum(seconds.values()),
            "stage_seconds": seconds,
            # CPU seconds of the stages that recorded them (DONE.json files before this field have none)
            "stage_cpu_seconds": cpu,
            "total_stage_cpu_s": sum(cpu.values()),
        },
    )
    from tbr.report import report

    return report([str(root)], str(root), **exp.report)


def _built_safety_n(build_dir: Path) -> int | None:
    """How many safety samples a finished build holds (the trade-off figure's axis)."""
    try:
        n = json.loads((build_dir / "manifest.json").read_text())["counts"]["safety"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if isinstance(n, int) else None


# Sections that a file with `extends:` merges key by key into its parent's (a null value there drops
# the parent's key); every other top-level key it gives replaces the parent's value whole (a list such
# as gammas, or `general: null`).
MERGED_SECTIONS = ("external", "reflect", "build", "train", "eval", "general", "report", "contrast")
# What makes an experiment itself: never inherited, so a child cannot write into its parent's run
# directory by forgetting `out`.
OWN_KEYS = ("name", "description", "out")


def experiment_values(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The experiment file's mapping with `extends: PARENT.yaml` resolved (the parent's path is relative
    to the file's own folder; chains are fine, cycles are an error).

    A variant of an experiment (the same arms on another suite, one more γ) is then the few keys that
    differ, so its reflect, build and train stages keep the parent's keys by construction and `reuse`
    copies them, rather than by a copied file that has to be kept equal by hand."""
    path = Path(path)
    values = load_yaml(path)
    parent = values.pop("extends", None)
    if parent is None:
        return values
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: extends must name one experiment file, relative to {path.name}'s folder")
    if not values.get("name"):
        raise ConfigError(f"{path}: a file with extends needs its own name (and so its own run directory)")
    ppath = path.parent / parent
    if ppath.resolve() in (*_seen, path.resolve()):
        raise ConfigError(f"{path}: extends {parent} comes back to a file already in its chain")
    merged = {
        k: v for k, v in experiment_values(ppath, (*_seen, path.resolve())).items() if k not in OWN_KEYS
    }
    for k, v in values.items():
        old = merged.get(k)
        if k in MERGED_SECTIONS and isinstance(old, dict) and isinstance(v, dict):
            # null takes a section key back to the stage's default (as in a JSON merge patch), so the
            # child's stage values equal those of a file that never set it: the same stage key (a null
            # the parent wrote itself is kept as written)
            merged[k] = {sk: sv for sk, sv in {**old, **v}.items() if not (sk in v and sv is None)}
        else:
            merged[k] = v
    return merged


def load_experiment(path: str | Path) -> Experiment:
    return build(Experiment, experiment_values(path), source=str(path))


def run(cfg: RunConfig) -> int:
    if not cfg.experiment:
        raise ConfigError("usage: tbr run EXPERIMENT.yaml")
    exp = load_experiment(cfg.experiment)
    root = Path(cfg.out or exp.out or f"runs/{exp.name}")
    if cfg.plan:
        full = plan(exp)
        notes = check_plan(exp, full, cfg.experiment)
        for s in select(full, cfg.only):
            print(f"{s.dirname:40} {json.dumps(s.values, default=str)[:150]}")
        for note in notes:
            print(f"check: {note}")
        print(f"plan OK: {len(full)} stages, every stage config valid")
        return 0
    if cfg.report_only:
        print(f"report: {write_report(exp, root)}")
        return 0
    execute(exp, root, only=cfg.only)
    return 0
