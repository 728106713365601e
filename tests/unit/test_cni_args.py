"""CNI_ARGS parsing with libcni's rules (IgnoreUnknown, strict pairs)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpc_cni.cni.cni_args import KNOWN_KEYS, parse_cni_args
from vpc_cni.cni.errors import CniError, ErrorCode


def test_known_keys_need_no_ignore_unknown() -> None:
    args = parse_cni_args("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u1")
    assert dict(args) == {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-0", "K8S_POD_UID": "u1"}


@pytest.mark.parametrize("flag", ["1", "true", "True", "TRUE"])
def test_ignore_unknown_admits_other_keys(flag: str) -> None:
    args = parse_cni_args(f"IgnoreUnknown={flag};IP=10.0.1.5;K8S_POD_NAME=web-0")
    assert args["IP"] == "10.0.1.5"
    assert args["K8S_POD_NAME"] == "web-0"


@pytest.mark.parametrize("flag", ["0", "false", "FALSE"])
def test_ignore_unknown_false_refuses_other_keys(flag: str) -> None:
    with pytest.raises(CniError) as caught:
        parse_cni_args(f"IgnoreUnknown={flag};IP=10.0.1.5")
    assert caught.value.code == ErrorCode.INVALID_ENVIRONMENT
    assert "IP" in caught.value.msg


def test_empty_value_and_trailing_separator() -> None:
    assert dict(parse_cni_args("K8S_POD_UID=;")) == {"K8S_POD_UID": ""}


def test_empty_text_is_no_args() -> None:
    assert dict(parse_cni_args("")) == {}


def test_last_duplicate_wins() -> None:
    assert parse_cni_args("K8S_POD_NAME=a;K8S_POD_NAME=b")["K8S_POD_NAME"] == "b"


@pytest.mark.parametrize("text", ["K8S_POD_NAME", "K8S_POD_NAME=a=b", "=x", "a;b"])
def test_malformed_pairs_are_refused_even_with_ignore_unknown(text: str) -> None:
    with pytest.raises(CniError) as caught:
        parse_cni_args(f"IgnoreUnknown=1;{text}")
    assert caught.value.code == ErrorCode.INVALID_ENVIRONMENT
    assert caught.value.msg.startswith("invalid CNI_ARGS: ")


values = st.text(st.characters(exclude_characters=";=", exclude_categories=("Cs",)))


@settings(deadline=None, database=None)
@given(
    st.dictionaries(st.sampled_from(sorted(KNOWN_KEYS - {"IgnoreUnknown"})), values),
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True), values),
)
def test_joined_pairs_parse_back(known: dict[str, str], other: dict[str, str]) -> None:
    """Whatever a runtime joins with ';' and '=' comes back, unknown keys included."""
    pairs = {**other, **known, "IgnoreUnknown": "1"}
    text = ";".join(f"{key}={value}" for key, value in pairs.items())
    assert dict(parse_cni_args(text)) == pairs
