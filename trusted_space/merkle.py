"""RFC 6962 / RFC 9162 Merkle trees: roots, inclusion and consistency proofs, and their checks.

Why: every node's ledger is an append-only log, and the only thing a node publishes about it is a
signed tree head (size, root). A provider that later wants to deny a use, or show one party a
history different from another's, has to produce a second tree head that is *not* an extension
of the first. Consistency proofs make that detectable by anyone holding two tree heads; inclusion
proofs let an analyst check that one entry (the use of its data) is in the tree a provider
signed, without downloading the log.

Threats handled here: a leaf passing for an interior node (domain-separated hashing, RFC 6962
§2.1: ``0x00`` for leaves, ``0x01`` for nodes); a forged or truncated proof (the RFC 9162
§2.1.3.2 / §2.1.4.2 verification algorithms, which also check that the proof has exactly the
right length); a proof for the wrong index or size (both are inputs of the check).

The verification functions are pure and need no node: :func:`verify_inclusion` and
:func:`verify_consistency` raise :class:`~trusted_space.errors.VerificationError` on any failure
and return ``None`` on success (there is no boolean to forget to check).

Proof generation (:class:`MerkleTree`) reads leaf hashes through a :class:`LeafSource` and
caches the hashes of *complete* subtrees (size ``2**level``, aligned), which never change in an
append-only log. Complexity, for a tree of ``n`` leaves and ``T = 2**TILE_LEVEL``:

- the first root or proof after start reads all ``n`` leaf hashes once (in chunks of ``T``) and
  does ``n - 1`` node hashes: O(n);
- after that, ``root(size)``, ``inclusion_proof`` and ``consistency_proof`` for any size need
  O(log n) cache look-ups, O(log² n) node hashes at most and one read of fewer than ``T`` leaf
  hashes at the right edge: a 1M-leaf tree answers in well under a millisecond of hashing.

The cache holds one 32-byte hash per complete subtree of level ≥ ``TILE_LEVEL`` (about
``2n / T`` entries: 2 048 for a million leaves).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from trusted_space.errors import ValidationError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "TILE_LEVEL",
    "LeafSource",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string (RFC 6962 §2.1)."""

TILE_LEVEL = 8
"""Complete subtrees of at least ``2**TILE_LEVEL`` leaves are cached; smaller ones are rehashed."""

LeafSource = Callable[[int, int], Sequence[bytes]]
"""``source(start, end)`` returns the leaf hashes with ``start <= index < end``."""


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``; the prefix keeps a leaf from passing for an interior node."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``), RFC 6962 §2.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes in one O(n) pass (a stack of complete-subtree roots)."""
    if not hashes:
        return EMPTY_ROOT
    stack: list[tuple[int, bytes]] = []  # (size, hash), sizes strictly decreasing
    for h in hashes:
        size, acc = 1, h
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, acc = left_size + size, node_hash(left, acc)
        stack.append((size, acc))
    _, acc = stack.pop()
    while stack:
        _, left = stack.pop()
        acc = node_hash(left, acc)
    return acc


