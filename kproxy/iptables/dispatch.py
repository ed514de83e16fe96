"""Dispatch trees: service lookup chains whose cost grows with log(services), not services.

kube-proxy's ``KUBE-SERVICES`` holds one rule per service port and a new connection walks it
top to bottom, so the first packet of a connection costs a number of rule evaluations that
grows linearly with the cluster. A :class:`DispatchTree` keeps the same rules (the *leaf
rules*, one per :class:`DispatchEntry`) but spreads them over a trie of small chains: the root
chain jumps on address prefixes (``-d 10.96.0.0/14 -j KPROXY-D-...``) or, for node ports, on
protocol and port ranges (``-p tcp -m tcp --dport 30000:30255 -j KPROXY-P-...``) to bucket
chains, which split further or hold leaf rules.

Why no packet's fate can change
-------------------------------
The reference behaviour is the *flat list*: every entry's rule in one chain, in canonical
order. Destination mode: by destination address (as a number), protocol (TCP, UDP, SCTP),
port and rule text, the entries without destination last. Port mode: by protocol, port,
destination (none first) and rule text. The tree relies on one contract from its caller: an
entry's rule matches only packets whose destination is the entry's ``destination``
(destination mode, when it is not None), or whose protocol and destination port are the
entry's (port mode). Rule order only matters between rules that can match the same packet.

Take a packet P. In the flat list, the rules that can match P are (a) the entries keyed like
P (same destination; in port mode, same protocol and port), in canonical order, then, in
destination mode, (b) the entries without destination, in canonical order; every other rule
is skipped without effect. In the tree:

* Bucket rules only match, without side effect, and the buckets of one chain cover disjoint
  key ranges, so P jumps into at most one bucket per chain; all the entries keyed like P live
  in that bucket's subtree, and every entry with a given key sits in one leaf chain, in
  canonical order. P therefore meets (a) in the same order as in the flat list.
* If no rule of (a) ends the walk, P returns from the leaf up to the root, skipping the
  remaining buckets of each chain (disjoint ranges: none can match P), then meets (b), which
  the root keeps after its buckets, in canonical order.

So P sees exactly the same sequence of possibly-matching rules, whether those rules end the
walk (a jump to a service chain that DNATs) or not (a mark, then fall through). Entries
without destination can therefore only come *after* every addressed entry; a catch-all that
must come first belongs in the caller, before its jump to the root.

Structure
---------
Each node covers a key prefix: address bits, or in port mode an 18-bit key made of 2 protocol
bits and the 16 port bits, split at 2 bits or more so that every bucket match names its
protocol (a port range match needs one). A node with more than ``leaf_size`` entries skips the
bits all its entries share (path compression: services in 10.96.0.0/12 get buckets at /13 or
deeper), then splits on the next 1 to 8 bits, choosing the stride with the lowest estimated
cost: the rules evaluated to reach each entry (the bucket's position, one rule's worth for the
jump, an estimate of the subtree below) plus a fixed price per chain, so that where traversal
barely changes, fewer and fuller chains win. Only non-empty buckets get a chain; buckets
appear in key order. With ``leaf_size`` entries or fewer the root holds the leaf rules itself and
looks like kube-proxy's chain. An address (or protocol and port) shared by more than
``leaf_size`` entries stays in one leaf: there is nothing left to split on.

Bucket chains are named ``<chain_prefix>D-`` (``P-`` in port mode) followed by 16 hex digits
of the sha256 of the root's name and the bucket's match, so a name depends only on what the
bucket covers, never on history or on the order in which entries arrived.

Incremental updates and hysteresis
----------------------------------
:meth:`DispatchTree.update` changes only the nodes on the paths of the changed entries and
returns the chains whose rules changed and the chains that are gone: changing one entry
rewrites its leaf, and a parent only when a bucket appears or disappears. A leaf splits when
it exceeds ``leaf_size`` entries; a subtree collapses back into one leaf only when it drops to
``leaf_size // 2``, so an entry flapping at the threshold does not re-split at every sync. A
chain that collects more than ``2 * max(4, leaf_size)`` buckets (entries far from those it
was split for) is rebuilt.

Two trees holding the same entries can therefore differ in structure because of their
histories, never in behaviour. The *canonical* structure is the one built from scratch:
:meth:`DispatchTree.rebuild` restores it, and an update that changes at least half of the
tree's entries (the first fill in particular) builds it directly, so the full sync after a
restart produces the same chains as any earlier full sync of the same entries.
"""

