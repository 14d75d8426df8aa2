"""The command line's overrides, checked before Hydra runs the command.

Hydra answers an override of a key the config lacks (``trainer.max_epoch=1``) with the advice to add it with
``+``; following that advice gets the key past Hydra into a run that fails much later. ``guard_command_line``
composes the command's config with the overrides first and refuses such a key in one line that names the
closest valid key of its section (``did you mean trainer.max_epochs=1?``), before any work. A key added with
``+`` reaches the settings, which refuse it the same way (``medimg.config.schema``).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from medimg.cli import CONF_DIR, debug_enabled
from medimg.config.schema import closest
from medimg.errors import ConfigError

# flags that take the next argument as their value; a command line naming another config is not checked
VALUED = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun")
OWN_CONFIG = ("-cp", "-cn", "--config-path", "--config-name", "--config-dir", "-cd")
NO_RUN = ("-h", "--help", "--hydra-help", "--version", "--shell-completion", "-sc")


def overrides_of(args: list[str]) -> list[str] | None:
    """The overrides among ``args`` (flags dropped), or None when the command line composes another config or
    asks for help."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.split("=", 1)[0] in OWN_CONFIG or a in NO_RUN:
            return None
        elif a in VALUED:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def _one_job(overrides: list[str]) -> list[str] | None:
    """A sweep's overrides as its first job's (``seed=1,2`` -> ``seed=1``; an interval is left out), or None
    when Hydra cannot parse them (its own message says where)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return None
    out = []
    for o in parsed:
        if not o.is_sweep_override():
            out.append(o.input_line)
            continue
        try:
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        except Exception:  # an interval (Optuna) cannot be enumerated: its key is checked by the sweep
            pass
    return out


def _compose(config_name: str, overrides: list[str], config_dir: str) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def unknown_key(cfg: Any, key: str, value: str | None) -> str:
    """The message for ``key``, which ``cfg`` lacks: the first missing part, and the closest valid key there."""
    from omegaconf import DictConfig

    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:i])
            valid = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            break
        node = node[part]
    else:  # every part exists: Hydra refused the key for another reason
        return f"{key} cannot be set from the command line here"
    full = ".".join(parts[: i + 1])
    match = closest(parts[i], valid)
    if match:
        fix = ".".join([*parts[:i], match, *parts[i + 1:]])
        return f"{full} is not a config key; did you mean {fix}{'=' + value if value is not None else ''}?"
    listed = [k for k in valid if where or k != "hydra"]  # Hydra's own settings are not the command's keys
    return f"{full} is not a config key; the keys of {where or 'the config'}: {', '.join(listed)}"


def _first_unknown(config_name: str, overrides: list[str], config_dir: str) -> tuple[str | None, Any]:
    """The first overridden key the config lacks (None if there is none), and the config (None if it failed)."""
    from hydra.errors import ConfigCompositionException

    try:
        return None, _compose(config_name, overrides, config_dir)
    except ConfigCompositionException as e:
        found = re.match(r"Could not override '([^']+)'", str(e))
        return (found.group(1) if found else None), None


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_overrides(config_name: str, args: list[str], config_dir: str = CONF_DIR) -> None:
    """Raise a ConfigError for an override (without ``+``) of a key that ``config_name`` lacks. Other
    composition errors are left to Hydra, whose message is clear (an unknown group option lists the options)."""
    overrides = overrides_of(args)
    if not overrides:
        return
    overrides = _one_job(overrides)
    if overrides is None:
        return
    bad, _ = _first_unknown(config_name, overrides, config_dir)
    if bad is None:
        return
    given = next((o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0] == bad), None)
    rest, other, cfg = [o for o in overrides if _key(o) != bad], bad, None
    while other is not None and rest:  # the config without the unknown keys: where the valid ones are
        other, cfg = _first_unknown(config_name, rest, config_dir)
        rest = [o for o in rest if _key(o) != other]
    if cfg is None:
        cfg = _compose(config_name, [], config_dir)
    raise ConfigError(unknown_key(cfg, bad, given))


def guard_command_line(config_name: str, argv: list[str] | None = None) -> None:
    """``check_overrides`` for a command's ``sys.argv``: a refused key is one ``error:`` line and exit status 1
    (``MEDIMG_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` keeps the traceback)."""
    try:
        check_overrides(config_name, list(sys.argv[1:] if argv is None else argv[1:]))
    except ConfigError as e:
        if debug_enabled():
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
