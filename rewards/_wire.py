"""Strict, typed value encoding between the trusted judge and the sandboxed program. Stdlib only.

Why: the tests run in a trusted process that never executes model code; the program's return
values cross over as data, never as objects, so no `__eq__`, `__sub__` or `__hash__` of the
program's classes ever runs on the trusted side. Loaded by the harness (from this file, before
it enters the sandbox) and imported by the judge.

Format (JSON): None, bools, ints, floats (NaN/Infinity allowed) and strings as themselves; a
list as a JSON array; everything else as a one-key object:
  t tuple, s set, f frozenset, d dict ([[key, value], ...]), y bytes (hex), Y bytearray (hex),
  c complex [re, im], r range [start, stop, step], q deque, i iterator (its items),
  K / V / I dict keys / values / items views, n a node (index into the message's node table).
Nodes (LeetCode's ListNode / TreeNode) are kept in a table [[id, class, val, links...], ...] so
cycles and shared nodes survive and a long list does not recurse; ids of nodes that came in as
arguments are kept, so in-place changes to them can be written back.
Subclasses of the built-in types (IntEnum, Counter, namedtuple, ...) are sent as their base.
"""

import collections
import json

NODE_FIELDS = {"ListNode": ("next",), "TreeNode": ("left", "right")}
# A set or dict whose keys share one hash this often is refused: a crafted hash flood would make
# building it on the trusted side quadratic. Honest data has distinct hashes almost always.
MAX_SAME_HASH = 64


class WireError(ValueError):
    """A value that cannot be encoded, or a message that is not a well-formed encoding."""


_DEQUE = collections.deque
_KEYS, _VALUES, _ITEMS = type({}.keys()), type({}.values()), type({}.items())


class Encoder:
    """Encode values into JSON-ready structures; nodes go into a shared table."""

    def __init__(self, node_ids=None):
        self.ids = dict(node_ids or {})  # id(node object) -> node id
        self.next_id = max(self.ids.values(), default=-1) + 1
        self.table = []
        self.keep = []  # node objects, alive until the message is built (their id() stays unique)
        self.done = set()

    def value(self, x):
        t = type(x)
        if x is None or t is bool or t is int or t is float or t is str:
            return x
        if t is list:
            return [self.value(v) for v in x]
        if t is tuple:
            return {"t": [self.value(v) for v in x]}
        if t is dict:
            return {"d": [[self.value(k), self.value(v)] for k, v in x.items()]}
        if t is set:
            return {"s": [self.value(v) for v in x]}
        if t is frozenset:
            return {"f": [self.value(v) for v in x]}
        name = t.__name__
        if name in NODE_FIELDS:
            return {"n": self._node(x)}
        if isinstance(x, bool):
            return bool(x)
        if isinstance(x, int):
            return int.__int__(x)
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, str):
            return str.__str__(x)
        if isinstance(x, bytes):
            return {"y": bytes(x).hex()}
        if isinstance(x, bytearray):
            return {"Y": bytes(x).hex()}
        if isinstance(x, complex):
            return {"c": [complex.__complex__(x).real, complex.__complex__(x).imag]}
        if isinstance(x, range):
            return {"r": [x.start, x.stop, x.step]}
        if isinstance(x, _DEQUE):
            return {"q": [self.value(v) for v in list(_DEQUE.__iter__(x))]}
        if isinstance(x, dict):
            return {"d": [[self.value(k), self.value(v)] for k, v in dict.items(x)]}
        if isinstance(x, list):
            return [self.value(v) for v in list.__iter__(x)]
        if isinstance(x, tuple):
            return {"t": [self.value(v) for v in tuple.__iter__(x)]}
        if isinstance(x, frozenset):
            return {"f": [self.value(v) for v in frozenset.__iter__(x)]}
        if isinstance(x, set):
            return {"s": [self.value(v) for v in set.__iter__(x)]}
        if t is _KEYS:
            return {"K": [self.value(v) for v in x]}
        if t is _VALUES:
            return {"V": [self.value(v) for v in x]}
        if t is _ITEMS:
            return {"I": [[self.value(k), self.value(v)] for k, v in x]}
        if hasattr(t, "__next__") and hasattr(t, "__iter__"):
            return {"i": [self.value(v) for v in x]}
        raise WireError(f"a value of type {name} cannot be judged (plain data only)")

    def _node(self, node):
        key = id(node)
        if key not in self.ids:
            self.ids[key] = self.next_id
            self.next_id += 1
        nid = self.ids[key]
        if key not in self.done:
            self.done.add(key)
            self.keep.append(node)
            pending = [node]
            while pending:  # breadth-first: a long chain does not recurse
                current = pending.pop()
                fields = NODE_FIELDS[type(current).__name__]
                entry = [self.ids[id(current)], type(current).__name__, None]
                links = []
                for f in fields:
                    nxt = getattr(current, f, None)
                    if nxt is None:
                        links.append(None)
                        continue
                    if type(nxt).__name__ not in NODE_FIELDS:
                        raise WireError(f"{type(current).__name__}.{f} is a {type(nxt).__name__}, not a node")
                    k = id(nxt)
                    if k not in self.ids:
                        self.ids[k] = self.next_id
                        self.next_id += 1
                    if k not in self.done:
                        self.done.add(k)
                        self.keep.append(nxt)
                        pending.append(nxt)
                    links.append(self.ids[k])
                entry[2] = self.value(getattr(current, "val", None))
                self.table.append(entry + links)
        return nid