from __future__ import annotations

import socket
from bisect import bisect_left
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

from kproxy.iptables.names import check_hashed_prefix, hex_chain_name
from kproxy.iptables.ruleset import CHAIN_PREFIX, Chain
from kproxy.model.types import IPFamily, Protocol

DispatchBy = Literal["destination", "port"]

_PROTOCOL_RANK = {Protocol.TCP: 0, Protocol.UDP: 1, Protocol.SCTP: 2}
_RANK_PROTOCOL = {rank: protocol for protocol, rank in _PROTOCOL_RANK.items()}
_PORT_BITS = 16
_PORT_KEY_BITS = 2 + _PORT_BITS
# Strides beyond 8 bits (256 buckets) never pay off: scanning buckets is linear.
_MAX_STRIDE = 8
# The fan-outs the cost estimate assumes for subtrees it has not built yet.
_ESTIMATE_FANOUTS = (2, 4, 8, 16)
# What entering one more chain costs, in rule evaluations. A bucket rule fails on the address
# compare the kernel does before any match module, like most leaf rules, so one rule is about
# what a jump and its return cost.
_JUMP_COST = 1.0
# The price of one more chain, in rule evaluations summed over entries. Around the optimum,
# leaves of 5 or of 12 entries cost within a rule or two per packet; this tips the balance
# towards the second: at 30,000 services, a third fewer chains for 1.4 more rules on average.
_CHAIN_COST = 32.0
# The dispatch key of entries without destination (destination mode); real keys are >= 0.
_ANYWHERE = -1


@dataclass(frozen=True, slots=True)
class DispatchEntry:
    """One leaf rule of a dispatch tree.

    ``rule`` is the complete rule as ``iptables-save`` prints it after ``-A CHAIN``, including
    its own ``-d``/``-p``/``--dport`` matches; it must not match packets for another
    destination (destination mode) or another protocol and port (port mode).
    """

    key: Hashable
    destination: str | None  # normalised IP without mask; None: any destination
    protocol: Protocol
    port: int
    rule: str


@dataclass(frozen=True, slots=True)
class DispatchChanges:
    """What one update did: chains whose rules changed (root first), chains that are gone."""

    written: tuple[Chain, ...]
    deleted: frozenset[str]

    @property
    def empty(self) -> bool:
        return not self.written and not self.deleted


@dataclass(frozen=True, slots=True)
class DispatchPath:
    """How a packet walks the tree: the chains it enters and the rules it evaluates.

    ``rules`` counts every rule evaluated, bucket jumps included, up to and including the
    leaf rule of ``entry``; when no entry is keyed like the packet, ``entry`` is None and
    ``rules`` counts every rule the packet evaluates before leaving the root.
    """

    chains: tuple[str, ...]
    rules: int
    entry: DispatchEntry | None


class _Item:
    """An entry with its dispatch key (``_ANYWHERE``: no destination) and its sort key."""

    __slots__ = ("entry", "key", "order")

    def __init__(self, entry: DispatchEntry, key: int, order: tuple[int, int, int, str]) -> None:
        self.entry = entry
        self.key = key
        self.order = order


_by_key = attrgetter("key")
_by_order = attrgetter("order")


