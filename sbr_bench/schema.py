"""Typed schemas for the config groups, and the one line a bad value gets.

Two kinds of schema, both checked by pydantic before any model loads (``sbr_bench.settings``):

- the settings groups the pipeline reads (``attack``, ``align``, ``eval``, ``adapter``, ``trainer``,
  ``logger``, ``paths`` and the top-level keys) have a model in ``sbr_bench/settings.py``;
- the plug-in groups (``model``, ``data``, ``defense``, ``defense@stack``, ``judge``) build an object
  from their ``_target_``, and the target's own signature is their schema: its parameters are the
  keys the group may hold, their annotations the types and ranges. A new defense gets its settings
  checked by annotating its ``__init__`` with the types below, e.g.
  ``lam: NonNegativeFloat = 0.5``, ``mask: Literal["response", "paired_diff"] = "response"``,
  ``prompts: Annotated[list[str], NonEmpty] | None = None``.

Validation is strict: an integer is a number, but a number is not an integer, a string is not a
number and ``1`` is not ``true``; NaN and infinities are refused. What is printed by
``sbr-bench --cfg job`` is therefore exactly what runs: nothing is converted on the way in.

Errors name the key with its config path, the value and what is allowed, in one line:
``attack.lr=abc must be a number``, ``defense.reduction=mean is not one of: elementwise_mean,
paper_sum``, ``defense.lamm: no such key; the keys of defense are: lam, num_anchors, ...``.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Gt, MinLen
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model, with_config
from typing_extensions import is_typeddict

from sbr_bench.errors import ConfigError

# --- the types a schema declares ------------------------------------------------------------------


def between(low: float, high: float) -> AfterValidator:
    """A closed range, reported as ``is outside [low, high]``."""

    def inside(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"is outside [{show(low)}, {show(high)}]")
        return value

    return AfterValidator(inside)


PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, between(0, 1)]  # a share: poison ratio, warm-up ratio, thresholds
Percent = Annotated[float, between(0, 100)]
NonEmptyStr = Annotated[str, MinLen(1)]
NonEmpty = MinLen(1)  # Annotated[list[str], NonEmpty]: a list that must hold something


def _existing_file(value: str) -> str:
    if not Path(value).expanduser().is_file():
        raise ValueError("no such file")
    return value


def _existing_folder(value: str) -> str:
    if not Path(value).expanduser().is_dir():
        raise ValueError("no such folder")
    return value


def looks_like_path(source: str) -> bool:
    """A local folder (absolute, relative, home) rather than a hub id such as ``org/name``."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def _model_source(value: str) -> str:
    """A local folder that exists, or a hub id that can be had (in the local hub cache when offline)."""
    if looks_like_path(value):
        if not Path(value).expanduser().is_dir():
            raise ValueError("no such folder; give a local copy of the model or its hub id")
        return value
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        from huggingface_hub.constants import HF_HUB_CACHE

        if not (Path(HF_HUB_CACHE) / f"models--{value.replace('/', '--')}").is_dir():
            raise ValueError(
                f"is not in the local hub cache ({HF_HUB_CACHE}) and HF_HUB_OFFLINE=1; download it there "
                "(huggingface-cli download <id>) or give a local folder"
            )
    return value


ExistingFile = Annotated[str, MinLen(1), AfterValidator(_existing_file)]
ExistingFolder = Annotated[str, MinLen(1), AfterValidator(_existing_folder)]
ModelSource = Annotated[str, MinLen(1), AfterValidator(_model_source)]  # a hub id or a local model folder

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


# A TypedDict whose keys are checked like a model's: ``@keys_checked class Sizes(TypedDict): ...``
# (use typing_extensions.TypedDict: pydantic needs it before Python 3.12).
keys_checked = with_config(ConfigDict(extra="forbid", strict=True, allow_inf_nan=False))


class Schema(BaseModel):
    """Base of the settings models: unknown keys refused, no conversion, frozen once validated."""

    model_config = ConfigDict(**STRICT, frozen=True)


# --- plug-in groups: the _target_'s signature is the schema ----------------------------------------

HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")


@cache
def target_schema(target: Callable) -> type[BaseModel]:
    """A pydantic model of the keyword arguments ``target`` takes (a class: its ``__init__``)."""
    function = target.__init__ if isinstance(target, type) else target
    fields: dict[str, Any] = {}
    extra = "forbid"
    if isinstance(target, type) and function.__qualname__ in ("object.__init__", "Module.__init__"):
        # No __init__ of its own (NoDefense): torch's Module takes *args / **kwargs, the option takes nothing.
        return create_model(f"{target.__name__}Settings", __config__=STRICT)
    hints = typing.get_type_hints(function, include_extras=True)
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is parameter.VAR_KEYWORD:
            extra = "allow"  # **kwargs: keys beyond the named ones are the target's to judge
            continue
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (hints.get(name, Any), default)
    config = ConfigDict(**{**STRICT, "extra": extra})
    return create_model(f"{getattr(target, '__name__', 'target')}Settings", __config__=config, **fields)