def _check_hashes(keys):
    if len(keys) <= MAX_SAME_HASH:
        return
    try:
        counts = collections.Counter(hash(k) for k in keys)
    except TypeError as e:
        raise WireError(f"unhashable key: {e}") from None
    if max(counts.values()) > MAX_SAME_HASH:
        raise WireError(f"more than {MAX_SAME_HASH} keys share one hash")


class Decoder:
    """Rebuild values from a message; only built-in types and the given node classes come out."""

    def __init__(self, node_classes, table, known=None):
        self.classes = node_classes
        self.nodes = {}
        known = known or {}
        if type(table) is not list:
            raise WireError("node table must be a list")
        entries = []
        for entry in table:
            if type(entry) is not list or len(entry) < 3 or type(entry[0]) is not int or type(entry[1]) is not str:
                raise WireError("bad node entry")
            nid, cls_name = entry[0], entry[1]
            fields = NODE_FIELDS.get(cls_name)
            if fields is None or len(entry) != 3 + len(fields) or nid in self.nodes:
                raise WireError(f"bad node entry for {cls_name!r}")
            cls = node_classes[cls_name]
            old = known.get(nid)
            self.nodes[nid] = old if type(old) is cls else cls.__new__(cls)
            entries.append((nid, fields, entry))
        for nid, fields, entry in entries:
            node = self.nodes[nid]
            node.val = self.value(entry[2])
            for f, link in zip(fields, entry[3:]):
                if link is None:
                    setattr(node, f, None)
                elif type(link) is int and link in self.nodes:
                    setattr(node, f, self.nodes[link])
                else:
                    raise WireError("node link to an unknown node")

    def value(self, o):
        t = type(o)
        if o is None or t is bool or t is int or t is float or t is str:
            return o
        if t is list:
            return [self.value(v) for v in o]
        if t is not dict or len(o) != 1:
            raise WireError(f"not an encoded value: {t.__name__}")
        (tag, body), = o.items()
        if tag == "n":
            if type(body) is not int or body not in self.nodes:
                raise WireError("reference to an unknown node")
            return self.nodes[body]
        if tag in ("y", "Y"):
            if type(body) is not str:
                raise WireError("bytes must be hex")
            try:
                data = bytes.fromhex(body)
            except ValueError:
                raise WireError("bytes must be hex") from None
            return data if tag == "y" else bytearray(data)
        if type(body) is not list:
            raise WireError(f"tag {tag!r} needs a list")
        if tag == "t":
            return tuple(self.value(v) for v in body)
        if tag in ("s", "f", "K"):
            items = [self.value(v) for v in body]
            _check_hashes(items)
            try:
                built = set(items) if tag == "s" else frozenset(items) if tag == "f" else dict.fromkeys(items).keys()
            except TypeError as e:
                raise WireError(f"unhashable set item: {e}") from None
            return built
        if tag in ("d", "I"):
            pairs = []
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("dict items must be [key, value] pairs")
                pairs.append((self.value(pair[0]), self.value(pair[1])))
            _check_hashes([k for k, _ in pairs])
            try:
                built = dict(pairs)
            except TypeError as e:
                raise WireError(f"unhashable dict key: {e}") from None
            return built if tag == "d" else built.items()
        if tag == "V":
            return {i: self.value(v) for i, v in enumerate(body)}.values()
        if tag == "q":
            return _DEQUE(self.value(v) for v in body)
        if tag == "i":
            return iter([self.value(v) for v in body])
        if tag == "c":
            if len(body) != 2 or not all(type(v) in (int, float) for v in body):
                raise WireError("complex must be [re, im]")
            return complex(body[0], body[1])
        if tag == "r":
            if len(body) != 3 or not all(type(v) is int for v in body) or body[2] == 0:
                raise WireError("range must be [start, stop, step]")
            return range(*body)
        raise WireError(f"unknown tag {tag!r}")


def dumps(message):
    """One message as bytes (NaN and infinities allowed, as Python's json writes them)."""
    try:
        return json.dumps(message, separators=(",", ":")).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError, RecursionError) as e:
        raise WireError(f"cannot encode: {e}") from None


def loads(data):
    """Parse one message; any malformation is a WireError."""
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise WireError(f"malformed message: {str(e)[:200]}") from None
