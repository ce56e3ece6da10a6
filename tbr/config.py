"""One typed dataclass per stage feeds the CLI flags, the YAML config and the run manifest.

Precedence (as in lm-eval and TRL): dataclass defaults < `--config FILE.yaml` < explicit flags.
A YAML file may hold the stage's keys at top level or under a section named after the stage,
so one experiment file can configure several stages.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tbr.errors import ConfigError
from tbr.io import cache_dir, sha256_file, write_json_atomic

T = TypeVar("T")

_UNSET = object()


def opt(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:  # noqa: A002
    """A dataclass field with CLI help text (mutable defaults become default factories)."""
    meta = {"help": help, **kw.pop("metadata", {})}
    for key in ("choices", "positional", "nargs", "cli"):  # CLI hints travel in the field's metadata
        if key in kw:
            meta[key] = kw.pop(key)
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...] and return (type, is_optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parse_list(text: str, item: type) -> list[Any]:
    return [item(x.strip()) for x in text.split(",") if x.strip()]


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Turn a YAML or CLI value into the field's declared type, with a clear error."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"option {name!r} may not be null")
    origin = typing.get_origin(base)
    try:
        if origin is list:
            (item,) = typing.get_args(base) or (str,)
            if isinstance(value, str):
                return _parse_list(value, item)
            return [item(v) for v in value]
        if origin is dict or base is dict:
            if not isinstance(value, dict):
                raise TypeError("expected a mapping")
            return dict(value)
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if base in (int, float, str):
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            return base(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"option {name!r}: {e}") from None
    return value


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per dataclass field; defaults stay unset so we can tell overrides apart."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
        )
        # argparse %-formats help strings: a literal "%" (e.g. "30% slower") must be doubled.
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        if f.metadata.get("positional"):
            # e.g. `tbr run EXPERIMENT.yaml`, `tbr report RUN_DIR...`
            parser.add_argument(
                f.name,
                nargs=f.metadata.get("nargs"),
                default=_UNSET,
                metavar=f.name.upper(),
                help=f.metadata.get("help", ""),
            )
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": _UNSET, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(flag, metavar=f.name.upper(), **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level")
    return data


def build(cls: type[T], values: dict[str, Any], *, source: str = "config") -> T:
    """Instantiate a stage dataclass from a plain mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) for {cls.__name__}: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], k) for k, v in values.items()}
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in kwargs and kwargs[f.name] is not None and kwargs[f.name] not in choices:
            raise ConfigError(
                f"{source}: {f.name}={kwargs[f.name]!r} is not one of {', '.join(map(str, choices))}"
            )
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def from_args(cls: type[T], args: argparse.Namespace, section: str | None = None) -> T:
    """defaults < YAML (`--config`) < explicit CLI flags."""
    values: dict[str, Any] = {}
    cfg_path = getattr(args, "config", None)
    if cfg_path:
        data = load_yaml(cfg_path)
        if section and isinstance(data.get(section), dict):
            data = data[section]
        values.update(data)
    names = {f.name for f in dataclasses.fields(cls)}
    for name in names:
        v = getattr(args, name, _UNSET)
        if v is not _UNSET:
            values[name] = v
    return build(cls, values, source=str(cfg_path or "command line"))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


# ----------------------------------------------------------------------------- manifest

_PACKAGES = (
    "tbr",
    "torch",
    "transformers",
    "tokenizers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "lm-eval",
    "captum",
    "gguf",
    "openai",
    "numpy",
    "llama-cpp-python",
    "vllm",
)

