"""Model families by `config.model.name`: `get_family(name)` and `known_names()`.

A family is the `FAMILY` object of the module `mbt.models.<name>` (see `mbt.models.family`);
an unregistered name is looked up by importing that module, so a new family needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

from mbt.models import family as family_lib

_FAMILIES: dict[str, family_lib.ModelFamily] = {}


def register(family: family_lib.ModelFamily) -> family_lib.ModelFamily:
    """Makes `family` findable by its name (a family outside `mbt.models` registers itself)."""
    _FAMILIES[family.name] = family
    return family


def _from_module(name: str | None) -> family_lib.ModelFamily | None:
    """The `FAMILY` of `mbt.models.<name>`, or None when there is no such module or object."""
    if not isinstance(name, str) or not name.isidentifier():
        return None
    module_name = f"mbt.models.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None
        raise
    family = getattr(module, "FAMILY", None)
    if isinstance(family, family_lib.ModelFamily) and family.name == name:
        return register(family)
    return None


def known_names() -> tuple[str, ...]:
    """The registered families and every `mbt.models` module that defines one, sorted."""
    package = importlib.import_module("mbt.models")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _FAMILIES:
            _from_module(info.name)
    return tuple(sorted(_FAMILIES))


def get_family(name: str | None) -> family_lib.ModelFamily:
    """The family of `config.model.name`; ValueError listing the known names otherwise."""
    family = _FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        family = _from_module(name)
    if family is None:
        raise ValueError(
            f"config.model.name={name!r}; allowed: {list(known_names())} (the model families, "
            "one module mbt/models/<name>.py each)"
        )
    return family
