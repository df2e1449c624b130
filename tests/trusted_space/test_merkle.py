"""RFC 6962 / RFC 9162 Merkle trees: known answers, every proof up to 256 leaves, corruptions.

Known-answer vectors: google/certificate-transparency ``cpp/merkletree/merkle_tree_test.cc``
(``kInputs``, ``kSHA256Roots``, ``kSHA256Paths``, ``kSHA256Proofs``; the paths there use 1-based
leaf numbers) and ``python/ct/crypto/merkle_test.py`` (hasher vectors, the same roots and proofs,
and a real CT log audit path of 22 nodes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.errors import ValidationError, VerificationError
from trusted_space.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

H = bytes.fromhex

INPUTS = [
    H(x)
    for x in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    H(x)
    for x in [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
# kSHA256Paths: (1-based leaf, tree size, path)
PATHS = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
# kSHA256Proofs: (size1, size2, proof)
PROOFS = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# python/ct/crypto/merkle_test.py: a real CT log entry, leaf 848049 of 3630887.
CT_AUDIT_PATH = [
    H(x)
    for x in [
        "1a208aeebcd1b39fe2de247ee8db9454e1e93a312d206b87f6ca9cc6ec6f1ddd",
        "0a1b78b383f580856f433c01a5741e160d451c185910027f6cc9f828687a40c4",
        "3d1745789bc63f2da15850de1c12a5bf46ed81e1cc90f086148b1662e79aab3d",
        "9095b61e14d8990acf390905621e62b1714fb8e399fbb71de5510e0aef45affe",
        "0a332b91b8fab564e6afd1dd452449e04619b18accc0ff9aa8393cd4928451f2",
        "2336f0181d264aed6d8f3a6507ca14a8d3b3c3a23791ac263e845d208c1ee330",
        "b4ce56e300590500360c146c6452edbede25d4ed83919278749ee5dbe178e048",
        "933f6ddc848ea562e4f9c5cfb5f176941301dad0c6fdb9d1fbbe34fac1be6966",
        "b95a6222958a86f74c030be27c44f57dbe313e5e7c7f4ffb98bcbd3a03bb52f2",
        "daeeb3ce5923defd0faeb8e0c210b753b85b809445d7d3d3cd537a9aabaa9c45",
        "7fadd0a13e9138a2aa6c3fdec4e2275af233b94812784f66bcca9aa8e989f2bc",
        "1864e6ba3e32878610546539734fb5eeae2529991f130c575c73a7e25a2a7c56",
        "12842d1202b1dc6828a17ab253c02e7ce9409b5192430feba44189f39cc02d66",
        "29af64b16fa3053c13d02ac63aa75b23aa468506e44c3a2315edc85d2dc22b11",
        "b527b99934a0bd9edd154e449b0502e2c499bba783f3bc3dfe23364b6b532009",
        "4584db8ae8e351ace08e01f306378a92bfd43611714814f3d834a2842d69faa8",
        "86a9a41573b0d6e4292f01e93243d6cc65b30f06606fc6fa57390e7e90ed580f",
        "a88b98fbe84d4c6aae8db9d1605dfac059d9f03fe0fcb0d5dff1295dacba09e6",
        "06326dc617a6d1f7021dc536026dbfd5fffc6f7c5531d48ef6ccd1ed1569f2a1",
        "f41fe8fdc3a2e4e8345e30216e7ebecffee26ff266eeced208a6c2a3cf08f960",
        "40cf5bde8abb76983f3e98ba97aa36240402975674e120f234b3448911090f8d",
        "b3222dc8658538079883d980d7fdc2bef9285344ea34338968f736b04aeb387a",
    ]
]
CT_LEAF = H("7a395c866d5ecdb0cccb623e011dbc392cd348d1d1d72776174e127a24b09c78")
CT_INDEX, CT_SIZE = 848049, 3630887
CT_ROOT = H("78316a05c9bcf14a3a4548f5b854a9adfcd46a4c034401b3ce7eb7ac2f1d0ecb")

LEAVES = [leaf_hash(i.to_bytes(4, "big") + b"entry") for i in range(256)]
TREE = MerkleTree.from_leaf_hashes(LEAVES)
ALL_ROOTS = [root_hash(LEAVES[:n]) for n in range(257)]


def _reference_root(hashes: list[bytes]) -> bytes:
    """Straight from the RFC 6962 §2.1 definition (recursive), independent of the code."""
    n = len(hashes)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(_reference_root(hashes[:k]), _reference_root(hashes[k:]))


def _fails(check: Callable[[], None]) -> bool:
    try:
        check()
    except VerificationError:
        return True
    return False


# -- known answers -----------------------------------------------------------------------------


def test_hasher_known_answers() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == H("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert leaf_hash(H("101112131415161718191a1b1c1d1e1f")) == H(
        "3bfb960453ebaebf33727da7a1f4db38acc051d381b6da20d6d4e88f0eabfd7a"
    )
    assert node_hash(
        H("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
        H("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"),
    ) == H("1a378704c17da31e2d05b6d121c2bb2c7d76f6ee6fa8f983e596c2d034963c57")


@pytest.mark.parametrize("size", range(1, 9))
def test_known_roots(size: int) -> None:
    hashes = [leaf_hash(x) for x in INPUTS]
    assert root_hash(hashes[:size]) == ROOTS[size - 1]
    assert MerkleTree.from_leaf_hashes(hashes).root(size) == ROOTS[size - 1]


@pytest.mark.parametrize(("leaf", "size", "path"), PATHS)
def test_known_inclusion_paths(leaf: int, size: int, path: list[str]) -> None:
    hashes = [leaf_hash(x) for x in INPUTS]
    proof = inclusion_proof(hashes, leaf - 1, size)
    assert proof == [H(p) for p in path]
    verify_inclusion(hashes[leaf - 1], leaf - 1, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("first", "second", "proof"), PROOFS)
def test_known_consistency_proofs(first: int, second: int, proof: list[str]) -> None:
    hashes = [leaf_hash(x) for x in INPUTS]
    generated = consistency_proof(hashes, first, second)
    assert generated == [H(p) for p in proof]
    verify_consistency(first, second, generated, ROOTS[first - 1], ROOTS[second - 1])


def test_real_ct_log_audit_path() -> None:
    verify_inclusion(CT_LEAF, CT_INDEX, CT_SIZE, CT_AUDIT_PATH, CT_ROOT)
    assert _fails(lambda: verify_inclusion(CT_LEAF, CT_INDEX, CT_SIZE, CT_AUDIT_PATH, b"\0" * 32))
    assert _fails(lambda: verify_inclusion(CT_LEAF, CT_INDEX + 1, CT_SIZE, CT_AUDIT_PATH, CT_ROOT))


def test_edge_cases_from_reference_suite() -> None:
    # Snapshots that are always consistent, and the ones that never are.
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 1, [], EMPTY_ROOT, ROOTS[0])
    verify_consistency(1, 1, [], ROOTS[0], ROOTS[0])
    assert _fails(lambda: verify_consistency(1, 0, [], ROOTS[0], EMPTY_ROOT))
    assert _fails(lambda: verify_consistency(1, 2, [], ROOTS[0], ROOTS[1]))
    assert _fails(lambda: verify_consistency(1, 1, [], ROOTS[0], ROOTS[1]))
    assert _fails(lambda: verify_consistency(0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[0]))
    assert _fails(lambda: verify_consistency(1, 1, [EMPTY_ROOT], ROOTS[0], ROOTS[0]))
    # Inclusion in empty trees or past the end.
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 4)]:
        assert _fails(lambda i=index, n=size: verify_inclusion(EMPTY_ROOT, i, n, [], EMPTY_ROOT))
    # Single-leaf tree: the root is the leaf hash.
    verify_inclusion(ROOTS[0], 0, 1, [], ROOTS[0])
    # Hashes of the wrong length.
    assert _fails(lambda: verify_inclusion(b"", 0, 1, [], ROOTS[0]))
    assert _fails(lambda: verify_inclusion(ROOTS[0], 0, 2, [b""], ROOTS[1]))


# -- every size, every proof -------------------------------------------------------------------


def test_roots_match_the_rfc_definition() -> None:
    for n in range(257):
        assert ALL_ROOTS[n] == _reference_root(LEAVES[:n])
        assert TREE.root(n) == ALL_ROOTS[n]


def test_every_inclusion_proof_up_to_256_verifies() -> None:
    for n in range(1, 257):
        for i in range(n):
            verify_inclusion(LEAVES[i], i, n, TREE.inclusion_proof(i, n), ALL_ROOTS[n])


def test_every_consistency_proof_up_to_256_verifies() -> None:
    for n in range(1, 257):
        for m in range(0, n + 1):
            verify_consistency(m, n, TREE.consistency_proof(m, n), ALL_ROOTS[m], ALL_ROOTS[n])


def _flip(h: bytes, bit: int) -> bytes:
    out = bytearray(h)
    out[bit // 8 % 32] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("n", [*range(1, 20), 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 256])
def test_every_corrupted_inclusion_proof_fails(n: int) -> None:
    root = ALL_ROOTS[n]
    for i in range(n):
        proof = TREE.inclusion_proof(i, n)
        leaf = LEAVES[i]

        def bad(
            leaf: bytes = leaf,
            index: int = i,
            size: int = n,
            p: list[bytes] = proof,
            r: bytes = root,
        ) -> bool:
            return _fails(lambda: verify_inclusion(leaf, index, size, p, r))

        assert bad(index=i - 1) and bad(index=i + 1) and bad(index=i ^ 2)
        assert bad(size=n * 2) and bad(size=n // 2)
        assert bad(leaf=leaf_hash(b"WrongLeaf")) and bad(r=EMPTY_ROOT)
        for j in range(len(proof)):
            for bit in (0, 131, 255):
                assert bad(p=[*proof[:j], _flip(proof[j], bit), *proof[j + 1 :]])
            assert bad(p=proof[:j] + proof[j + 1 :])  # missing node
        assert bad(p=[*proof, root]) and bad(p=[*proof, EMPTY_ROOT]) and bad(p=[EMPTY_ROOT, *proof])
        assert bad(p=[*proof, b""])


@pytest.mark.parametrize("n", [2, 3, 5, 7, 8, 9, 16, 17, 31, 64, 100, 129, 256])
def test_every_corrupted_consistency_proof_fails(n: int) -> None:
    for m in range(1, n):
        proof = TREE.consistency_proof(m, n)
        r1, r2 = ALL_ROOTS[m], ALL_ROOTS[n]

        def bad(
            first: int = m, second: int = n, p: list[bytes] = proof, a: bytes = r1, b: bytes = r2
        ) -> bool:
            return _fails(lambda: verify_consistency(first, second, p, a, b))

        assert bad(a=r2, b=r1)  # swapped roots
        assert bad(a=EMPTY_ROOT) and bad(b=EMPTY_ROOT) and bad(p=[])
        assert bad(first=m - 1) and bad(first=m + 1) and bad(first=m ^ 2)
        assert bad(second=n * 2) and bad(second=n // 2)
        for j in range(len(proof)):
            for bit in (0, 77, 255):
                assert bad(p=[*proof[:j], _flip(proof[j], bit), *proof[j + 1 :]])
            assert bad(p=proof[:j] + proof[j + 1 :])
        assert bad(p=[*proof, proof[-1]]) and bad(p=[*proof, EMPTY_ROOT]) and bad(p=[r1, *proof])
        assert bad(p=[*proof, b""])


# -- properties and the cache ------------------------------------------------------------------


@given(st.integers(1, 256).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_proof_length_is_minimal(pair: tuple[int, int]) -> None:
    n, i = pair
    proof = TREE.inclusion_proof(i, n)
    assert len(proof) <= (n - 1).bit_length()


def test_tiled_tree_matches_and_reads_little() -> None:
    reads: list[tuple[int, int]] = []
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(5000)]

    def source(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return hashes[start:end]

    tree = MerkleTree(source, tile_level=4)
    assert tree.root(5000) == root_hash(hashes)
    reads.clear()
    for n in (4096, 4097, 4999, 5000):
        assert tree.root(n) == root_hash(hashes[:n])
        i = n // 3
        verify_inclusion(hashes[i], i, n, tree.inclusion_proof(i, n), tree.root(n))
        verify_consistency(1000, n, tree.consistency_proof(1000, n), tree.root(1000), tree.root(n))
    assert sum(end - start for start, end in reads) < 5000  # cached, not recomputed


def test_bad_arguments_are_validation_errors() -> None:
    with pytest.raises(ValidationError):
        TREE.inclusion_proof(5, 5)
    with pytest.raises(ValidationError):
        TREE.consistency_proof(6, 5)
    with pytest.raises(ValidationError):
        TREE.root(-1)
    with pytest.raises(ValidationError):
        TREE.root(257)  # past the end of the source