# Config keys whose *values* must never be written anywhere (we store env-var names instead). Matched
# as whole "_"-separated words, so `hf_token` is secret but `max_new_tokens` is not.
_SECRET_WORDS = {"token", "password", "secret", "passwd", "credentials", "apikey"}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    repo = Path(repo or Path(__file__).resolve().parent.parent)
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def scrub(obj: Any) -> Any:
    """Drop values of secret-looking keys (the names of env vars holding them are kept)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            words = set(str(k).lower().replace("-", "_").split("_"))
            secret = bool(words & _SECRET_WORDS or "api_key" in str(k).lower())
            secret = secret and not str(k).lower().endswith("_env")
            out[k] = "<redacted>" if secret and v else scrub(v)
        return out
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    return obj


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def path_roots(out_dir: Path, data_dir: str | None) -> list[tuple[Path, str]]:
    """Folders whose paths a manifest writes relative to a name a reader has too: longest first."""
    roots = [(out_dir, "")]
    data = data_dir or os.environ.get("TBR_DATA_DIR")
    if data:
        roots.append((Path(data), "$TBR_DATA_DIR"))
    package = Path(__file__).resolve().parent  # built-in assets: tbr/assets/…
    roots += [(package, "tbr"), (cache_dir(), "$TBR_CACHE"), (Path(sys.prefix), "$VENV"), (Path.home(), "~")]
    resolved = [(Path(os.path.abspath(r.expanduser())), name) for r, name in roots]
    return sorted(resolved, key=lambda x: -len(str(x[0])))


def portable_path(value: str, roots: list[tuple[Path, str]]) -> str:
    """An absolute path → relative to the run dir, or `$TBR_DATA_DIR/…`, `tbr/…` (built-in assets),
    `$TBR_CACHE/…`, `$VENV/…`, `~/…`; anything else relative to the run dir. A manifest must not
    name one machine's folders."""
    p = Path(os.path.abspath(Path(value).expanduser()))
    for root, name in roots:
        if p == root or root in p.parents:
            rel = p.relative_to(root).as_posix()
            return f"{name}/{rel}" if name else (rel or ".")
    return os.path.relpath(p, next(r for r, n in roots if not n))  # relative to the run dir


def portable(obj: Any, roots: list[tuple[Path, str]]) -> Any:
    """Every absolute path in a JSON-able object made portable; credentials inside URLs redacted."""
    if isinstance(obj, dict):
        return {k: portable(v, roots) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v, roots) for v in obj]
    if isinstance(obj, str):
        obj = _URL_CREDENTIALS.sub("<redacted>@", obj)
        flag, eq, val = obj.partition("=")  # --out=/abs/path
        if eq and flag.startswith("--") and val.startswith(("/", "~")):
            return f"{flag}={portable_path(val, roots)}"
        if obj.startswith(("/", "~/")) and not any(c.isspace() for c in obj):
            return portable_path(obj, roots)
    return obj


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
        info["cpu_bf16"] = "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, IndexError):
        info["cpu_bf16"] = None
    return info


def write_manifest(
    out_dir: str | Path,
    stage: str,
    config: Any,
    *,
    models: list[dict[str, Any]] | None = None,
    data_files: list[str | Path] | None = None,
    extra: dict[str, Any] | None = None,
    filename: str = "manifest.json",
) -> Path:
    """Everything needed to reproduce a stage's output: config, seeds, versions, hashes, commit.

    Paths in it are relative to `out_dir` (tbr.config.portable), so write it there, under `filename`."""
    cfg = scrub(to_dict(config))
    seeds = {k: v for k, v in cfg.items() if "seed" in k}
    roots = path_roots(Path(out_dir), cfg.get("data_dir"))
    manifest = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "config": cfg,
        "seeds": seeds,
        "models": models or [],
        # data files by portable path, each with its sha256: the hash is what identifies the data
        "data": {str(p): sha256_file(p) for p in (data_files or []) if Path(p).is_file()},
        "packages": package_versions(),
        "hardware": hardware(),
        "git": git_state(),
        **(scrub(extra) if extra else {}),
    }
    manifest = portable(manifest, roots)
    manifest["data"] = {portable_path(str(p), roots) if Path(p).is_absolute() else str(p): h
                        for p, h in manifest["data"].items()}  # fmt: skip
    path = Path(out_dir) / filename
    write_json_atomic(path, manifest)
    return path
