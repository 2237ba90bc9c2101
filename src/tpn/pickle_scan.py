"""Bounds on what a pickle from a file may build, checked without running it.

The allow-list unpickler (`tpn.checkpoint`) runs no code from a file, but plain data alone can
still hurt: a tuple nested a million deep crashes the interpreter when it is hashed as a dict
key, a few hundred bytes of tuples that reuse each other (the pickle memo) hash for ever, and
lists that do the same make any walk or message over them endless. Two checks close that:

- `scan` reads a pickle's opcodes (`pickletools.genops`, which decodes but builds nothing) and
  follows the stack symbolically: every tuple's size when expanded (its hash walks all of it)
  and depth are bounded, as is every dict key and set item; state set on a tensor or a
  `torch.Size` (BUILD) is refused. It runs before the unpickler loads anything.
- `check_tree` walks what was loaded, each object once: no container holds itself, the nesting
  stays shallow, the tree expanded stays small, and dicts carry no attributes but `_metadata`
  (what `state_dict()` sets), so later walks and messages over it are bounded too.
"""
from __future__ import annotations

import pickle
import pickletools

MAX_DEPTH = 200  # nesting of containers (a tpn or mmaction2 checkpoint nests fewer than 10)
MAX_EXPANDED = 1_000_000  # objects in a tuple, or in the whole loaded tree, expanded (a checkpoint: thousands)

# callables of the allow-list whose results must not take state from BUILD
_NO_STATE = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter", "Size", "device"}
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


class _Sym:
    """An object on the symbolic stack: `size`/`depth` as a hash sees it (tuples expanded, any
    other object one node), `name` a string's value or the global a call was made with."""
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


def _hashed(items, what: str) -> None:
    for s in items:
        if s.size > MAX_EXPANDED or s.depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"{what} nested {s.depth} deep, {s.size} objects when expanded: refused")


def _tuple(items) -> _Sym:
    s = _Sym("tuple", 1 + sum(i.size for i in items), 1 + max((i.depth for i in items), default=0))
    _hashed([s], "a tuple")
    return s


def _call(fn: _Sym) -> _Sym:
    return _Sym("object", name=fn.name if fn.kind == "global" else None)


def scan(file) -> None:
    """Reads one pickle from `file` (bytes or a file object, left after its STOP) and raises
    pickle.UnpicklingError if what it would build breaks the bounds above."""
    stack: list[_Sym] = []
    memo: dict = {}
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
            stack.append(_Sym("object", name=str(arg).rpartition(" ")[2]))
        elif name == "OBJ":
            items = _pop_mark(stack)
            stack.append(_call(items[0]) if items else _Sym("object"))
        elif name in ("REDUCE", "NEWOBJ"):
            stack.append(_call(_pop(stack, 2)[0]))
        elif name == "NEWOBJ_EX":
            stack.append(_call(_pop(stack, 3)[0]))
        elif name == "BUILD":
            _pop(stack, 1)
            if stack and stack[-1].kind == "object" and stack[-1].name in _NO_STATE:
                raise pickle.UnpicklingError(f"a pickle that sets state on a {stack[-1].name} result: refused")
        elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            n = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "EMPTY_TUPLE": 0}.get(name)
            stack.append(_tuple(_pop_mark(stack) if n is None else _pop(stack, n)))
        elif name in ("DICT", "SETITEMS"):
            _hashed(_pop_mark(stack)[0::2], "a dict key")
            if name == "DICT":
                stack.append(_Sym("container"))
        elif name == "SETITEM":
            _hashed(_pop(stack, 2)[:1], "a dict key")
        elif name in ("FROZENSET", "ADDITEMS"):
            _hashed(_pop_mark(stack), "a set item")
            if name == "FROZENSET":
                stack.append(_Sym("container"))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack:
                raise pickle.UnpicklingError("a pickle that memoizes an empty stack")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise pickle.UnpicklingError(f"a pickle that reads memo entry {arg} before writing it")
            stack.append(memo[arg])
        elif name == "DUP":
            stack.append(_pop(stack, 1)[0])
            stack.append(stack[-1])
        elif name == "POP_MARK":
            _pop_mark(stack)
        else:  # the rest only pop and push what pickletools says
            before, after = op.stack_before, op.stack_after
            if pickletools.markobject in before:  # APPENDS, LIST: the items above the mark, and what lies below it
                _pop_mark(stack)
                _pop(stack, before.index(pickletools.markobject))
            else:
                _pop(stack, len(before))
            kind = "container" if name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "LIST") else "atom"
            stack.extend(_Sym(kind) for _ in after)


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
