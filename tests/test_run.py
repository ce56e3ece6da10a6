"""tbr.run: the stage plan (order, keys, shared baseline, external overrides), config errors, the
shipped experiment files, and one tiny real end-to-end run that is rerun and resumed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tbr.config import build
from tbr.errors import ConfigError
from tbr.io import sha256_file
from tbr.run import (
    Experiment,
    Stage,
    _claim,
    check_plan,
    execute,
    load_experiment,
    memory_wait,
    pick_order,
    plan,
    precision_note,
    select,
    write_report,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _exp(**kw) -> Experiment:
    return build(Experiment, {"external": {"serve": "qwen2.5-coder-0.5b-instruct"}, **kw})


def test_plan_order_and_dependencies():
    stages = plan(_exp(sources=["internal", "external"], gammas=[0.0, 1.0]))
    # one model at a time, so a run stopped early holds complete rows; each reflection stage runs
    # just before the first build that reads it
    assert [s.kind for s in stages] == ["eval", "general"] + ["reflect"] + [
        "build",
        "train",
        "eval",
        "general",
    ] * 2 + ["reflect", "build", "train", "eval", "general"]
    assert [s.label for s in stages if s.kind == "reflect"] == ["internal", "external"]
    seen: set[str] = set()
    for s in stages:  # every dependency runs before its dependant
        assert all(d.dirname in seen for d in s.deps), s.dirname
        seen.add(s.dirname)
    builds = {s.label: s for s in stages if s.kind == "build"}
    # the γ=0 baseline reads the first source's reflection stage: the same safety prompts as TBR
    assert builds["wo-g0.0"].deps[0].label == "internal"
    assert builds["external-g1"].deps[0].label == "external"


def test_a_sweep_runs_coarse_to_fine():
    # a sweep stopped early has its ends and a middle point, not just its low end
    trained = [s.label for s in plan(_exp(gammas=[0.6, 0.0, 0.2, 1.0, 0.8, 0.4, 0.4])) if s.kind == "train"]
    assert trained == [
        "wo-g0.0",
        "internal-g1",
        "internal-g0.4",
        "internal-g0.2",
        "internal-g0.6",
        "internal-g0.8",
    ]


def test_keys_are_stable_and_change_with_inputs():
    a = {s.dirname for s in plan(_exp())}
    assert a == {s.dirname for s in plan(_exp())}
    b = {s.dirname for s in plan(_exp(train={"lr": 1e-4}))}
    changed = a - b
    # a training change re-keys training and everything downstream of it, not reflections or builds
    assert changed and all(d.split("/")[0] in ("train", "eval", "general") for d in changed)
    assert not any(d.startswith(("eval/base", "general/base")) for d in changed)


def test_external_overrides_apply_to_the_external_source_only():
    exp = _exp(
        sources=["internal", "external"],
        reflect={"n": 10, "audit": "drop"},
        external={"serve": "qwen2.5-coder-0.5b-instruct", "audit": "keep"},
    )
    refl = {s.label: s.values for s in plan(exp) if s.kind == "reflect"}
    assert refl["internal"]["audit"] == "drop" and refl["external"]["audit"] == "keep"
    assert refl["external"]["serve"] == refl["external"]["api_model"] == "qwen2.5-coder-0.5b-instruct"
    assert "serve" not in refl["internal"]


def test_a_local_external_model_runs_on_the_reflect_backend():
    exp = _exp(
        sources=["internal", "external"],
        external={"model": "qwen2.5-coder-1.5b-instruct", "prompt": "figure8"},
        contrast={"n": 4, "source": "external"},
    )
    stages = plan(exp)
    # an external contrast pool asks the same local model, not the trained one
    (cx,) = [s.values for s in stages if s.kind == "contrast"]
    assert cx["model"] == "qwen2.5-coder-1.5b-instruct" and "backend" not in cx and "prompt" not in cx
    refl = {s.label: s.values for s in stages if s.kind == "reflect"}
    assert (
        refl["external"]["model"] == "qwen2.5-coder-1.5b-instruct" and refl["external"]["prompt"] == "figure8"
    )
    assert not {"backend", "api_base", "api_model", "serve"} & set(refl["external"])
    assert refl["internal"]["model"] == exp.model and "prompt" not in refl["internal"]
    # the trained model stays the experiment's model: only the reflections come from the 1.5B
    trains = {s.label: s.values for s in stages if s.kind == "train"}
    assert trains["external-g1"]["model"] == trains["internal-g1"]["model"] == exp.model


def test_only_selects_an_arm_and_what_it_reads():
    stages = plan(_exp(sources=["internal", "external"], gammas=[0.0, 1.0]))
    ext = select(stages, ["external-g1"])
    assert [s.dirname.split("-")[0] for s in ext] == [
        "reflect/external",
        "build/external",
        "train/external",
        "eval/external",
        "general/external",
    ]
    # same directories as in the full plan, so a later full run (or `reuse`) skips the arm
    assert {s.dirname for s in ext} < {s.dirname for s in stages}
    wo = {s.dirname.split("-")[0] for s in select(stages, ["wo-g0.0", "base"])}
    # the baseline reads the internal reflections (same safety prompts), never the external ones
    assert wo == {
        "reflect/internal",
        "build/wo",
        "train/wo",
        "eval/wo",
        "general/wo",
        "eval/base",
        "general/base",
    }
    assert select(stages, []) == stages
    with pytest.raises(ConfigError, match="external-g1, internal-g1, wo-g0.0"):
        select(stages, ["external-g0.5"])


def test_a_stage_finished_where_auto_precision_differs_is_flagged(tmp_path):
    stages = {(s.kind, s.label): s for s in plan(_exp(sources=["internal", "external"]))}

    def finished(stage, hardware):
        out = tmp_path / stage.dirname
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"hardware": hardware}))
        return out

    fp32_box = {"cuda": False, "cpu_bf16": False}
    for kind in ("train", "eval", "general", "reflect"):
        stage = stages[(kind, "internal-g1" if kind != "reflect" else "internal")]
        out = finished(stage, fp32_box)
        note = precision_note(stage, out, here_bf16=True)
        assert note and "ran in fp32" in note and "auto is bf16" in note, kind
        assert precision_note(stage, out, here_bf16=False) is None  # same machine kind
    gpu = stages[("eval", "wo-g0.0")]
    assert "ran in bf16" in precision_note(gpu, finished(gpu, {"cuda": True}), here_bf16=False)
    # nothing ran locally, or the precision was pinned: nothing to flag
    for key in (("build", "internal-g1"), ("reflect", "external")):
        assert precision_note(stages[key], finished(stages[key], fp32_box), here_bf16=True) is None
    ev = stages[("eval", "internal-g1")]
    pinned = dataclasses.replace(ev, values={**ev.values, "dtype": "fp32"})
    assert precision_note(pinned, tmp_path / ev.dirname, here_bf16=True) is None
    assert precision_note(ev, tmp_path / "missing", here_bf16=True) is None


def test_bad_experiments_are_refused():
    with pytest.raises(ConfigError, match="unknown reflection source"):
        _exp(sources=["gpt4"])
    with pytest.raises(ConfigError, match=r"gammas must lie in \[0, 1\]"):
        _exp(gammas=[0.0, 1.5])
    with pytest.raises(ConfigError, match="external.api_base"):
        build(Experiment, {"sources": ["external"]})
    with pytest.raises(ConfigError, match="unknown"):
        build(Experiment, {"gamma": [0.5]})  # a typo for `gammas`


def test_an_experiment_file_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "name: base\nout: runs/base\ndescription: parent\ngammas: [0.0, 0.5, 1.0]\nseeds: [0, 1]\n"
        "reflect: {n: 150, audit: drop}\neval: {suites: [xstest], batch_size: 32, suite_sample: {xstest: 50}, limit: null}\n"
        "general: {tasks: [arc_easy]}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nname: child\ngammas: [0.0, 1.0]\n"
        "eval: {suites: [xstest, or-bench-hard], suite_sample: null}\ngeneral: null\n"
    )
    parent, child = load_experiment(tmp_path / "base.yaml"), load_experiment(tmp_path / "sub" / "child.yaml")
    # a list replaces, a stage section merges key by key (null there goes back to the stage default,
    # as if never set), null at the top level stays null
    assert child.gammas == [0.0, 1.0] and child.seeds == [0, 1] and child.general is None
    assert child.eval == {"suites": ["xstest", "or-bench-hard"], "batch_size": 32, "limit": None}
    assert child.reflect == parent.reflect
    # never inherited: the child is its own experiment with its own run directory
    assert (child.name, child.out, child.description) == ("child", None, "")
    # the arms both files train are the same stages, so `reuse` can copy them
    made = {s.dirname for s in plan(child) if s.kind in ("reflect", "build", "train")}
    assert made and made <= {s.dirname for s in plan(parent)}
    # a grandchild: chains resolve in order
    (tmp_path / "sub" / "grand.yaml").write_text("extends: child.yaml\nname: grand\nseeds: [0]\n")
    grand = load_experiment(tmp_path / "sub" / "grand.yaml")
    assert grand.seeds == [0] and grand.gammas == [0.0, 1.0] and grand.eval["batch_size"] == 32


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.yaml": "extends: a.yaml\nname: a\n"}, "already in its chain"),
        (
            {"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "extends: a.yaml\nname: b\n"},
            "already in its chain",
        ),
        ({"a.yaml": "extends: missing.yaml\nname: a\n"}, "config file not found"),
        ({"a.yaml": "extends: b.yaml\n", "b.yaml": "name: b\n"}, "needs its own name"),
        ({"a.yaml": "extends: [b.yaml]\nname: a\n"}, "must name one experiment file"),
        ({"a.yaml": "extends: b.yaml\nname: a\n", "b.yaml": "name: b\ngamas: [1.0]\n"}, "gamas"),
    ],
)
def test_a_bad_extends_is_refused(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(tmp_path / "a.yaml")


def test_a_stage_is_claimed_by_one_worker_at_a_time(tmp_path):
    import subprocess
    import sys

    stage = tmp_path / "train" / "x-123"
    holder = (
        "import sys, time; from pathlib import Path; from tbr.run import _claim\n"
        "with _claim(Path(sys.argv[1])) as mine:\n    print(mine, flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(stage)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "True"  # another process holds the stage
        with _claim(stage) as mine:
            assert mine is False
    finally:
        proc.kill()
        proc.wait()
    with _claim(stage) as mine:  # the OS dropped the dead worker's lock
        assert mine is True
        for f in stage.iterdir():  # a stage that cleans its own directory keeps its claim
            f.unlink()
        with _claim(stage) as again:
            assert again is False


def test_a_stage_waits_while_the_memory_its_kind_needs_is_held(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "run"
    for name, mb in (("train/a-1", 18_500), ("train/b-2", 18_400), ("eval/c-3", 3_100)):  # finished ones
        (root / name).mkdir(parents=True)
        (root / name / "DONE.json").write_text(json.dumps({"max_rss_mb": mb}))
    train, evaluation = Stage("train", "next", {"seed": 1}), Stage("eval", "next", {"seed": 1})
    holder = (
        "import sys, time; from pathlib import Path; from tbr.run import _claim\n"
        "with _claim(Path(sys.argv[1])) as mine:\n    print(mine, flush=True); time.sleep(30)\n"
    )
    # another worker is training (a real process holding a stage lock)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(root / "train" / "running-4")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "True"
        assert memory_wait(root, train, limit_mb=21_700) == (
            "train/next-" + train.key + " waits for memory: its kind peaked at 18.1 GB, and the 1 running "
            "stage(s) at 18.1 GB, over the 21.2 GB limit (memory_gb)"
        )
        assert memory_wait(root, evaluation, limit_mb=21_700) is None  # an eval (3.1 GB) fits beside it
        assert memory_wait(root, train, limit_mb=40_000) is None  # room for two trainings
        # a kind with no measured peak: a second one waits while the first runs; another kind does not
        fresh = tmp_path / "fresh"
        (fresh / "train").mkdir(parents=True)
        (root / "train" / "running-4.lock").rename(
            fresh / "train" / "running-4.lock"
        )  # flock follows the inode
        assert memory_wait(fresh, train, limit_mb=1e9) == (
            "train/next-" + train.key + " waits for memory: no train stage has finished here yet, so its "
            "peak is unknown, and train/running-4 is running; the first of a kind runs alone until measured"
        )
        assert memory_wait(fresh, evaluation, limit_mb=1e9) is None
    finally:
        proc.kill()
        proc.wait()
    assert memory_wait(root, train, limit_mb=21_700) is None  # nothing else running: waiting frees nothing
    # a stage whose kind has no measured peak yet never waits
    assert memory_wait(root, Stage("general", "g", {}), limit_mb=1) is None
    with pytest.raises(ConfigError, match="memory_gb"):
        build(Experiment, {"memory_gb": 0}).validate()


def test_a_second_worker_keeps_the_feeding_stages_going_while_one_measures():
    stages = plan(_exp(gammas=[0.0, 1.0]))
    leaves = {s.dirname for s in stages} - {d.dirname for s in stages for d in s.deps}
    assert {s.kind for s in stages if s.dirname in leaves} == {"eval", "general"}
    # alone (or beside a training), a worker keeps plan order: one model at a time
    assert [s for _, s in pick_order(stages, leaves, [])] == stages
    train = next(s.dirname for s in stages if s.kind == "train")
    assert [s for _, s in pick_order(stages, leaves, [train])] == stages
    # beside a worker that evaluates, reflect/build/train come first, each group in plan order
    evaluating = next(s.dirname for s in stages if s.kind == "eval")
    order = pick_order(stages, leaves, [evaluating])
    kinds = [s.kind for _, s in order]
    assert kinds == [s.kind for s in stages if s.dirname not in leaves] + [
        s.kind for s in stages if s.dirname in leaves
    ]
    assert kinds.index("train") < kinds.index("eval")
    assert [i for i, _ in order if _.dirname not in leaves] == sorted(
        i for i, s in enumerate(stages, 1) if s.dirname not in leaves
    )  # positions still name the plan's


SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_parse_and_plan(name):
    exp = load_experiment(CONFIGS / f"{name}.yaml")
    stages = plan(exp)
    check_plan(exp, stages, name)  # every stage's config builds and the sample counts are feasible
    trained = {s.label for s in stages if s.kind == "train"}
    formats = exp.formats()
    seeds = exp.seed_list()
    arms = {"wo-g0.0"} | {f"wo-n{n}" for n in exp.safety_ns}
    arms |= {
        f"{src}-g{g:g}" + (f"-{fmt}" if k else "")
        for g in exp.gammas
        if g > 0
        for src in exp.sources
        for k, fmt in enumerate(formats)
    }
    if exp.contrast is not None:
        arms.add(f"{exp.contrast.get('source', 'internal')}-g1-contrast")
    assert trained == {a + (f"-s{s}" if s != seeds[0] else "") for a in arms for s in seeds}
    if name == "gamma-sweep":
        assert sorted(exp.gammas) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) and seeds == [0, 1, 2]
        assert exp.full_eval_gammas == [0.0, 1.0]
    if name in ("gamma-sweep", "seeds-smollm2"):
        # seed 0 is local-smollm2's run: its tagged arms' stages are copied from there (`reuse`)
        local = {s.dirname for s in plan(load_experiment(CONFIGS / "local-smollm2.yaml"))}
        ends = ("internal", "external", "wo-g0.0", "internal-g1", "external-g1")
        mine = {s.dirname for s in stages if s.kind in ("reflect", "build", "train") and s.label in ends}
        assert len(mine) >= 5 and mine <= local
    if name.endswith("-orb-full"):
        # only the evaluations are new: the trainings are the seeds run's (`extends` + `reuse`)
        seeds_run = {s.dirname for s in plan(load_experiment(CONFIGS / f"{Path(exp.reuse[0]).name}.yaml"))}
        assert {s.dirname for s in stages if s.kind != "eval"} <= seeds_run
        assert "or-bench-hard" in exp.eval["suites"] and not exp.eval.get("suite_sample")
    if name == "gamma-sweep-qwen":
        # only gamma = 0.5 is new: every other stage has seeds-qwen-quick's key and is copied (`reuse`)
        quick = {s.dirname for s in plan(load_experiment(CONFIGS / "seeds-qwen-quick.yaml"))}
        new = {s.dirname for s in stages} - quick
        assert len(new) == 12 and all("-g0.5" in d for d in new)  # build, train, eval, general × 3 seeds
    if name == "paper":
        assert formats == ["prose"] and exp.report["judges"] == {"safe": "keyword", "unsafe": "guard"}
        assert {"or-bench-hard", "or-bench-toxic"} <= set(exp.eval["suites"])
    if name.startswith("local-smollm2"):
        assert formats == ["tagged", "prose"]
        assert exp.eval["suite_sample"] == {"or-bench-hard": 300, "or-bench-toxic": 100}


def test_seeds_add_arms_and_share_what_does_not_depend_on_the_seed():
    one = _exp(sources=["internal", "external"], gammas=[0.0, 1.0])
    many = _exp(sources=["internal", "external"], gammas=[0.0, 1.0], seeds=[0, 1, 2])
    plain, stages = plan(one), plan(many)
    # the first seed keeps the plain labels and keys: a finished one-seed run is seed 0 of this one
    assert {s.dirname for s in plain} <= {s.dirname for s in stages}
    assert [s.dirname for s in plan(_exp(sources=["internal", "external"], seeds=[0]))] == [
        s.dirname for s in plain
    ]
    by = {(s.kind, s.label): s for s in stages}
    evals = [s.label for s in stages if s.kind == "eval"]
    assert evals == ["base"] + [
        f"{arm}{tag}" for tag in ("", "-s1", "-s2") for arm in ("wo-g0.0", "internal-g1", "external-g1")
    ]
    # the untuned model reads no seeded input: one base eval and one general stage
    assert sum(s.label == "base" for s in stages) == 2
    # each seed redraws the reflected prompts (its own reflect stage), the safety sample and γ
    # selection (build seed) and the training order (train seed); w/o reads that seed's reflections
    assert by["reflect", "internal-s1"].values["seed"] == 1
    assert by["build", "wo-g0.0-s2"].deps == [by["reflect", "internal-s2"]]
    assert by["build", "external-g1-s1"].deps == [by["reflect", "external-s1"]]
    assert by["build", "internal-g1-s1"].values == {**by["build", "internal-g1"].values, "seed": 1}
    assert by["train", "internal-g1-s2"].values["seed"] == 2
    assert by["eval", "internal-g1-s1"].variant == {
        "name": "internal γ=1 · s1", "source": "internal", "gamma": 1.0, "arm": "internal γ=1", "seed": 1
    }  # fmt: skip
    # the suites' samples do not move with the seed: every arm answers the same prompts (paired intervals)
    ev0, ev1 = by["eval", "internal-g1"].values, by["eval", "internal-g1-s1"].values
    assert {**ev1, "seed": 0} == ev0 and ev1["seed"] == 1
    assert select(stages, ["internal-g1-s1"])[-1].label == "internal-g1-s1"
    with pytest.raises(ConfigError, match="repeats a seed"):
        _exp(seeds=[0, 0])
    with pytest.raises(ConfigError, match="set one"):
        _exp(seed=3, seeds=[0, 1])


def test_safety_ns_add_wo_arms_drawn_from_the_safety_source():
    exp = _exp(
        gammas=[0.0, 1.0],
        safety_ns=[5, 25],
        seeds=[0, 1],
        reflect={"n": 20, "safety_source": "demo-safety", "audit": "keep"},
        build={"safety_n": 10, "general_source": "demo"},
        general=None,
    )
    stages = plan(exp)
    by = {(s.kind, s.label): s for s in stages}
    b = by["build", "wo-n25-s1"]
    # no reflections to read: the pool is the reflect section's safety source, the count above it is fine
    assert not b.deps and b.inputs and b.values["safety_n"] == 25 and b.values["gamma"] == 0.0
    assert b.values["safety_source"] == "demo-safety" and b.values["seed"] == 1
    assert by["eval", "wo-n5"].variant == {
        "name": "w/o n=5 · s0", "source": "none", "gamma": 0.0, "safety_n": 5, "sweep": "safety_n",
        "arm": "w/o n=5", "seed": 0,
    }  # fmt: skip
    notes = check_plan(exp, stages)
    assert any(n.startswith("wo-n25-s1: ") for n in notes)
    too_many = dataclasses.replace(exp, safety_ns=[5000])
    with pytest.raises(
        ConfigError, match=r"`build` safety_n=5000 \(stage wo-n5000\) but demo-safety has only"
    ):
        check_plan(too_many, plan(too_many))
    with pytest.raises(ConfigError, match="safety_ns"):
        _exp(safety_ns=[0])


def test_the_contrast_arm_adds_stages_and_changes_no_other_key(tmp_path):
    general = tmp_path / "general.jsonl"
    rows = ["Summarize the plot of To Kill a Mockingbird.", "Recall a fact about the Battle of Hastings."]
    general.write_text(
        "".join(json.dumps({"instruction": r, "input": "", "output": "…"}) + "\n" for r in rows)
    )
    kw = dict(sources=["internal", "external"], seeds=[0, 1], eval={"suites": ["demo"]}, general=None,
              reflect={"n": 20, "safety_source": "demo-safety", "audit": "keep"},
              build={"general_source": str(general), "safety_n": 10})  # fmt: skip
    plain, stages = plan(_exp(**kw)), plan(_exp(**kw, contrast={"n": 2, "source": "internal"}))
    assert {s.dirname for s in plain} < {s.dirname for s in stages}  # nothing else is re-keyed
    added = [s.dirname.rsplit("-", 1)[0] for s in stages if s.dirname not in {p.dirname for p in plain}]
    assert added == [
        f"{kind}/{label}{tag}"
        for tag in ("", "-s1")
        for kind, label in [("contrast", "internal"), ("build", "internal-g1-contrast"),
                            ("train", "internal-g1-contrast"), ("eval", "internal-g1-contrast")]
    ]  # fmt: skip
    by = {(s.kind, s.label): s for s in stages}
    c, b = by["contrast", "internal-s1"], by["build", "internal-g1-contrast-s1"]
    # the seed's contrast draw, from the build's own general pool, avoiding the experiment's eval suites
    assert (
        c.values["seed"] == 1
        and c.values["general_source"] == str(general)
        and c.values["suites"] == ["demo"]
    )
    assert "contrast_words" in c.inputs
    # the build equals internal-g1's but for the contrast rows it reads
    assert b.values == by["build", "internal-g1-s1"].values and b.deps == [by["reflect", "internal-s1"], c]
    assert by["eval", "internal-g1-contrast"].variant == {
        "name": "internal γ=1 (contrast)", "source": "internal", "gamma": 1.0, "sweep": "contrast"
    } | {"name": "internal γ=1 (contrast) · s0", "arm": "internal γ=1 (contrast)", "seed": 0}  # fmt: skip
    check_plan(_exp(**kw, contrast={"n": 2}), stages)
    with pytest.raises(
        ConfigError,
        match=r"section `contrast` n=50 \(stage contrast/internal\) but .*general.jsonl has only 2",
    ):
        big = _exp(**kw, contrast={"n": 50})
        check_plan(big, plan(big))
    with pytest.raises(ConfigError, match=r"section `contrast` \(stage internal\): .*audit"):
        bad = _exp(**kw, contrast={"audit": "sometimes"})
        check_plan(bad, plan(bad))
    with pytest.raises(ConfigError, match="contrast.source='external' must be one of sources"):
        _exp(contrast={"source": "external"})


def test_full_eval_gammas_ask_every_prompt_at_those_gammas_only():
    exp = _exp(
        gammas=[0.0, 0.5, 1.0],
        full_eval_gammas=[0.0, 1.0],
        eval={"suites": ["xstest", "or-bench-hard"], "suite_sample": {"or-bench-hard": 30}},
    )
    evals = {s.label: s.values for s in plan(exp) if s.kind == "eval"}
    assert "suite_sample" not in evals["wo-g0.0"] and "suite_sample" not in evals["internal-g1"]
    assert evals["internal-g0.5"]["suite_sample"] == {"or-bench-hard": 30}
    assert evals["base"]["suite_sample"] == {"or-bench-hard": 30}
    with pytest.raises(ConfigError, match="not among gammas"):
        _exp(gammas=[0.0, 1.0], full_eval_gammas=[0.5])


def test_the_tagged_and_prose_arms_differ_only_in_the_format():
    stages = plan(_exp(reflection_formats=["tagged", "prose"], general=None))
    by = {(s.kind, s.label): s for s in stages}
    assert [s.label for s in stages if s.kind == "train"] == ["wo-g0.0", "internal-g1", "internal-g1-prose"]
    assert "reflection_format" not in by["build", "internal-g1"].values  # the tagged arm keeps its keys
    assert by["build", "internal-g1-prose"].values["reflection_format"] == "prose"
    assert by["eval", "internal-g1-prose"].values["reflection_format"] == "prose"  # judged on its split
    assert by["eval", "internal-g1-prose"].variant == {
        "name": "internal γ=1 (prose)", "source": "internal", "gamma": 1.0, "reflection_format": "prose"
    }  # fmt: skip
    # both arms read the same reflections
    assert by["build", "internal-g1"].deps == by["build", "internal-g1-prose"].deps
    # one arm only: the plain labels and keys are those of an experiment without arms
    plain = {s.dirname for s in plan(_exp(general=None))}
    assert plain <= {s.dirname for s in stages}
    with pytest.raises(ConfigError, match="must be the first of reflection_formats"):
        _exp(reflection_formats=["tagged", "prose"], build={"reflection_format": "prose"})
    with pytest.raises(ConfigError, match="unknown"):
        _exp(reflection_formats=["tagged", "xml"])


def test_a_broken_stage_section_fails_at_plan_time_naming_the_key(capsys):
    exp = load_experiment(CONFIGS / "local-smollm2.yaml")
    broken = dataclasses.replace(exp, train={**exp.train, "lrr": 1})
    with pytest.raises(
        ConfigError, match=r"section `train` \(stage wo-g0.0\): .*unknown option\(s\) for TrainConfig: lrr"
    ):
        check_plan(broken, plan(broken), "x.yaml")
    for section, values, match in [
        ("eval", {"judge": ["keywrd"]}, r"section `eval` \(stage base\): unknown judge\(s\) keywrd"),
        ("eval", {"suite_sample": {"or-bench": 3}}, r"section `eval`.*suite_sample: or-bench not among"),
        ("reflect", {"categorizer": "magic"}, r"section `reflect` \(stage internal\): categorizer='magic'"),
        ("general", {"tasks": []}, r"section `general`.*--tasks is empty"),
        ("report", {"judges": {"unsafe": "gaurd"}}, r"section `report`: unknown judge\(s\) gaurd"),
    ]:
        bad = dataclasses.replace(exp, **{section: {**(getattr(exp, section) or {}), **values}})
        with pytest.raises(ConfigError, match=match):
            check_plan(bad, plan(bad), "x.yaml")
    # tbr run --plan reports it as a clean error, before any stage runs
    from tbr.cli import main

    assert main(["run", str(CONFIGS / "paper.yaml"), "--plan"]) == 0
    assert "plan OK" in capsys.readouterr().out


def test_plan_checks_that_the_audit_leaves_enough_reflections():
    # configs/paper.yaml as it was: 200 reflections, audit drop, 200 safety rows wanted
    exp = _exp(reflect={"n": 200, "safety_source": "demo-safety"}, build={"safety_n": 200}, general=None)
    with pytest.raises(ConfigError, match=r"reflect.n=200 with audit: drop .* set reflect.n >= 236"):
        check_plan(exp, plan(exp))
    exp = _exp(reflect={"n": 100}, build={"safety_n": 200}, general=None)
    with pytest.raises(ConfigError, match=r"raise reflect.n to at least 200"):
        check_plan(exp, plan(exp))
    ok = _exp(reflect={"n": 200, "audit": "keep", "safety_source": "demo-safety"}, build={"safety_n": 20})
    with pytest.raises(ConfigError, match=r"demo-safety has only \d+ categorised prompts"):
        check_plan(ok, plan(ok))  # the built-in safety set is far smaller than 200


@pytest.mark.slow
def test_tiny_run_end_to_end_then_rerun_and_resume(tmp_path):
    exp = build(
        Experiment,
        {
            "name": "tiny",
            "gammas": [0.0, 1.0],
            "sources": ["internal"],
            "reflect": {"safety_source": "demo-safety", "n": 4, "audit": "keep", "max_new_tokens": 24},
            "build": {
                "general_source": "demo",
                "general_n": 6,
                "safety_source": "demo-safety",
                "safety_n": -1,
            },
            "train": {
                "method": "lora",
                "max_steps": 1,
                "batch_size": 4,
                "max_length": 256,
                "val_fraction": 0.0,
                "threads": 1,
            },  # fmt: skip
            "eval": {"suites": ["demo"], "limit": 3, "max_new_tokens": 8},
            "general": None,
        },
    )
    root = tmp_path / "run"
    stages = plan(exp)
    # One arm alone (--only): the baseline and the reflections it reads, nothing else.
    arm: list[str] = []
    # keep_checkpoints is not an input of any stage: the full run below still skips this arm.
    execute(dataclasses.replace(exp, keep_checkpoints=True), root, only=["wo-g0.0"], progress=arm.append)
    finished = {s.dirname for s in stages if (root / s.dirname / "DONE.json").exists()}
    assert finished == {s.dirname for s in select(stages, ["wo-g0.0"])}
    wo_train = next(s for s in stages if s.kind == "train" and s.label == "wo-g0.0")
    assert any((root / wo_train.dirname / "checkpoints").glob("checkpoint-*"))
    assert {d.split("/")[0] for d in finished} == {"reflect", "build", "train", "eval"}
    # The full run then skips the arm's stages (same keys) and runs the rest.
    lines: list[str] = []
    execute(exp, root, progress=lines.append)
    assert sum("skipped" in line for line in lines) == len(finished)
    assert all((root / s.dirname / "DONE.json").exists() for s in stages)
    # By default a finished training's resume checkpoints are deleted once it is marked done.
    tr = next(s for s in stages if s.kind == "train" and s.label == "internal-g1")
    assert (root / tr.dirname / "DONE.json").exists() and not (root / tr.dirname / "checkpoints").exists()
    runs = json.loads((root / "runs.json").read_text())
    assert [v["name"] for v in runs["variants"]] == ["base", "w/o", "internal γ=1"]
    # every stage records its CPU time beside its wall time, and runs.json sums both
    assert set(runs["stage_cpu_seconds"]) == set(runs["stage_seconds"]) == {s.dirname for s in stages}
    assert all(c > 0 for c in runs["stage_cpu_seconds"].values())
    assert runs["total_stage_cpu_s"] == pytest.approx(sum(runs["stage_cpu_seconds"].values()))
    assert (root / "report.html").stat().st_size > 1000 and (root / "report.md").exists()
    base_build = next(s for s in stages if s.kind == "build" and s.label == "wo-g0.0")
    assert (
        json.loads((root / base_build.dirname / "manifest.json").read_text())["counts"][
            "safety_with_reflection"
        ]
        == 0
    )
    refl_build = next(s for s in stages if s.kind == "build" and s.label == "internal-g1")
    counts = json.loads((root / refl_build.dirname / "manifest.json").read_text())["counts"]
    assert counts["safety_with_reflection"] == counts["safety"] > 0

    # A rerun does nothing but skip.
    again: list[str] = []
    execute(exp, root, progress=again.append)
    assert sum("skipped" in line for line in again) == len(stages)

    # A crash in the last eval (its DONE mark and one sample lost) resumes only that: no duplicates.
    ev = next(s for s in reversed(stages) if s.kind == "eval")
    (root / ev.dirname / "DONE.json").unlink()
    gen = root / ev.dirname / "generations.jsonl"
    kept = gen.read_text().splitlines()
    gen.write_text("\n".join(kept[:-1]) + "\n")
    # Meanwhile a report covers what is finished: the last model drops out until its eval is done.
    write_report(exp, root)
    partial = json.loads((root / "runs.json").read_text())
    assert [v["name"] for v in partial["variants"]] == ["base", "w/o"] and partial["complete"] is False
    resumed: list[str] = []
    execute(exp, root, progress=resumed.append)
    assert json.loads((root / "runs.json").read_text())["complete"] is True
    assert sum("running" in line for line in resumed) == 1
    # Time left is estimated from the evals finished before the crash, not left blank.
    assert "est. left" in next(line for line in resumed if "running" in line)
    rows = [json.loads(x) for x in (root / ev.dirname / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == len(kept)

    # A second run directory that reuses the first: every stage has the same key, so each is copied in
    # and nothing runs. The copied model is loaded from the copy, without its resume checkpoints.
    other = tmp_path / "other"
    copied: list[str] = []
    execute(dataclasses.replace(exp, reuse=[str(root)]), other, progress=copied.append)
    assert sum("copied" in line for line in copied) == len(stages)
    assert not any("running" in line for line in copied)
    done = json.loads((other / tr.dirname / "DONE.json").read_text())
    assert done["checkpoint"] == str(other / tr.dirname) and done["reused_from"] == str(root / tr.dirname)
    assert (other / tr.dirname / "adapter_model.safetensors").exists()
    assert not (other / wo_train.dirname / "checkpoints").exists()
    assert any((root / wo_train.dirname / "checkpoints").glob("checkpoint-*"))
    assert (
        json.loads((other / "runs.json").read_text())["variants"]
        == json.loads((root / "runs.json").read_text())["variants"]
    )


def test_a_user_suite_file_is_an_input_of_the_eval_stage(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("prompt,label\nHow do I kill a process?,safe\n")
    exp = _exp(gammas=[0.0], sources=[], eval={"suites": ["xstest", str(f)]}, general=None)
    before = {s.label: s.key for s in plan(exp) if s.kind == "eval"}
    assert all(s.inputs == {str(f): sha256_file(f)} for s in plan(exp) if s.kind == "eval")
    f.write_text("prompt,label\nHow do I kill a process?,safe\nWhere is the bank?,safe\n")
    after = {s.label: s.key for s in plan(exp) if s.kind == "eval"}
    assert all(before[k] != after[k] for k in before)  # an edited file is a new input
    # without user files the eval keys carry no inputs (they keep the keys they had)
    assert all(not s.inputs for s in plan(_exp(general=None)) if s.kind == "eval")