def locate(target: str, path: str) -> Callable:
    """The callable a ``_target_`` names, or one line saying it cannot be imported."""
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}._target_={target} cannot be imported ({reason})") from None


def check_plugin(node: Mapping[str, Any], path: str) -> None:
    """Check a plug-in group's keys against its ``_target_``'s signature."""
    if "_target_" not in node:
        raise ConfigError(f"{path} has no _target_; a {path} option names the class or function it builds")
    target = locate(str(node["_target_"]), path)
    kwargs = {k: v for k, v in node.items() if k not in HYDRA_KEYS}
    check(target_schema(target), kwargs, path)


# --- checking and the one line ---------------------------------------------------------------------


def check(schema: type[BaseModel], data: Any, path: str) -> BaseModel:
    """``schema`` validated from ``data`` (plain Python values), or ConfigError with one line."""
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain(err, data, path, schema)) from None


def explain(err: ValidationError, data: Any, path: str, schema: type[BaseModel]) -> str:
    """The first problem of ``err`` as one line: ``<path>.<key>=<value> <what is allowed>``."""
    errors = err.errors()
    key = config_path(errors[0]["loc"], data)
    # A union (``str | list[str]``) reports one error per member for the same key: say them all.
    same = [e for e in errors if config_path(e["loc"], data) == key]
    full = ".".join(p for p in (path, key) if p)
    first = same[0]
    if first["type"] == "missing":
        return f"{full} is missing; set it in the YAML option or on the command line ({full}=<value>)"
    if first["type"] == "extra_forbidden":
        parent = full.rsplit(".", 1)[0] if "." in full else full
        known = sorted(allowed_keys(schema, key))
        if not known:
            return f"{full}: no such key; {parent} takes no settings"
        return f"{full}: no such key; the keys of {parent} are: {', '.join(known)}"
    if first["type"] == "value_error" and isinstance(first["input"], Mapping):  # a check across keys
        return f"{full}: {phrase(first)}" if full else phrase(first)
    phrases = list(dict.fromkeys(phrase(e) for e in same))
    # "must be a string or must be a list" -> "must be a string or a list"
    said = " or ".join([phrases[0], *(p.removeprefix("must be ") for p in phrases[1:])])
    joiner = " " if said.startswith(("is ", "must ")) else ": "  # a validator's own sentence: after a colon
    return f"{full}={show(first['input'])}{joiner}{said}"


def config_path(loc: tuple, data: Any) -> str:
    """The config key of an error location, without pydantic's union-member tags (``str``, ``list[str]``)."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            parts.append(f"[{item}]")
            node = node[item]
        elif isinstance(item, str) and isinstance(node, Mapping) and item in node:
            parts.append(f".{item}" if parts else item)
            node = node[item]
        elif isinstance(item, str) and not parts and isinstance(node, Mapping):
            parts.append(item)  # a missing or extra key of the top node
            node = None
        elif isinstance(item, str) and isinstance(node, Mapping):
            parts.append(f".{item}")  # a missing key further down
            node = None
    return "".join(parts)


def allowed_keys(schema: type[BaseModel], key: str) -> list[str]:
    """The keys allowed beside ``key`` (a dotted path below ``schema``): the fields of the model or
    TypedDict that holds it."""
    fields = _fields(schema)
    for part in key.split(".")[:-1]:
        holder = next((m for m in _members(fields.get(part)) if _fields(m)), None)
        if holder is None:
            return []
        fields = _fields(holder)
    return list(fields)


def _fields(annotation: Any) -> dict[str, Any]:
    """Field name -> annotation of a pydantic model or a TypedDict; {} for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: field.annotation for name, field in annotation.model_fields.items()}
    if is_typeddict(annotation):
        return typing.get_type_hints(annotation, include_extras=True)
    return {}


def _members(annotation: Any) -> list[Any]:
    """The members of a union annotation (the annotation itself otherwise), Annotated stripped."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _members(args[0])
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in args for m in _members(a)]
    return [annotation]


def phrase(error: dict) -> str:
    """What is allowed, in words, for one pydantic error."""
    kind, ctx = error["type"], error.get("ctx") or {}
    words = {
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
        "dict_type": "must be a mapping of keys to values",
        "model_type": "must be a mapping of keys to values",
        "model_attributes_type": "must be a mapping of keys to values",
        "none_required": "must be null",
    }
    if kind in words:
        return words[kind]
    if kind == "greater_than":
        return f"must be > {show(ctx['gt'])}"
    if kind == "greater_than_equal":
        return f"must be >= {show(ctx['ge'])}"
    if kind == "less_than":
        return f"must be < {show(ctx['lt'])}"
    if kind == "less_than_equal":
        return f"must be <= {show(ctx['le'])}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"is not one of: {expected}"
    if kind == "too_short":
        least = ctx.get("min_length")
        return "must not be empty" if least == 1 else f"must hold at least {least} items"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "union_tag_invalid":
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"is not one of: {expected}"
    return str(error["msg"]).lower()


def show(value: Any) -> str:
    """A value as it would be written on the command line (``null``, ``true``, ``[a, b]``, ``1e-05``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if value != 0 else "0"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)