class _Addresses:
    """Parses and renders one family's addresses (strictly: no masks, no shorthand)."""

    def __init__(self, family: IPFamily) -> None:
        self.family = family
        self.width = 32 if family is IPFamily.IPV4 else 128
        self.af = socket.AF_INET if family is IPFamily.IPV4 else socket.AF_INET6

    def parse(self, address: str) -> int:
        try:
            return int.from_bytes(socket.inet_pton(self.af, address), "big")
        except (OSError, ValueError, TypeError):
            raise ValueError(f"not an {self.family.value} address: {address!r}") from None

    def render(self, value: int) -> str:
        # inet_ntop is what ip6tables-save prints with, so bucket rules compare as equal.
        return socket.inet_ntop(self.af, value.to_bytes(self.width // 8, "big"))


class _KeySpace:
    """How entries map to integer keys and how a key prefix is written as a bucket match."""

    width: int
    min_split: int  # the shortest prefix a bucket may have

    def item(self, entry: DispatchEntry) -> _Item:
        """The entry with its key and canonical sort key; ValueError if it cannot be keyed."""
        raise NotImplementedError

    def bucket_match(self, value: int, length: int) -> str:
        raise NotImplementedError


class _DestinationSpace(_KeySpace):
    def __init__(self, family: IPFamily) -> None:
        self._addresses = _Addresses(family)
        self._af = self._addresses.af
        self.width = self._addresses.width
        self.min_split = 1

    def item(self, entry: DispatchEntry) -> _Item:
        destination = entry.destination
        if destination is None:
            key = _ANYWHERE
        else:
            # Inlined parse: this runs once per entry, 30,000 times in a full build.
            try:
                key = int.from_bytes(socket.inet_pton(self._af, destination), "big")
            except (OSError, ValueError, TypeError):
                key = self._addresses.parse(destination)  # raises the explanatory error
        return _Item(entry, key, (key, _PROTOCOL_RANK[entry.protocol], entry.port, entry.rule))

    def bucket_match(self, value: int, length: int) -> str:
        network = self._addresses.render(value << (self.width - length))
        return f"-d {network}/{length}"


class _PortSpace(_KeySpace):
    def __init__(self, family: IPFamily) -> None:
        self._addresses = _Addresses(family)
        self.width = _PORT_KEY_BITS
        self.min_split = 2  # the protocol bits: a port range match needs a protocol match

    def item(self, entry: DispatchEntry) -> _Item:
        key = _PROTOCOL_RANK[entry.protocol] << _PORT_BITS | entry.port
        destination = entry.destination
        address = -1 if destination is None else self._addresses.parse(destination)
        return _Item(entry, key, (key, address, 0, entry.rule))

    def bucket_match(self, value: int, length: int) -> str:
        port_bits = length - 2
        protocol = _RANK_PROTOCOL[value >> port_bits].value.lower()
        if port_bits == 0:
            return f"-p {protocol}"
        low = (value & ((1 << port_bits) - 1)) << (_PORT_BITS - port_bits)
        high = low + (1 << (_PORT_BITS - port_bits)) - 1
        ports = str(low) if low == high else f"{low}:{high}"
        return f"-p {protocol} -m {protocol} --dport {ports}"


class _Node:
    """One chain of the tree: a leaf (``split == 0``, holds items) or a chain of buckets."""

    __slots__ = ("bucket_rule", "children", "count", "items", "length", "name", "split", "value")

    def __init__(self, name: str, value: int, length: int, bucket_rule: str) -> None:
        self.name = name
        self.value = value  # the prefix: the top ``length`` bits of the keys it covers
        self.length = length
        self.bucket_rule = bucket_rule  # the parent's rule that jumps here
        self.split = 0  # children cover prefixes of this length
        self.children: dict[int, _Node] = {}
        # A list, not a dict by entry key: building 30,000 entries into leaves is a slice per
        # leaf, and removing from a leaf of a few dozen entries is a short scan.
        self.items: list[_Item] = []
        self.count = 0  # items in the whole subtree

    @property
    def is_leaf(self) -> bool:
        return self.split == 0


class _CostModel:
    """What a subtree of ``size`` entries is estimated to cost when well split.

    The cost is the sum, over its entries, of the rules evaluated to reach each of them from
    the subtree's chain, plus ``_CHAIN_COST`` per chain: near the optimum, traversal barely
    changes between a few larger leaves and many smaller ones, and fewer chains mean a
    shorter ruleset and a faster build.
    """

    def __init__(self, leaf_size: int) -> None:
        self._leaf_size = leaf_size
        self._memo: dict[int, float] = {}

    def subtree(self, size: int) -> float:
        if size <= self._leaf_size:
            return _CHAIN_COST + size * (size + 1) / 2
        cost = self._memo.get(size)
        if cost is None:
            cost = _CHAIN_COST + min(
                size * ((fanout + 1) / 2 + _JUMP_COST) + fanout * self.subtree(-(-size // fanout))
                for fanout in _ESTIMATE_FANOUTS
            )
            self._memo[size] = cost
        return cost


class DispatchTree:
    """An incrementally maintained dispatch tree rooted at chain ``root`` (see module doc)."""

    def __init__(
        self,
        root: str,
        family: IPFamily,
        *,
        by: DispatchBy,
        leaf_size: int = 32,
        chain_prefix: str = CHAIN_PREFIX,
    ) -> None:
        if leaf_size < 1:
            raise ValueError(f"leaf_size must be at least 1, not {leaf_size}")
        if by not in ("destination", "port"):
            raise ValueError(f"a dispatch tree splits by destination or port, not {by!r}")
        self._bucket_prefix = f"{chain_prefix}{'D' if by == 'destination' else 'P'}-"
        check_hashed_prefix(self._bucket_prefix)
        self.root_name = root
        self.family = family
        self.by: DispatchBy = by
        self.leaf_size = leaf_size
        self._space: _KeySpace = (
            _DestinationSpace(family) if by == "destination" else _PortSpace(family)
        )
        self._merge_at = leaf_size // 2
        self._max_fanout = max(4, leaf_size)
        self._rebuild_above = 2 * self._max_fanout
        self._cost = _CostModel(leaf_size)
        self._root = _Node(root, 0, 0, "")
        self._nodes: dict[str, _Node] = {root: self._root}
        self._items: dict[Hashable, _Item] = {}
        self._anywhere: dict[Hashable, _Item] = {}  # entries without destination, in the root
        self._published: dict[str, Chain] = {root: Chain(root)}  # validates the root's name
        self._touched: set[str] = set()  # names whose chain may differ from the published one
        # (value, length) -> (name, bucket rule) of dropped nodes, reused while rebuilding.
        self._recycled: dict[tuple[int, int], tuple[str, str]] = {}

    # -- public interface ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def entries(self) -> list[DispatchEntry]:
        """Every entry, in canonical (flat list) order."""
        addressed = sorted(
            (item for item in self._items.values() if item.key != _ANYWHERE), key=_by_order
        )
        return [item.entry for item in addressed + self._sorted_anywhere()]

    def update(self, remove: Iterable[Hashable], add: Iterable[DispatchEntry]) -> DispatchChanges:
        """Remove entries by key, then add entries (an entry with a known key replaces it).

        Unknown keys in ``remove`` are ignored, and so is an entry equal to the one it
        replaces. Every added entry is validated first: on ValueError nothing has changed.
        """
        additions = {entry.key: self._item(entry) for entry in add}
        removals = [key for key in dict.fromkeys(remove) if key in self._items]
        removals = [key for key in removals if key not in additions]
        if self._items:
            for key in [key for key in additions if key in self._items]:
                if self._items[key].entry == additions[key].entry:
                    del additions[key]
        changed = len(removals) + len(additions)
        if changed and 2 * changed >= len(self._items):
            for key in removals:
                del self._items[key]
            self._items.update(additions)
            self._build_all()
        else:
            for key in removals:
                self._remove(key)
            for key, item in additions.items():
                if key in self._items:
                    self._remove(key)
                self._add(item)
        return self._publish()

    def rebuild(self) -> DispatchChanges:
        """Rebuild the canonical structure from the current entries (e.g. for a full sync)."""
        self._build_all()
        return self._publish()

    def chains(self) -> list[Chain]:
        """Every chain of the tree, root first, parents before their buckets."""
        return [self._published[node.name] for node in self._walk()]

    def path(self, destination: str | None, protocol: Protocol, port: int) -> DispatchPath:
        """How a packet to ``destination``/``protocol``/``port`` walks the tree.

        An entry matches when its destination, protocol and port are the packet's (an entry
        without destination matches any destination): a model of the leaf rules for tests
        and benchmarks, which does not read the rules themselves.
        """
        if self.by == "destination" and destination is None:
            raise ValueError("a destination-mode path needs a destination")
        key = self._item(DispatchEntry(None, destination, protocol, port, "")).key
        chains = [self.root_name]
        rules = 0
        # Bucket rules after the one taken, in every chain: evaluated on the way back up.
        rules_after = 0
        node = self._root
        while True:
            if node.is_leaf:
                for item in sorted(node.items, key=_by_order):
                    rules += 1
                    if _matches(item.entry, destination, protocol, port):
                        return DispatchPath(tuple(chains), rules, item.entry)
                break
            slots = sorted(node.children)
            slot = key >> (self._space.width - node.split)
            if slot not in node.children:
                rules += len(slots)
                break
            position = slots.index(slot)
            rules += position + 1
            rules_after += len(slots) - position - 1
            node = node.children[slot]
            chains.append(node.name)
        rules += rules_after
        for item in self._sorted_anywhere():
            rules += 1
            if _matches(item.entry, destination, protocol, port):
                return DispatchPath(tuple(chains), rules, item.entry)
        return DispatchPath(tuple(chains), rules, None)

    # -- incremental changes -------------------------------------------------------------

    def _item(self, entry: DispatchEntry) -> _Item:
        if not 0 <= entry.port <= 0xFFFF:
            raise ValueError(f"port out of range in dispatch entry {entry.key!r}: {entry.port}")
        try:
            return self._space.item(entry)
        except KeyError:
            raise ValueError(f"unknown protocol in dispatch entry {entry.key!r}") from None

    def _add(self, item: _Item) -> None:
        self._items[item.entry.key] = item
        if item.key == _ANYWHERE:
            self._anywhere[item.entry.key] = item
            self._touched.add(self.root_name)
            return
        node = self._root
        path = [node]
        crowded: _Node | None = None
        while not node.is_leaf:
            slot = item.key >> (self._space.width - node.split)
            child = node.children.get(slot)
            if child is None:
                child = self._new_node(slot, node.split)
                node.children[slot] = child
                self._touched.add(node.name)
                if len(node.children) > self._rebuild_above:
                    crowded = node
            node = child
            path.append(node)
        node.items.append(item)
        self._touched.add(node.name)
        for ancestor in path:
            ancestor.count += 1
        if crowded is not None:
            self._rebuild_subtree(crowded)
        elif len(node.items) > self.leaf_size:
            self._rebuild_subtree(node)

    def _remove(self, key: Hashable) -> None:
        item = self._items.pop(key)
        if item.key == _ANYWHERE:
            del self._anywhere[key]
            self._touched.add(self.root_name)
            return
        path = self._path_to_leaf(item.key)
        leaf = path[-1]
        leaf.items.remove(item)
        self._touched.add(leaf.name)
        for ancestor in path:
            ancestor.count -= 1
        # Collapse the highest subtree that got small enough; anything below it goes too.
        for depth, node in enumerate(path):
            if not node.is_leaf and node.count <= self._merge_at:
                self._collapse(node)
                del path[depth + 1 :]
                break
        node = path[-1]
        if node.count == 0 and node is not self._root:
            # Its parent keeps other buckets: a parent this small would have collapsed above.
            parent = path[-2]
            del parent.children[node.value]
            self._forget(node)
            self._touched.add(parent.name)

    def _path_to_leaf(self, key: int) -> list[_Node]:
        node = self._root
        path = [node]
        while not node.is_leaf:
            node = node.children[key >> (self._space.width - node.split)]
            path.append(node)
        return path

    def _collapse(self, node: _Node) -> None:
        items = self._subtree_items(node)
        self._drop_descendants(node)
        node.split = 0
        node.items = items
        self._touched.add(node.name)
        self._recycled.clear()

    def _rebuild_subtree(self, node: _Node) -> None:
        items = sorted(self._subtree_items(node), key=_by_key)
        if node.is_leaf and items[0].key == items[-1].key:
            return  # every entry has the same key: nothing to split on
        self._drop_descendants(node)
        self._build(node, items, [item.key for item in items], 0, len(items))
        self._recycled.clear()

    # -- canonical construction ----------------------------------------------------------

    def _build_all(self) -> None:
        self._drop_descendants(self._root)
        self._root.split = 0
        self._root.items = []
        self._root.count = 0
        self._touched.add(self.root_name)
        self._anywhere = {}
        addressed: list[_Item] = []
        for entry_key, item in self._items.items():
            if item.key == _ANYWHERE:
                self._anywhere[entry_key] = item
            else:
                addressed.append(item)
        # By key alone: equal keys end up in one leaf, which sorts its rules canonically.
        addressed.sort(key=_by_key)
        if addressed:
            self._build(self._root, addressed, [item.key for item in addressed], 0, len(addressed))
        self._recycled.clear()

    def _build(self, node: _Node, items: list[_Item], keys: list[int], low: int, high: int) -> None:
        """Make ``node`` the canonical subtree of ``items[low:high]`` (sorted by key)."""
        self._touched.add(node.name)
        node.count = high - low
        node.children = {}
        width = self._space.width
        common = width - (keys[low] ^ keys[high - 1]).bit_length()
        if high - low <= self.leaf_size or common == width:
            node.split = 0
            node.items = items[low:high]
            return
        split, groups = self._choose_split(keys, low, high, common)
        node.split = split
        node.items = []
        for slot, group_low, group_high in groups:
            child = self._new_node(slot, split)
            node.children[slot] = child
            self._build(child, items, keys, group_low, group_high)

    def _choose_split(
        self, keys: list[int], low: int, high: int, common: int
    ) -> tuple[int, list[tuple[int, int, int]]]:
        """The prefix length to split at, and the (slot, low, high) groups it gives."""
        width = self._space.width
        first = max(common + 1, self._space.min_split)
        best: tuple[float, int, list[tuple[int, int, int]]] | None = None
        for split in range(first, min(common + _MAX_STRIDE, width) + 1):
            limit = high - low if split == first else self._max_fanout
            grouped = self._groups(keys, low, high, width - split, limit)
            if grouped is None:
                break  # longer prefixes only give more buckets
            cost, groups = grouped
            if best is not None and cost >= best[0]:
                break  # past the best stride the estimate rarely improves again
            best = (cost, split, groups)
        assert best is not None
        return best[1], best[2]

    def _groups(
        self, keys: list[int], low: int, high: int, shift: int, limit: int
    ) -> tuple[float, list[tuple[int, int, int]]] | None:
        """The estimated cost and the runs of ``keys[low:high]`` sharing ``key >> shift``.

        None when there are more than ``limit`` runs.
        """
        subtree = self._cost.subtree
        groups: list[tuple[int, int, int]] = []
        cost = 0.0
        start = low
        while start < high:
            if len(groups) == limit:
                return None
            slot = keys[start] >> shift
            end = bisect_left(keys, (slot + 1) << shift, start, high)
            groups.append((slot, start, end))
            size = end - start
            # An entry here costs its bucket's position, the jump, and the subtree below.
            cost += size * (len(groups) + _JUMP_COST) + subtree(size)
            start = end
        return cost, groups

    # -- nodes and names -----------------------------------------------------------------

    def _new_node(self, value: int, length: int) -> _Node:
        known = self._recycled.get((value, length))
        if known is not None:
            name, bucket_rule = known
        else:
            match = self._space.bucket_match(value, length)
            name = hex_chain_name(self._bucket_prefix, f"{self.root_name} {match}")
            bucket_rule = f"{match} -j {name}"
        if name in self._nodes:
            raise RuntimeError(f"dispatch chain name collision: {name}")
        node = _Node(name, value, length, bucket_rule)
        self._nodes[name] = node
        self._touched.add(name)
        return node

    def _forget(self, node: _Node) -> None:
        del self._nodes[node.name]
        self._touched.add(node.name)

    def _drop_descendants(self, node: _Node) -> None:
        stack = list(node.children.values())
        while stack:
            child = stack.pop()
            stack.extend(child.children.values())
            self._recycled[child.value, child.length] = (child.name, child.bucket_rule)
            self._forget(child)
        node.children = {}

    @staticmethod
    def _subtree_items(node: _Node) -> list[_Item]:
        items: list[_Item] = []
        stack = [node]
        while stack:
            current = stack.pop()
            items.extend(current.items)
            stack.extend(current.children.values())
        return items

    def _walk(self) -> Iterator[_Node]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children[slot] for slot in sorted(node.children, reverse=True))

    # -- rendering -----------------------------------------------------------------------

    def _sorted_anywhere(self) -> list[_Item]:
        return sorted(self._anywhere.values(), key=_by_order)

    def _rules(self, node: _Node) -> tuple[str, ...]:
        if node.is_leaf:
            rules = [item.entry.rule for item in sorted(node.items, key=_by_order)]
        else:
            rules = [node.children[slot].bucket_rule for slot in sorted(node.children)]
        if node is self._root:
            rules.extend(item.entry.rule for item in self._sorted_anywhere())
        return tuple(rules)

    def _publish(self) -> DispatchChanges:
        written: list[Chain] = []
        deleted: set[str] = set()
        for name in self._touched:
            node = self._nodes.get(name)
            old = self._published.get(name)
            if node is None:
                if old is not None:
                    deleted.add(name)
                    del self._published[name]
                continue
            rules = self._rules(node)
            if old is None or old.rules != rules:
                chain = Chain(name, rules)
                self._published[name] = chain
                written.append(chain)
        self._touched.clear()
        written.sort(key=lambda chain: (chain.name != self.root_name, chain.name))
        return DispatchChanges(tuple(written), frozenset(deleted))


def _matches(entry: DispatchEntry, destination: str | None, protocol: Protocol, port: int) -> bool:
    if entry.protocol != protocol or entry.port != port:
        return False
    return entry.destination is None or entry.destination == destination
