"""Bounds on what a pickle from a file may build, checked without running it.

The allow-list unpickler (`tpn.checkpoint`) runs no code from a file, but plain data alone can
still hurt: a tuple nested a million deep crashes the interpreter when it is hashed as a dict
key, a few hundred bytes of tuples that reuse each other (the pickle memo) hash for ever, and
lists that do the same make any walk or message over them endless. Two checks close that:

- `scan` reads a pickle's opcodes (`pickletools.genops`, which decodes but builds nothing) and
  follows the stack symbolically: tuples may not nest deeper than MAX_DEPTH; each dict key and
  set item is bounded in size when expanded (its hash walks all of it), and so is their sum over
  the pickle; dict, list and set fills must target a dict, a list, a set; state (BUILD) is set
  only where the reader allows it (`stateful`). It runs before the unpickler loads anything.
- `check_tree` walks what was loaded, each object once: no container holds itself, the nesting
  stays shallow, the tree expanded stays small, and dicts carry no attributes but `_metadata`
  (what `state_dict()` sets), so later walks and messages over it are bounded too.
"""
from __future__ import annotations

import pickle
import pickletools
import reprlib

MAX_DEPTH = 200  # nesting of containers (a tpn or mmaction2 checkpoint nests fewer than 10)
MAX_EXPANDED = 1_000_000  # objects in a tuple, or in the whole loaded tree, expanded (a checkpoint: thousands)
MAX_HASHED = 10_000_000  # objects hashed as dict keys and set items over a whole pickle (a checkpoint: thousands)

_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_FILLS = {"SETITEM": "dict", "SETITEMS": "dict", "APPEND": "list", "APPENDS": "list", "ADDITEMS": "set"}
# calls whose result holds what a list the scan does not follow held: their hash is not bounded here
_OPAQUE = {"tuple", "Size"}

_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 2, 40, 40


def brief(x) -> str:
    """A short repr of a value read from a file, whatever its size or nesting."""
    return _BRIEF.repr(x)


def shown(text: str, limit: int = 100) -> str:
    """`text` from a file as it is when short and printable (a name in a one-line message), else `brief`."""
    return text if len(text) <= limit and text.isprintable() else brief(text)


class _Sym:
    """An object on the symbolic stack: its kind ("dict", "list", "set", "tuple", "str", "global",
    "object": a call's result, "atom"), `size`/`depth` as a hash sees it (tuples expanded), and
    `name`: a string's value, or the global a call was made with."""
    __slots__ = ("kind", "size", "depth", "name")

    def __init__(self, kind: str = "atom", size: int = 1, depth: int = 1, name=None):
        self.kind, self.size, self.depth, self.name = kind, size, depth, name


_MARK = _Sym("mark")


