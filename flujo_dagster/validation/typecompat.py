"""Is one annotation assignable to another? A small, conservative check for rule V-TYPE."""

from __future__ import annotations

import collections.abc as cabc
import datetime
import decimal
import enum
import pathlib
import types
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, TypeAdapter
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError
from pydantic.types import EncodedBytes, EncodedStr

__all__ = [
    "ambiguous_union_problem",
    "is_assignable",
    "json_round_trip_problem",
    "type_adapter",
    "type_name",
    "untyped_problem",
]

_NUMERIC_TOWER: dict[type, tuple[type, ...]] = {float: (int,), complex: (int, float)}
_ABSTRACT_ORIGINS: dict[object, tuple[object, ...]] = {
    cabc.Sequence: (list, tuple),
    cabc.MutableSequence: (list,),
    cabc.Mapping: (dict,),
    cabc.MutableMapping: (dict,),
    cabc.Set: (set, frozenset),
    cabc.Iterable: (list, tuple, set, frozenset, dict),
    cabc.Collection: (list, tuple, set, frozenset, dict),
}


def _strip(tp: object) -> object:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_members(tp: object) -> tuple[object, ...] | None:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return get_args(tp)
    return None


def _origin_matches(src: object, dst: object) -> bool:
    if src == dst:
        return True
    if src in _ABSTRACT_ORIGINS.get(dst, ()):
        return True
    return isinstance(src, type) and isinstance(dst, type) and issubclass(src, dst)


def is_assignable(src: object, dst: object) -> bool:
    """True when every value of annotation `src` is a valid value of annotation `dst`.

    Conservative: unions, Optional, Literal, Annotated, generics (covariant args), subclasses and the numeric
    tower are understood; anything else must be equal.
    """
    src, dst = _strip(src), _strip(dst)
    if dst is Any or dst is object or src is Any or src == dst:
        return True
    src_members = _union_members(src)
    if src_members is not None:
        return all(is_assignable(m, dst) for m in src_members)
    dst_members = _union_members(dst)
    if dst_members is not None:
        return any(is_assignable(src, m) for m in dst_members)
    if src is None:
        src = type(None)
    if dst is None:
        dst = type(None)
    if get_origin(src) is Literal:
        values = get_args(src)
        if get_origin(dst) is Literal:
            return set(values) <= set(get_args(dst))
        return isinstance(dst, type) and all(isinstance(v, dst) for v in values)
    src_origin, dst_origin = get_origin(src) or src, get_origin(dst) or dst
    if not _origin_matches(src_origin, dst_origin):
        return isinstance(src, type) and isinstance(dst, type) and src in _NUMERIC_TOWER.get(dst, ())
    src_args, dst_args = get_args(src), get_args(dst)
    if not dst_args:
        return True
    if not src_args:
        return False
    if dst_origin is tuple and dst_args[-1] is Ellipsis:
        item = dst_args[0]
        return all(is_assignable(a, item) for a in src_args if a is not Ellipsis)
    if len(src_args) != len(dst_args):
        return False
    return all(is_assignable(a, b) for a, b in zip(src_args, dst_args, strict=True))


def type_name(tp: object) -> str:
    """A short readable name of an annotation (`list[Source]`, `str | None`)."""
    if isinstance(tp, type) and not get_args(tp):
        return tp.__name__
    text = repr(tp)
    return text.replace("typing.", "").replace("NoneType", "None")


_NOT_ROUND_TRIPPING: dict[object, str] = {
    bytes: "bytes that are not UTF-8 do not survive JSON; use pydantic's Base64Bytes",
    complex: "complex numbers have no JSON form",
}


def _encoded(metadata: cabc.Iterable[object]) -> bool:
    """True when pydantic metadata encodes the value for JSON (`Base64Bytes`, `Base64Str`, ...)."""
    return any(isinstance(m, EncodedBytes | EncodedStr) for m in metadata)


def json_round_trip_problem(tp: object) -> str | None:
    return _cached(_json_round_trip_problem, tp)


