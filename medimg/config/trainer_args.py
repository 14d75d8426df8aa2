"""``+trainer.<arg>=...``: any Lightning Trainer argument passes through, and nothing else does.

A key added under ``trainer`` that the Trainer does not take (``+trainer.max_epoch=1``) would otherwise reach
``lightning.Trainer(...)`` after the data is loaded and end the run in a traceback; it is refused when the
config is read, with the closest valid key named.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from medimg.config.schema import closest
from medimg.errors import ConfigError


@functools.cache
def trainer_arguments() -> tuple[str, ...]:
    """The keyword arguments of ``lightning.Trainer``."""
    from lightning.pytorch import Trainer

    params = inspect.signature(Trainer.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD)


def check_trainer_arguments(extra: Mapping[str, Any], declared: Iterable[str], where: str) -> None:
    """Refuse the keys of ``extra`` (added with ``+trainer.<key>``) that the Lightning Trainer does not take."""
    valid = trainer_arguments()
    unknown = sorted(k for k in extra if k not in valid)
    if not unknown:
        return
    k = unknown[0]
    match = closest(k, [*declared, *valid])
    fix = f"did you mean {where}.{match}={extra[k]}?" if match else (
        f"the Trainer's arguments: {', '.join(valid)}")
    raise ConfigError(f"{where}.{k} is neither a medimg trainer key nor a Lightning Trainer argument; {fix}")
