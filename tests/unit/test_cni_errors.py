"""CNI error JSON, as runtimes read it."""

from __future__ import annotations

import json

from vpc_cni.cni.errors import CniError, ErrorCode


def test_error_json_has_the_spec_fields() -> None:
    error = CniError(ErrorCode.TRY_AGAIN_LATER, "address pool empty", "refill requested")
    assert json.loads(error.to_json("0.4.0")) == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": "address pool empty",
        "details": "refill requested",
    }


def test_empty_details_are_left_out() -> None:
    body = json.loads(CniError(ErrorCode.DECODE_FAILURE, "bad").to_json("1.0.0"))
    assert body == {"cniVersion": "1.0.0", "code": 6, "msg": "bad"}


def test_code_is_a_plain_integer_in_json() -> None:
    error = CniError(ErrorCode.PLUGIN_NOT_AVAILABLE, "daemon starting")
    assert type(error.code) is int
    assert b'"code": 50' in error.to_json("1.1.0")


def test_codes_match_the_spec() -> None:
    assert [int(code) for code in ErrorCode] == [1, 2, 3, 4, 5, 6, 7, 11, 50, 51]


def test_message_survives_str_for_logs() -> None:
    assert str(CniError(7, "invalid network config: mtu", "also: name")) == (
        "invalid network config: mtu: also: name"
    )