class MerkleTree:
    """Roots and proofs over leaf hashes read from ``source``; see the module docstring for cost.

    Args:
        source: returns leaf hashes for a range; must be append-only (an index, once readable,
            always returns the same hash), which is what makes the subtree cache sound.
        tile_level: subtrees of ``2**tile_level`` leaves or more are cached.
    """

    def __init__(self, source: LeafSource, *, tile_level: int = TILE_LEVEL) -> None:
        if tile_level < 0:
            raise ValueError("tile_level must be >= 0")
        self._source = source
        self._tile = tile_level
        self._cache: dict[tuple[int, int], bytes] = {}

    @classmethod
    def from_leaf_hashes(cls, hashes: Sequence[bytes]) -> MerkleTree:
        """A tree over an in-memory list of leaf hashes."""
        snapshot = list(hashes)
        return cls(lambda start, end: snapshot[start:end])

    def with_tail(self, start: int, hashes: Sequence[bytes]) -> MerkleTree:
        """This tree with leaves ``[start, start + len(hashes))`` read from ``hashes``.

        For many proofs against one tree size: the leaves a proof reads beyond the cached
        subtrees are read once. The subtree cache is shared (both read the same append-only
        log, so a hash cached by either is right for both).
        """
        tail = list(hashes)
        source = self._source

        def read(a: int, b: int) -> Sequence[bytes]:
            if a >= start and b <= start + len(tail):
                return tail[a - start : b - start]
            return source(a, b)

        view = MerkleTree(read, tile_level=self._tile)
        view._cache = self._cache
        return view

    # -- subtree hashes --------------------------------------------------------------------
    def _leaves(self, start: int, end: int) -> Sequence[bytes]:
        hashes = self._source(start, end)
        if len(hashes) != end - start:
            raise ValidationError(f"leaf range [{start}, {end}) is beyond the end of the log")
        return hashes

    def _complete(self, level: int, index: int) -> bytes:
        """Hash of the aligned complete subtree ``[index << level, (index + 1) << level)``."""
        if level <= self._tile:
            start = index << level
            root = _fold(self._leaves(start, start + (1 << level)))
            if level == self._tile:
                self._cache[(level, index)] = root
            return root
        key = (level, index)
        cached = self._cache.get(key)
        if cached is None:
            cached = node_hash(
                self._complete(level - 1, 2 * index), self._complete(level - 1, 2 * index + 1)
            )
            self._cache[key] = cached
        return cached

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH of leaves ``[start, end)`` where the range is a node of some RFC 6962 tree.

        That is: ``start`` is a multiple of the largest power of two ≤ ``end - start``, which is
        true of every range a root or a proof asks for.
        """
        n = end - start
        if n <= 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self._complete(n.bit_length() - 1, start // n)
        if n < (1 << self._tile):
            return _fold(self._leaves(start, end))
        k = _split(n)
        return node_hash(self.subtree_hash(start, start + k), self.subtree_hash(start + k, end))

    # -- public API ------------------------------------------------------------------------
    def root(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves (``EMPTY_ROOT`` for 0)."""
        if size < 0:
            raise ValidationError("tree size must be >= 0")
        return self.subtree_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, leaf-side first."""
        if not 0 <= index < size:
            raise ValidationError(f"leaf index {index} is not in a tree of size {size}")
        path: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                path.append(self.subtree_hash(start + k, end))
                end = start + k
            else:
                path.append(self.subtree_hash(start, start + k))
                start, m = start + k, m - k
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """PROOF(first, D[0:second]) of RFC 9162 §2.1.4.1 (empty when ``first`` is 0 or equal)."""
        if not 0 <= first <= second:
            raise ValidationError(f"no consistency proof from size {first} to size {second}")
        if first in (0, second):
            return []
        proof: list[bytes] = []
        start, end, whole = 0, second, True
        while first != end:
            k = _split(end - start)
            if first - start <= k:
                proof.append(self.subtree_hash(start + k, end))
                end = start + k
            else:
                proof.append(self.subtree_hash(start, start + k))
                start, whole = start + k, False
        if not whole:
            proof.append(self.subtree_hash(start, end))
        proof.reverse()
        return proof


def root_hash(hashes: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (O(n))."""
    return _fold(hashes)


def inclusion_proof(hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """Inclusion proof over an in-memory list of leaf hashes (``size`` defaults to all)."""
    n = len(hashes) if size is None else size
    return MerkleTree.from_leaf_hashes(hashes).inclusion_proof(index, n)


def consistency_proof(
    hashes: Sequence[bytes], first: int, second: int | None = None
) -> list[bytes]:
    """Consistency proof over an in-memory list of leaf hashes (``second`` defaults to all)."""
    n = len(hashes) if second is None else second
    return MerkleTree.from_leaf_hashes(hashes).consistency_proof(first, n)


def _check_hashes(proof: Sequence[bytes], *named: tuple[str, bytes]) -> None:
    for name, value in named:
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise VerificationError(f"{name} is not a {HASH_SIZE}-byte hash")
    for i, p in enumerate(proof):
        if not isinstance(p, bytes) or len(p) != HASH_SIZE:
            raise VerificationError(f"proof element {i} is not a {HASH_SIZE}-byte hash")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 §2.1.3.2); return ``None`` or raise.

    Args:
        leaf: the *leaf hash* (``leaf_hash(entry)``), not the entry.
        index: the leaf's 0-based index.
        size: the tree size the proof is for.
        proof: the inclusion path, leaf-side first.
        root: the root hash of the tree of ``size`` leaves (from a verified checkpoint).

    Raises:
        VerificationError: the proof does not show ``leaf`` at ``index`` in that tree.
    """
    _check_hashes(proof, ("leaf hash", leaf), ("root hash", root))
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} outside tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("inclusion proof too short")
    if r != root:
        raise VerificationError("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, proof: Sequence[bytes], first_root: bytes, second_root: bytes
) -> None:
    """Check a consistency proof (RFC 9162 §2.1.4.2); return ``None`` or raise.

    Sizes equal: the proof must be empty and the roots equal. ``first == 0``: the proof must be
    empty and ``first_root`` the empty-tree root (every tree extends the empty one).

    Raises:
        VerificationError: the tree of size ``second`` is not shown to extend the tree of size
            ``first`` (a rewritten history, or a bad proof).
    """
    _check_hashes(proof, ("first root", first_root), ("second root", second_root))
    if not 0 <= first <= second:
        raise VerificationError(f"sizes {first} -> {second} do not grow")
    if first == second:
        if proof:
            raise VerificationError("non-empty proof between equal sizes")
        if first_root != second_root:
            raise VerificationError("different roots for the same size")
        return
    if first == 0:
        if proof:
            raise VerificationError("non-empty proof from the empty tree")
        if first_root != EMPTY_ROOT:
            raise VerificationError("size 0 with a root that is not the empty-tree root")
        return
    if not proof:
        raise VerificationError("empty consistency proof")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("consistency proof too short")
    if fr != first_root:
        raise VerificationError("consistency proof does not lead to the first root")
    if sr != second_root:
        raise VerificationError("consistency proof does not lead to the second root")
