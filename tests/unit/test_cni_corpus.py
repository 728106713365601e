"""The malformed-input corpus through parse_request: every case a precise CniError."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.unit.corpus import Case, load_malformed
from vpc_cni.cni.errors import CniError, ErrorCode
from vpc_cni.cni.request import error_version, parse_request
from vpc_cni.cni.versions import SUPPORTED_VERSIONS

CASES = load_malformed()


def test_corpus_is_large_and_names_are_unique() -> None:
    names = Counter(case.name for case in CASES)
    assert len(CASES) >= 60
    assert [name for name, count in names.items() if count > 1] == []


def test_corpus_covers_every_input_error_code() -> None:
    codes = {case.expect_code for case in CASES}
    expected = {
        ErrorCode.INCOMPATIBLE_VERSION,
        ErrorCode.UNSUPPORTED_FIELD,
        ErrorCode.INVALID_ENVIRONMENT,
        ErrorCode.DECODE_FAILURE,
        ErrorCode.INVALID_NETWORK_CONFIG,
    }
    assert codes == expected


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_parse_request_rejects_with_expected_code(case: Case) -> None:
    with pytest.raises(CniError) as caught:
        parse_request(case.env, case.stdin)
    error = caught.value
    assert error.code == case.expect_code, error
    if case.expect_msg is not None:
        assert case.expect_msg in error.msg, error
    reply = json.loads(error.to_json(error_version(case.stdin)))
    assert reply["code"] == case.expect_code
    assert reply["cniVersion"] in SUPPORTED_VERSIONS
    assert "Traceback" not in reply["msg"] + reply.get("details", "")


def test_stdin_repeat_builds_huge_input_without_storing_it() -> None:
    huge = next(case for case in CASES if case.name == "stdin-over-1mib")
    assert len(huge.stdin) > 1 << 20
    assert huge.stdin.startswith(b'{"cniVersion"')


def test_env_bytes_restore_invalid_utf8() -> None:
    case = next(case for case in CASES if case.name == "containerid-invalid-utf8")
    assert case.env_bytes()[b"CNI_CONTAINERID"] == b"c0\xffee"
