"""Reading recipes and writing configs: TOML text <-> the nested dicts config.py checks.

``read`` finds a recipe (a TOML file, or the bundled recipe of a zoo model), reads it bounded and
parses it with one-line errors; ``coerce`` checks one value against a config field's type (TOML
values and ``--set key=value`` strings alike); ``dumps`` writes the resolved config back.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
import typing
from pathlib import Path

from models import recipe_path, zoo_names
from pipeline.core import files
from pipeline.core.errors import ConfigError


def read(recipe: str | os.PathLike) -> tuple[dict, str]:
    """The recipe's tables and where they came from; model/data paths in it are made
    absolute relative to the recipe's directory."""
    path = resolve(recipe)
    blob = files.read_bytes(path, "recipe", ConfigError, "recipe")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("The recipe is not UTF-8 text", f"{path} (byte {exc.start}: "
                          f"{blob[exc.start:exc.start + 1]!r})",
                          "Save the recipe as UTF-8 (TOML files must be UTF-8)")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("The recipe is not valid TOML", f"{path} ({exc})",
                          "Fix the TOML syntax")
    except RecursionError:  # tomllib parses nested arrays/inline tables recursively
        raise ConfigError("The recipe nests arrays or tables too deeply to parse",
                          str(path), "A recipe needs one level of [section] tables") \
            from None
    for section in ("model", "data"):  # recipe-relative file paths
        p = raw.get(section, {}).get("path") if isinstance(raw.get(section), dict) else None
        if isinstance(p, str) and p and not os.path.isabs(p):
            raw[section]["path"] = str((path.parent / p).resolve())
    return raw, str(path)


def resolve(recipe: str | os.PathLike) -> Path:
    """The file a recipe argument names: an existing path (a directory named like a zoo model
    excepted), else the bundled recipe of that zoo model."""
    path = Path(recipe)
    try:
        exists = os.path.lexists(path)
    except ValueError:  # a NUL in the name
        exists = False
    if exists and not (path.is_dir() and str(recipe) in zoo_names()):
        return path  # read (and its kind checked) by files.read_bytes
    bundled = recipe_path(str(recipe))
    if bundled is not None:
        return bundled
    raise ConfigError("Recipe not found", str(recipe),
                      f"Pass a TOML file or a bundled model name ({', '.join(zoo_names())})")


def dumps(d: dict) -> str:
    """Minimal TOML writer for the config tree (scalars, string lists, one level of tables)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {val(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def coerce(value, annotation: str, key: str):
    """Check a TOML/flag value against the field's annotation (given as a string)."""
    kind = annotation.split("[")[0].strip()
    if isinstance(value, str) and kind in ("int", "float", "bool"):  # from --set key=value
        text = value.strip()
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise ConfigError(f"Config key {key} expects {kind}", repr(value),
                              f"Pass a valid {kind}")
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "tuple":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - every field uses one of the kinds above
        ok = True
    if not ok:
        raise ConfigError(f"Config key {key} expects {kind}", repr(value), f"Pass a {kind}")
    return value


def unknown_key(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f"Did you mean '{close[0]}'?" if close else f"Known keys: {', '.join(known)}"
    return ConfigError(f"Unknown config key in {where}", key, hint)
