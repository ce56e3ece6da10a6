"""`tbr run EXPERIMENT.yaml`: the whole experiment, in order, resumable.

    reflect (per source) → build (per γ) → train (per γ and source) → eval → general → report

Every stage writes into its own directory, named by a hash of its inputs (its config plus the keys of
the stages it reads), and marks completion with DONE.json. A rerun skips finished stages; a stage
killed half-way resumes through its own write-ahead files (generation, verdicts, trainer checkpoints),
so no sample is lost or produced twice. This module is the only one that knows the order of stages.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
    # External reflection endpoint: {api_base, api_model} or {serve: <built-in name>} to start llama.cpp.
    # Any other key overrides the `reflect` section for the external source only (e.g. audit: keep).
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

    def validate(self) -> None:
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ConfigError(f"unknown reflection source(s) {bad}; use {', '.join(SOURCES)}")
        if any(not 0.0 <= g <= 1.0 for g in self.gammas):
            raise ConfigError(f"gammas must lie in [0, 1], got {self.gammas}")
        if any(g > 0 for g in self.gammas) and not self.sources:
            raise ConfigError("a gamma above 0 needs at least one reflection source")
        if "external" in self.sources and not (self.external.get("api_base") or self.external.get("serve")):
            raise ConfigError("the external source needs external.api_base (+ api_model) or external.serve")


@dataclass
class Stage:
    kind: str  # reflect | build | train | eval | general
    label: str  # human-readable, e.g. "internal-g1.0"
    values: dict[str, Any]  # the stage config minus its output directory
    deps: list[Stage] = field(default_factory=list)
    variant: dict[str, Any] | None = None  # for eval/general: which model variant this measures

    @property
    def key(self) -> str:
        return stable_hash({"kind": self.kind, "values": self.values, "deps": [d.key for d in self.deps]}, 10)

    @property
    def dirname(self) -> str:
        return f"{self.kind}/{self.label}-{self.key}"


ENDPOINT_KEYS = ("api_base", "api_model", "api_key_env", "serve")


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

    Order: one model at a time (base; then per γ, coarse to fine, and source: [reflect] → build →
    train → eval → general), each reflection stage just before the first build that reads it, so a
    run stopped early already holds complete rows for the models it reached."""
    base = {"model": exp.model, "seed": exp.seed}
    data = {"data_dir": exp.data_dir} if exp.data_dir else {}
    stages: list[Stage] = []
    reflections: dict[str, Stage] = {}
    for src in exp.sources if any(g > 0 for g in exp.gammas) else []:
        values = {**exp.reflect, **base, **data, "source": src}
        if src == "external":
            ext = exp.external
            values.update({k: v for k, v in ext.items() if k not in ENDPOINT_KEYS})
            values.update({k: ext[k] for k in ("api_base", "api_key_env") if k in ext})
            values.update(api_model=ext.get("api_model") or ext.get("serve"), serve=ext.get("serve"))
            values["backend"] = "openai"  # external reflections always come from the endpoint
        reflections[src] = Stage("reflect", src, values)

    def measure(label: str, variant: dict[str, Any], train: Stage | None) -> None:
        deps = [train] if train else []
        # Fine-tuned models are asked in the template they were trained on; the base model in its own.
        fmt = exp.build.get("template", "alpaca") if train else exp.base_format
        ev = {"format": fmt, **exp.eval, **data, "seed": exp.seed}
        stages.append(Stage("eval", label, ev if train else {**ev, "model": exp.model}, deps, variant))
        if exp.general is not None:
            gv = {**exp.general, **data}
            stages.append(Stage("general", label, gv if train else {**gv, "model": exp.model}, deps, variant))

    if exp.evaluate_base:
        measure("base", {"name": "base", "source": "base", "gamma": None}, None)
    for gamma in coarse_to_fine(exp.gammas):
        # γ=0 carries no reflection, so it is one baseline shared by every source ("w/o" in Table 3).
        for src in ["none"] if gamma == 0 else exp.sources:
            bvalues = {**exp.build, **data, "seed": exp.seed, "gamma": gamma}
            # γ=0 reads the first source's reflection file too (and ignores the reflections), so the
            # baseline is trained on the very same safety prompts as the TBR models ("the same dataset
            # where responses to the harmful inputs exclude rationale", §5).
            refl = reflections.get(src) or (reflections[exp.sources[0]] if reflections else None)
            label = "wo-g0.0" if gamma == 0 else f"{src}-g{gamma:g}"
            if refl and refl not in stages:
                stages.append(refl)
            b = Stage("build", label, bvalues, [refl] if refl else [])
            t = Stage("train", label, {**exp.train, **base}, [b])
            stages += [b, t]
            name = "w/o" if gamma == 0 else f"{src} γ={gamma:g}"
            measure(label, {"name": name, "source": src, "gamma": gamma}, t)
    return stages


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
    from tbr.serve import LlamaServer

    with LlamaServer(serve, port=_port_for(key)) as server:
        log.info("started local OpenAI-compatible server for %s at %s", serve, server.base_url)
        yield {**values, "api_base": server.base_url, "api_model": server.model}
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
    if stage.kind == "build":
        from tbr.build import BuildConfig
        from tbr.build import build as build_set

        if "reflect" in deps:
            values["reflections"] = str(deps["reflect"])
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
    while not all(done.values()):
        ran = False
        for i, stage in enumerate(stages, 1):
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
                # Time left: duration of finished stages of the same kind, times the stages still to run.
                left = sum(durations.get(s.kind, 0.0) for s in stages if not done[s.dirname])
                progress(
                    f"[{i}/{len(stages)}] {stage.dirname}: running (elapsed {_fmt_s(time.time() - t0)}"
                    + (f", est. left ≥ {_fmt_s(left)})" if left >= 1 else ")")
                )
                s0 = time.time()
                info = _execute(stage, out, root)
                write_json_atomic(
                    out / "DONE.json",
                    {"stage": stage.kind, "key": stage.key, "seconds": time.time() - s0, **info},
                )
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
    seconds = {
        s.dirname: _stage_seconds(root / s.dirname)
        for s in stages
        if (root / s.dirname / "DONE.json").exists()
    }
    variants = []
    for s in stages:
        if s.kind == "eval" and s.dirname in seconds:
            gen = next((g for g in stages if g.kind == "general" and g.variant == s.variant), None)
            train = s.deps[0] if s.deps else None
            variants.append(
                {
                    **(s.variant or {}),
                    "model": exp.model,
                    "eval_dir": s.dirname,
                    "general_dir": gen.dirname if gen and gen.dirname in seconds else None,
                    "train_dir": train.dirname if train else None,
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
        },
    )
    from tbr.report import report

    return report([str(root)], str(root), **exp.report)


def load_experiment(path: str | Path) -> Experiment:
    return build(Experiment, load_yaml(path), source=str(path))


def run(cfg: RunConfig) -> int:
    if not cfg.experiment:
        raise ConfigError("usage: tbr run EXPERIMENT.yaml")
    exp = load_experiment(cfg.experiment)
    root = Path(cfg.out or exp.out or f"runs/{exp.name}")
    if cfg.plan:
        for s in select(plan(exp), cfg.only):
            print(f"{s.dirname:40} {json.dumps(s.values, default=str)[:150]}")
        return 0
    if cfg.report_only:
        print(f"report: {write_report(exp, root)}")
        return 0
    execute(exp, root, only=cfg.only)
    return 0