def _json_round_trip_problem(tp: object) -> str | None:
    """Why values of annotation `tp` would not survive a JSON round trip, or None when they do."""
    if get_origin(tp) is Annotated and _encoded(get_args(tp)[1:]):
        return None
    tp = _strip(tp)
    if tp in _NOT_ROUND_TRIPPING:
        return _NOT_ROUND_TRIPPING[tp]
    if tp is object:
        return "a plain `object` annotation loses the value's type in JSON; declare the concrete type"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            if _encoded(info.metadata):
                continue
            problem = json_round_trip_problem(info.annotation)
            if problem is not None:
                return f"field {name!r} of {tp.__name__}: {problem}"
        return None
    for arg in get_args(tp):
        if arg is Ellipsis or get_origin(tp) is Literal or isinstance(arg, list):  # a Callable's parameter list
            continue
        problem = json_round_trip_problem(arg)
        if problem is not None:
            return problem
    if get_origin(tp) in (dict, cabc.Mapping) and get_args(tp):
        key = _strip(get_args(tp)[0])
        if key not in (str, int, float, bool) and not (isinstance(key, type) and issubclass(key, str)):
            return f"dict keys of type {type_name(key)} become JSON strings and cannot be read back"
    try:
        type_adapter(tp)
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        first = str(exc).splitlines()[0]
        return f"pydantic cannot build a JSON schema for it ({first})"
    return None


_STRING_LIKE: tuple[type, ...] = (
    str,
    bytes,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
    pathlib.PurePath,
)
_ARRAY_LIKE: tuple[type, ...] = (list, tuple, set, frozenset)


def _json_kind(tp: object) -> str | None:
    tp = _strip(tp)
    origin = get_origin(tp) or tp
    if not isinstance(origin, type):
        return None
    if issubclass(origin, enum.Enum):
        values = [m.value for m in origin]
        return "string" if values and all(isinstance(v, str) for v in values) else None
    if issubclass(origin, _STRING_LIKE):
        return "string"
    if issubclass(origin, _ARRAY_LIKE):
        return "array"
    return None


def ambiguous_union_problem(tp: object) -> str | None:
    return _cached(_ambiguous_union_problem, tp)


def _ambiguous_union_problem(tp: object) -> str | None:
    """Why a union's members cannot be told apart once stored as JSON (e.g. `str | datetime`: a datetime
    comes back as a str), or None. Checks nested annotations too."""
    tp = _strip(tp)
    members = _union_members(tp)
    if members is not None:
        by_kind: dict[str, list[object]] = {}
        for member in members:
            kind = _json_kind(member)
            if kind is not None:
                by_kind.setdefault(kind, []).append(_strip(member))
        for kind, same in by_kind.items():
            if len(same) > 1:
                names = " and ".join(type_name(m) for m in same)
                return f"{names} are all JSON {kind}s, so a stored value may load back as the wrong one"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            problem = ambiguous_union_problem(info.annotation)
            if problem is not None:
                return f"field {name!r} of {tp.__name__}: {problem}"
        return None
    for arg in get_args(tp) if get_origin(tp) is not Literal else ():
        problem = ambiguous_union_problem(arg) if arg is not Ellipsis else None
        if problem is not None:
            return problem
    return None


def untyped_problem(tp: object) -> str | None:
    return _cached(_untyped_problem, tp)


def _untyped_problem(tp: object) -> str | None:
    """Why a value of `tp` may not load back as it was stored: `Any` keeps only the JSON form of a value
    (a datetime comes back as a str, a model as a dict). None when `tp` has no `Any` in it."""
    tp = _strip(tp)
    if tp is Any:
        return "Any keeps only the JSON form of a value (a datetime comes back as a str, a model as a dict)"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            problem = untyped_problem(info.annotation)
            if problem is not None:
                return f"field {name!r} of {tp.__name__}: {problem}"
        return None
    if get_origin(tp) is Literal:
        return None
    for arg in get_args(tp):
        problem = untyped_problem(arg) if arg is not Ellipsis else None
        if problem is not None:
            return problem
    return None


_CACHE: dict[tuple[object, object], str | None] = {}


def _cached(check: Callable[[object], str | None], tp: object) -> str | None:
    """Memoise a type check per annotation (big pipelines repeat the same few types thousands of times)."""
    try:
        key = (check, tp)
        if key in _CACHE:
            return _CACHE[key]
    except TypeError:  # unhashable annotation: check it every time
        return check(tp)
    result = _CACHE[key] = check(tp)
    return result


def type_adapter(annotation: object) -> TypeAdapter[object]:
    """A pydantic `TypeAdapter` for an annotation known only at run time (a context field's, constraints kept)."""
    return TypeAdapter[object](cast(Any, annotation))  # pydantic's parameter is a static `TypeForm`
