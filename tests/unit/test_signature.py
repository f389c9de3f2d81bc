"""`X-Twilio-Signature`: Twilio's documented vector, repeated parameters, ports, proxies."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from api.signature import signature_is_valid, signed_url
from api.twilio_form import FormParams, parse_form

pytestmark = pytest.mark.unit


def form(**fields: str) -> FormParams:
    return parse_form(urlencode(fields).encode())


def test_twilio_documented_signature_vector() -> None:
    params = form(
        CallSid="CA1234567890ABCDE",
        Caller="+14158675310",
        Digits="1234",
        From="+14158675310",
        To="+18005551212",
    )
    url = "https://example.com/myapp.php?foo=1&bar=2"
    assert signature_is_valid("12345", url, params, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    assert not signature_is_valid("12345", url, params, "L/OH5YylLD5NRKLltdqwSvS0BnU")
    assert not signature_is_valid("54321", url, params, "L/OH5YylLD5NRKLltdqwSvS0BnU=")
    assert not signature_is_valid("12345", url, params, "é")
    params["Digits"] = ["4321"]
    assert not signature_is_valid("12345", url, params, "L/OH5YylLD5NRKLltdqwSvS0BnU=")


def test_signature_covers_every_value_of_repeated_parameters_like_the_sdk() -> None:
    params = parse_form(b"To=a&Extra=2&Extra=1&Extra=2")
    url = "https://zap.example.com:8443/v1/x"
    signature = RequestValidator("tok").compute_signature(url, params)
    assert signature_is_valid("tok", url, params, signature)
    assert RequestValidator("tok").validate(url, params, signature)
    params["Extra"] = ["2"]
    assert not signature_is_valid("tok", url, params, signature)


def test_signature_accepts_the_url_with_or_without_the_default_port() -> None:
    params = form(A="1")
    signature = RequestValidator("tok").compute_signature("https://zap.example.com:443/p", params)
    assert signature_is_valid("tok", "https://zap.example.com/p", params, signature)


def test_signed_url_is_the_public_url_plus_path_and_query() -> None:
    assert (
        signed_url(
            "https://user:pw@zap.example.com/base/#frag", "/v1/t", "a=1", {}, trust_proxy=False
        )
        == "https://zap.example.com/base/v1/t?a=1"
    )
    assert signed_url("http://localhost:8000", "/v1/t", "", {}, trust_proxy=False) == (
        "http://localhost:8000/v1/t"
    )


def test_signed_url_behind_a_trusted_proxy() -> None:
    headers = {"x-forwarded-proto": "https, http", "x-forwarded-host": "abc.ngrok.app, proxy"}
    assert signed_url("http://localhost:8000", "/v1/t", "x=1", headers, trust_proxy=True) == (
        "https://abc.ngrok.app/v1/t?x=1"
    )
    assert signed_url("http://localhost:8000", "/v1/t", "", headers, trust_proxy=False) == (
        "http://localhost:8000/v1/t"
    )
    assert signed_url("https://zap.example.com", "/v1/t", "", {}, trust_proxy=True) == (
        "https://zap.example.com/v1/t"
    )
