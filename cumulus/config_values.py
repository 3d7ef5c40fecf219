"""How a setting's value from a YAML file, the environment or a flag becomes a typed, checked value of
:class:`cumulus.config.Settings`. Every error is a :class:`~cumulus.errors.ConfigError` naming the key."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, get_type_hints

from cumulus.errors import ConfigError


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # imported here: a client-only install (no PyYAML) imports cumulus.config for default_address

    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError("config", f"cannot read {path}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError("config", f"{path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def apply_mapping(target: Any, data: Mapping[str, Any], prefix: str) -> None:
    hints = get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(dotted, f"unknown setting; allowed here: {', '.join(sorted(names))}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(dotted, f"must be a mapping with keys {', '.join(f.name for f in dataclasses.fields(current))}")
            apply_mapping(current, value, prefix=f"{dotted}.")
        else:
            setattr(target, key, coerce(dotted, value, hints[key]))


def apply_environment(settings: Any, environ: Mapping[str, str]) -> None:
    for f in dataclasses.fields(settings):
        section = getattr(settings, f.name)
        if dataclasses.is_dataclass(section):
            for sub in dataclasses.fields(section):
                name = f"CUMULUS_{f.name}_{sub.name}".upper()
                if name in environ:
                    set_dotted(settings, f"{f.name}.{sub.name}", environ[name], source=name)
        else:
            name = f"CUMULUS_{f.name}".upper()
            if name in environ:
                set_dotted(settings, f.name, environ[name], source=name)


def set_dotted(settings: Any, dotted: str, value: Any, source: str | None = None) -> None:
    *parents, leaf = dotted.split(".")
    target: Any = settings
    for part in parents:
        if not hasattr(target, part):
            raise ConfigError(dotted, "unknown setting")
        target = getattr(target, part)
    if leaf not in {f.name for f in dataclasses.fields(target)}:
        raise ConfigError(dotted, "unknown setting")
    key = f"{dotted} (from {source})" if source else dotted
    setattr(target, leaf, coerce(key, value, get_type_hints(type(target))[leaf]))


def coerce(key: str, value: Any, kind: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(key, f"{value!r} is not a boolean (true/false)")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(key, f"{value!r} is not an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(key, f"{value!r} is not an integer") from None
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"{value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"{value!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(key, f"{value!r} must be a finite number")
        return number
    if kind == dict[str, float]:
        if isinstance(value, str):  # from the environment: MODEL=PRICE,MODEL=PRICE
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ConfigError(key, f"{value!r}: write NAME=NUMBER,NAME=NUMBER")
            value = {name.strip(): number for name, _, number in pairs}
        if not isinstance(value, dict):
            raise ConfigError(key, f"{value!r} is not a mapping of names to numbers")
        return {str(name): coerce(f"{key}[{name!r}]", number, float) for name, number in value.items()}
    if kind == list[str]:
        if isinstance(value, str):  # from the environment: A,B,C
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"{value!r} is not a list of strings")
        return [coerce(f"{key}[{index}]", item, str) for index, item in enumerate(value)]
    if kind == dict[str, str]:
        if isinstance(value, str):  # from the environment: NAME=VALUE,NAME=VALUE
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ConfigError(key, f"{value!r}: write NAME=VALUE,NAME=VALUE")
            value = {name.strip(): text.strip() for name, _, text in pairs}
        if not isinstance(value, dict):
            raise ConfigError(key, f"{value!r} is not a mapping of names to strings")
        if any(not isinstance(name, str) for name in value):  # YAML reads 3.10 as the number 3.1
            raise ConfigError(key, f"{value!r}: quote every key (\"3.10\": ..., not 3.10: ...)")
        return {str(name): coerce(f"{key}[{name!r}]", text, str) for name, text in value.items()}
    if kind is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(key, f"{value!r} is not a string")
        return str(value)
    raise ConfigError(key, f"unsupported setting type {kind!r}")


def check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"{value!r} is out of range; allowed {low:g}..{high:g}")


__all__ = ["apply_environment", "apply_mapping", "check_range", "coerce", "read_yaml", "set_dotted"]
