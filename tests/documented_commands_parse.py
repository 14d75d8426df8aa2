"""The documented commands, read: the ``python -m medimg.<module>`` lines of README.md and docs/*.md parsed into
Hydra overrides (sweeps at their first value, reader's paths as stand-in tokens), the documented overrides merged
with tiny ones, and the check that each documented value reaches the composed config. Used by
tests/test_documented_commands.py; not a test module itself."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:srun\s+)?(?:python3?|torchrun(?:\s+--?\S+)*)\s+-m\s+medimg\.(\w+)(?=\s|$)(.*)$")
INLINE_CODE = re.compile(r"`([^`]+)`")
PLACEHOLDER = re.compile(r"<[^<>]*>")

# Keys whose documented values are paths on the reader's machine; each becomes a stand-in (a token here).
PATH_KEYS = {"ckpt_path", "onnx_path", "input", "output_dir", "cv_dir", "dataset.root", "dataset.csv",
             "dataset.image_root", "distill.teacher"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm"}
NEEDS_CKPT = ("evaluate", "predict", "explain", "export", "serve")  # a checkpoint (or cv_dir/onnx_path) to work on

# Training commands that train for real (their overrides after parsing); the rest are composed and checked.
TRAIN_FOR_REAL = {(), ("debug=fdr",)}


# ---------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Documented:
    """One command as a doc shows it: where, which ``medimg.<module>``, and its arguments (comments removed)."""

    file: str
    line: int
    module: str
    args: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def commands_in(file: str, text: str) -> list[Documented]:
    """The ``medimg`` commands a Markdown text shows: in indented or fenced code lines (a trailing ``\\``
    continues one on the next line) and in inline code, each at the line it starts on."""
    lines, found = text.splitlines(), []
    fenced, i = False, 0
    while i < len(lines):
        line, number = lines[i], i + 1
        i += 1
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        spans = INLINE_CODE.findall(line)
        if fenced or line.startswith(("    ", "\t")):
            code = line.strip()
            while code.endswith("\\") and i < len(lines):  # a command continued on the next line
                code = code[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            spans = [code, *spans]
        for m in filter(None, (COMMAND.match(span.strip()) for span in spans)):
            args = PLACEHOLDER.sub(lambda p: p.group(0).replace(" ", "_"), m.group(2))  # <the same ckpt>
            found.append(Documented(file, number, m.group(1), tuple(shlex.split(args, comments=True))))
    return found


def documented_commands() -> list[Documented]:
    """Every ``medimg`` command shown in README.md and docs/*.md, in the order they appear."""
    return [c for path in DOCS for c in commands_in(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))]


def _parse(override: str):
    """Hydra's own reading of one command-line override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([override])[0]


def _is_group(key: str) -> bool:
    """Whether ``key`` (``backbone``, ``hydra/launcher``) names a config group rather than a config key."""
    from medimg.cli import CONF_DIR

    return (Path(CONF_DIR) / key).is_dir()


def _key(override: str) -> str:
    """The key (or group) an override sets: ``+dataset.x@pkg=1`` -> ``dataset.x`` (tokens need no parsing)."""
    return override.partition("=")[0].lstrip("+~").partition("@")[0]


def _token(key: str, value: str) -> str:
    """The stand-in token for a documented path value."""
    if key == "input":
        return "<image>" if Path(value).suffix.lower() in IMAGE_SUFFIXES else "<images>"
    return {"ckpt_path": "<ckpt>", "onnx_path": "<onnx>", "output_dir": "<out>", "cv_dir": "<cv>",
            "dataset.root": "<folder>", "dataset.csv": "<csv>", "dataset.image_root": "<folder>",
            "distill.teacher": "<ckpt>"}[key]


@dataclass(frozen=True)
class Case:
    """A documented command as Hydra overrides: sweeps at their first value, paths as stand-in tokens."""

    doc: Documented
    overrides: tuple[str, ...]
    print_only: bool = False       # --cfg job: the command prints its composed config and runs nothing
    dropped: tuple[str, ...] = ()  # overrides that cannot be honoured here (resuming a run that does not exist)

    @property
    def trains(self) -> bool:
        """Whether this case trains for real."""
        return (self.doc.module == "train" and not self.print_only and not self.dropped
                and self.overrides in TRAIN_FOR_REAL)

    def has(self, override: str) -> bool:
        """Whether the command sets exactly ``override`` (e.g. ``robustness=true``)."""
        return override in self.overrides

    def value_of(self, key: str) -> str | None:
        """The documented value of ``key`` (as written), or None."""
        for o in self.overrides:
            if _key(o) == key:
                return o.partition("=")[2]
        return None


def case_of(doc: Documented) -> Case:
    """Parse a documented command into a Case; an unknown flag or placeholder raises ValueError, an override
    Hydra cannot read raises Hydra's OverrideParseException."""
    from medimg.predict import expand_shorthands

    args = list(expand_shorthands(list(doc.args)) if doc.module == "predict" else doc.args)
    overrides, dropped, print_only = [], [], False
    while args:
        a = args.pop(0)
        if a in ("-m", "--multirun"):
            continue
        if a in ("--cfg", "-c"):
            args.pop(0)
            print_only = True
            continue
        if a.startswith("-"):
            raise ValueError(f"{doc.where}: a flag this test does not know: {a}")
        (element, _, value), key = a.partition("="), _key(a)
        if key in PATH_KEYS:  # a path on the reader's machine, often with <placeholders> Hydra cannot parse
            if doc.module == "train" and key == "ckpt_path":
                dropped.append(a)  # resume needs a real run's last.ckpt
                continue
            a = f"{element}={_token(key, value)}"
        elif "<" in value or "..." in value:
            raise ValueError(f"{doc.where}: a placeholder this test does not know how to fill: {a}")
        else:
            o = _parse(a)
            if o.is_sweep_override():
                a = f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
        overrides.append(a)
    keys = {_key(o) for o in overrides}
    if doc.module in NEEDS_CKPT and not keys & {"ckpt_path", "cv_dir", "onnx_path"}:
        overrides.append("ckpt_path=<ckpt>")  # an inline mention names the command only: give it its checkpoint
    if doc.module == "predict" and "input" not in keys:
        overrides.append("input=<images>")
    return Case(doc, tuple(overrides), print_only, tuple(dropped))


def merged(documented: list[str], tiny: list[str]) -> list[str]:
    """The documented overrides plus the tiny ones: a tiny key replaces the same documented key, a documented
    group choice (``logger=mlflow``) replaces the tiny one."""
    tiny_keys = {_key(t) for t in tiny if not _is_group(_key(t))}
    groups = {_key(d) for d in documented if _is_group(_key(d))}
    return ([d for d in documented if _key(d) not in tiny_keys]
            + [t for t in tiny if _key(t) not in groups])


def composed(name: str, overrides: list[str]):
    """conf/<name>.yaml composed with ``overrides`` (a DictConfig, as the command's main() receives it)."""
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _select(plain: dict[str, Any], key: str) -> Any:
    node: Any = plain
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"the composed config has no {key}"
        node = node[part]
    return node


def assert_documented_values(documented: list[str], final: list[str], plain: dict[str, Any]) -> None:
    """Each documented ``key=value`` that the tiny settings left in place has that value in the composed config
    (group choices and hydra.* keys are Hydra's own business and not in the job config)."""
    for override in documented:
        o = _parse(override)
        if override not in final or _is_group(o.key_or_group) or o.key_or_group.startswith("hydra."):
            continue
        if o.is_delete():
            continue
        assert _select(plain, o.key_or_group) == o.value(), f"{override} did not reach the composed config"


def plain_of(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
