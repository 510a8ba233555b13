"""Options objects with keyword shorthand: a class takes small config objects, and any of their fields by name.

    loop = TrainerOptions(epochs=5, batch_size=16)
    Trainer(model, data, options=loop)              # the object
    Trainer(model, data, epochs=5, batch_size=16)   # the same, by name: each field goes to its object

:func:`with_overrides` is the one place such shorthand is sorted into the objects; a name no object has is
refused naming the names there are, so a misspelt option never passes silently.
"""

from __future__ import annotations

import dataclasses

from .errors import ConfigError


def with_overrides(objects: list, overrides: dict, owner: str) -> list:
    """``objects`` (dataclass instances) with each of ``overrides`` set on the object that has that field."""
    fields = [{f.name for f in dataclasses.fields(o)} for o in objects]
    unknown = sorted(set(overrides) - set().union(*fields))
    if unknown:
        known = sorted(set().union(*fields))
        raise ConfigError(f"{owner} takes no option {', '.join(map(repr, unknown))}; its options are: {', '.join(known)}")
    return [dataclasses.replace(o, **{k: v for k, v in overrides.items() if k in names}) if overrides else o
            for o, names in zip(objects, fields)]
