"""USCC: known answers from public sources, precise errors, every single substitution detected."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusted_space.errors import ValidationError
from trusted_space.uscc import (
    ALPHABET,
    WEIGHTS,
    check_character,
    generate_uscc,
    is_valid_uscc,
    org_check_character,
    parse_uscc,
    validate_column,
    validate_uscc,
)

# Published codes, each with where it was found.
KNOWN_VALID = {
    # GB 32100-2015 worked example (as reproduced on Wikipedia "Unified Social Credit Identifier"
    # and yc00.com/web/1713075042a2177900.html, whose step 7 computes check character 3).
    "91350100M000100Y43": "GB 32100-2015 example",
    # chinacheckup.com/blog/unified-social-credit-code
    "9144030071526726XG": "Tencent Technology (Shenzhen) Co., Ltd.",
    "91110000710926094P": "China Petroleum & Chemical Corporation",
    "91310000631696382C": "Baoshan Iron and Steel Co., Ltd.",
    # yizhanzhixiao.com/link/1796942066087784707.html (worked check-character example)
    "91512081MA62K0260E": "worked example, check character E",
    # segmentfault.com/q/1010000015163528
    "9131000063159284XQ": "segmentfault question",
    # dromara/hutool CreditCodeUtilTest.java
    "91310115591693856A": "hutool test",
    "91310110666007217T": "hutool test",
    # winjs-dev/cloud-utils isUnifiedSocialCreditCode.ts doc examples
    "91230184MA1BUFLT44": "cloud-utils example",
    "92371000MA3MXH0E3W": "cloud-utils example (individual business, 92)",
    # arthurdejong/python-stdnum tests/test_cn_uscc.doctest ("found online")
    "121200004013590816": "python-stdnum (public institution, 12)",
    "91110000600037341L": "python-stdnum",
    "91120224064012553U": "python-stdnum",
    "913101127033980359": "python-stdnum",
    "91310115MA1K3BTP2B": "python-stdnum",
    "9131012056010553X5": "python-stdnum",
    "91340600MA2PBM9HXD": "python-stdnum",
    "91440300568520498A": "python-stdnum",
    "9144060573144633XL": "python-stdnum",
    "91620105L015101280": "python-stdnum",
}

# Published as invalid: hutool's test (early pilot-region code failing the standard) and the
# GB 32100 example's deliberately wrong last character.
KNOWN_INVALID = ["91350211M00013FA1N", "91350100M000100Y4Z"]


def test_weights_are_powers_of_three_mod_31() -> None:
    assert WEIGHTS == (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def test_alphabet_excludes_i_o_z_s_v() -> None:
    assert len(ALPHABET) == 31
    assert not set("IOZSV") & set(ALPHABET)


@pytest.mark.parametrize("code", sorted(KNOWN_VALID))
def test_published_code_is_valid(code: str) -> None:
    assert validate_uscc(code) == code
    assert check_character(code[:17]) == code[17]
    assert org_check_character(code[8:16]) == code[16]


def test_at_least_ten_known_answers() -> None:
    assert len(KNOWN_VALID) >= 10


@pytest.mark.parametrize("code", KNOWN_INVALID)
def test_published_invalid_code_is_refused(code: str) -> None:
    assert not is_valid_uscc(code)


def test_gb_example_wrong_check_character_message() -> None:
    # 'Z' is not even in the alphabet, so that is what is reported; a legal wrong character
    # gets the expected/got message.
    with pytest.raises(ValidationError, match=r"illegal character 'Z' at position 18"):
        validate_uscc("91350100M000100Y4Z")
    with pytest.raises(ValidationError, match=r"expected '3', got '4'"):
        validate_uscc("91350100M000100Y44")


def test_normalises_case_spaces_and_full_width() -> None:
    assert validate_uscc("  9144030071526726xg ") == "9144030071526726XG"
    full_width = "".join(chr(ord(c) + 0xFEE0) for c in "9144030071526726XG")
    assert validate_uscc(full_width) == "9144030071526726XG"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("91440300715267", "18 characters, got 14"),
        ("9144030071526726XGA", "18 characters, got 19"),
        ("91440300715I6726XG", "illegal character 'I' at position 12"),
        ("9144030071526726XO", "illegal character 'O' at position 18"),
        ("91440A0071526726XG", "illegal character 'A' at position 6"),
        ("9144030071526726XH", "check character (position 18) expected 'G', got 'H'"),
        (
            "91440300715267260N",
            "organisation-code check character (position 17) expected 'X', got '0'",
        ),
    ],
)
def test_bad_code_message_is_precise(code: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_uscc(code)
    assert message in str(info.value)


def test_non_string_refused() -> None:
    with pytest.raises(ValidationError, match="string"):
        validate_uscc(914403007152672)


def test_parse_parts() -> None:
    parts = parse_uscc("91350100M000100Y43")
    assert (parts.registration_authority, parts.entity_type, parts.division) == ("9", "1", "350100")
    assert (parts.organisation_code, parts.check) == ("M000100Y4", "3")
    assert parts.code == "91350100M000100Y43"


@given(st.integers(min_value=0, max_value=2**32))
def test_generated_codes_are_valid(seed: int) -> None:
    code = generate_uscc(random.Random(seed))
    assert validate_uscc(code) == code


def test_generate_without_rng_uses_csprng() -> None:
    assert is_valid_uscc(generate_uscc())


@given(
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=0, max_value=17),
    st.sampled_from(ALPHABET),
)
def test_every_single_substitution_is_detected(seed: int, position: int, char: str) -> None:
    code = generate_uscc(random.Random(seed))
    if code[position] == char:
        char = ALPHABET[(ALPHABET.index(char) + 1) % len(ALPHABET)]
    corrupted = code[:position] + char + code[position + 1 :]
    with pytest.raises(ValidationError) as info:
        validate_uscc(corrupted)
    if not (2 <= position < 8 and not char.isdigit()):
        # Positions outside the digits-only division are caught by the check character itself.
        assert "check character (position 18)" in str(info.value)


def test_substitution_detected_even_without_organisation_check() -> None:
    code = "9144030071526726XG"
    for position in range(18):
        for char in ALPHABET:
            if char == code[position] or (2 <= position < 8 and not char.isdigit()):
                continue
            corrupted = code[:position] + char + code[position + 1 :]
            assert not is_valid_uscc(corrupted)
            with pytest.raises(ValidationError):
                validate_uscc(corrupted, check_organisation_code=False)


def test_column_validates_and_normalises(rng: np.random.Generator) -> None:
    codes = [generate_uscc(random.Random(int(rng.integers(2**63)))) for _ in range(1000)]
    assert validate_column([c.lower() for c in codes]) == codes
    assert validate_column(np.array(codes, dtype=object)) == codes
    assert validate_column([]) == []


def test_column_error_names_the_row(rng: np.random.Generator) -> None:
    codes = [generate_uscc(random.Random(int(rng.integers(2**63)))) for _ in range(2000)]
    codes[1234] = codes[1234][:17] + ("0" if codes[1234][17] != "0" else "1")
    with pytest.raises(ValidationError) as info:
        validate_column(codes, "uscc")
    assert str(info.value).startswith("row 1234 of column 'uscc': check character (position 18)")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "row 3 of column 'entity': missing value"),
        (float("nan"), "row 3 of column 'entity': missing value"),
        ("123", "row 3 of column 'entity': a USCC has 18 characters, got 3"),
        ("91440300715I6726XG", "row 3 of column 'entity': illegal character 'I' at position 12"),
        (12, "row 3 of column 'entity': a USCC is a string"),
        (
            "\uff19144030071526726XG\u4e2d",
            "row 3 of column 'entity': a USCC has 18 characters, got 19",
        ),
    ],
)
def test_column_error_kinds(bad: object, message: str) -> None:
    values: list[object] = ["9144030071526726XG"] * 5
    values[3] = bad
    with pytest.raises(ValidationError) as info:
        validate_column(values, "entity")
    assert str(info.value).startswith(message)


def test_column_first_row_offset() -> None:
    with pytest.raises(ValidationError, match=r"^row 2 of column"):
        validate_column(["bad"], first_row=2)