def _pop_mark(stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise pickle.UnpicklingError("a pickle without its MARK")


def _pop(stack: list, n: int) -> list:
    if len(stack) < n:
        raise pickle.UnpicklingError("a pickle that pops an empty stack")
    items = stack[len(stack) - n:]
    del stack[len(stack) - n:]
    return items


class _Hashing:
    """The hashing a load will do: each key or set item, and their sum over the pickle, bounded."""

    def __init__(self):
        self.total = 0

    def __call__(self, items, what: str) -> None:
        for s in items:
            if s.size > MAX_EXPANDED or s.depth > MAX_DEPTH:
                raise pickle.UnpicklingError(f"{what} nested {s.depth} deep, {s.size} objects when expanded: refused")
            self.total += s.size
        if self.total > MAX_HASHED:
            raise pickle.UnpicklingError(f"a pickle whose dict keys and set items add up to more than {MAX_HASHED} "
                                         "objects to hash: refused")


def _tuple(items) -> _Sym:
    s = _Sym("tuple", 1 + sum(i.size for i in items), 1 + max((i.depth for i in items), default=0))
    if s.depth > MAX_DEPTH:
        raise pickle.UnpicklingError(f"a tuple nested {s.depth} deep: refused")
    return s


def _call(fn: _Sym, args: _Sym | None = None) -> _Sym:
    name = fn.name if fn.kind == "global" else None
    if name == "OrderedDict":
        if args is not None and not (args.kind == "tuple" and args.size == 1):
            raise pickle.UnpicklingError("an OrderedDict built from arguments (torch.save fills an empty one): refused")
        return _Sym("dict", name=name)
    return _Sym("object", size=MAX_EXPANDED + 1 if name in _OPAQUE else 1, name=name)


def _target(stack: list, name: str) -> None:
    """SETITEM(S), APPEND(S), ADDITEMS fill a dict, a list, a set: on anything else the unpickler
    would call the object's own methods (a tensor's `add`, say)."""
    want = _FILLS[name]
    if not stack or stack[-1].kind != want:
        got = stack[-1].name or stack[-1].kind if stack else "nothing"
        raise pickle.UnpicklingError(f"a pickle whose {name} fills a {got}, not a {want}: refused")


def scan(file, stateful=lambda name: False) -> None:
    """Reads one pickle from `file` (bytes or a file object, left after its STOP) and raises
    pickle.UnpicklingError if what it would build breaks the bounds above. BUILD (setting an
    object's state) is allowed only on the results of calls to names `stateful(name)` accepts."""
    stack: list[_Sym] = []
    memo: dict = {}
    hashed = _Hashing()
    for op, arg, _pos in pickletools.genops(file):
        name = op.name
        if name == "MARK":
            stack.append(_MARK)
        elif name in _STRINGS:
            stack.append(_Sym("str", name=arg))
        elif name == "GLOBAL":
            stack.append(_Sym("global", name=str(arg).rpartition(" ")[2]))
        elif name == "STACK_GLOBAL":
            _module, attr = _pop(stack, 2)
            stack.append(_Sym("global", name=attr.name if attr.kind == "str" else None))
        elif name == "INST":
            _pop_mark(stack)
            stack.append(_call(_Sym("global", name=str(arg).rpartition(" ")[2])))
        elif name == "OBJ":
            items = _pop_mark(stack)
            stack.append(_call(items[0]) if items else _Sym("object"))
        elif name in ("REDUCE", "NEWOBJ"):
            fn, args = _pop(stack, 2)
            stack.append(_call(fn, args))
        elif name == "NEWOBJ_EX":
            stack.append(_call(_pop(stack, 3)[0]))
        elif name == "BUILD":
            _pop(stack, 1)
            if not (stack and stack[-1].kind in ("object", "dict") and stack[-1].name and stateful(stack[-1].name)):
                what = (stack[-1].name or stack[-1].kind) if stack else "nothing"
                raise pickle.UnpicklingError(f"a pickle that sets state on a {what}: refused")
        elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            n = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}.get(name)
            stack.append(_tuple(_pop_mark(stack) if n is None else _pop(stack, n)))
        elif name == "DICT":
            hashed(_pop_mark(stack)[0::2], "a dict key")
            stack.append(_Sym("dict"))
        elif name == "SETITEMS":
            items = _pop_mark(stack)
            _target(stack, name)
            hashed(items[0::2], "a dict key")
        elif name == "SETITEM":
            key, _value = _pop(stack, 2)
            _target(stack, name)
            hashed([key], "a dict key")
        elif name == "FROZENSET":
            items = _pop_mark(stack)
            hashed(items, "a set item")
            stack.append(_Sym("atom", size=1 + len(items)))
        elif name == "ADDITEMS":
            items = _pop_mark(stack)
            _target(stack, name)
            hashed(items, "a set item")
        elif name == "APPEND":
            _pop(stack, 1)
            _target(stack, name)
        elif name == "APPENDS":
            _pop_mark(stack)
            _target(stack, name)
        elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "LIST"):
            if name == "LIST":
                _pop_mark(stack)
            stack.append(_Sym({"EMPTY_DICT": "dict", "EMPTY_SET": "set"}.get(name, "list")))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack:
                raise pickle.UnpicklingError("a pickle that memoizes an empty stack")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise pickle.UnpicklingError(f"a pickle that reads memo entry {brief(arg)} before writing it")
            stack.append(memo[arg])
        elif name == "DUP":
            stack.append(_pop(stack, 1)[0])
            stack.append(stack[-1])
        elif name == "POP_MARK":
            _pop_mark(stack)
        else:  # the rest only pop and push what pickletools says
            before, after = op.stack_before, op.stack_after
            if pickletools.markobject in before:
                _pop_mark(stack)
                _pop(stack, before.index(pickletools.markobject))
            else:
                _pop(stack, len(before))
            stack.extend(_Sym() for _ in after)


def check_tree(obj, where: str = "the checkpoint") -> None:
    """Raises pickle.UnpicklingError if `obj` holds itself, nests containers more than MAX_DEPTH
    deep, holds more than MAX_EXPANDED objects when expanded, or a dict with attributes other
    than `_metadata`. Each container is visited once: its expanded size and height are kept by id."""
    seen: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    keep = []  # the visited containers stay alive while their ids are keys
    open_ids: set[int] = set()
    todo = [(obj, 1, False)]
    while todo:
        o, depth, done = todo.pop()
        children = _children(o)
        if children is None:
            continue
        if done:
            open_ids.discard(id(o))
            kids = [seen.get(id(c), (1, 0)) for c in children]
            size, height = 1 + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0)
            if size > MAX_EXPANDED or height > MAX_DEPTH:
                raise pickle.UnpicklingError(f"{where} holds containers nested {height} deep, {size} objects when "
                                             f"expanded (at most {MAX_DEPTH} and {MAX_EXPANDED}): refused")
            seen[id(o)] = size, height
            continue
        if id(o) in open_ids:
            raise pickle.UnpicklingError(f"{where} holds a container that contains itself: refused")
        if id(o) in seen:
            continue
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"{where} nests containers more than {MAX_DEPTH} deep: refused")
        attrs = getattr(o, "__dict__", None)
        if isinstance(o, dict) and attrs and set(attrs) != {"_metadata"}:
            raise pickle.UnpicklingError(f"{where} holds a dict with {len(attrs)} attribute(s) besides "
                                         "_metadata: refused")
        open_ids.add(id(o))
        keep.append(o)
        todo.append((o, depth, True))
        todo.extend((c, depth + 1, False) for c in children)


def _children(o) -> list | None:
    if isinstance(o, dict):
        attrs = getattr(o, "__dict__", None) or {}
        return [*o.keys(), *o.values(), *attrs.values()]
    if isinstance(o, (list, tuple, set, frozenset)):
        return list(o)
    return None
