"""ServerSettings.from_env on plain dicts: every problem once, each naming its variable."""

from __future__ import annotations

import pytest

from mtls.errors import ConfigError
from mtls.settings import DEFAULT_CIPHERS, ServerSettings

FILES = {
    "MTLS_CERTFILE": "pki/out/userservice-chain.crt",
    "MTLS_KEYFILE": "pki/out/userservice.key",
    "MTLS_CA_CERTS": "pki/out/root.crt",
}


def problems_of(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        ServerSettings.from_env({**FILES, **env})
    head, *problems = str(caught.value).split("\n  - ")
    assert head == "invalid mTLS server settings:"
    return problems


@pytest.mark.parametrize("allow_from", ["nonsense", "nonsense, 10.0.0.300/8"])
def test_a_malformed_proxy_allow_from_is_reported_once_not_as_missing(allow_from: str) -> None:
    problems = problems_of({"MTLS_PROXY_PROTOCOL": "v2", "MTLS_PROXY_ALLOW_FROM": allow_from})

    assert problems[0] == "MTLS_PROXY_ALLOW_FROM has 'nonsense', which is not an IP or CIDR"
    assert len(problems) == len(allow_from.split(","))
    assert not any("needs MTLS_PROXY_ALLOW_FROM" in p for p in problems)


@pytest.mark.parametrize("allow_from", ["", " , "])
def test_a_proxy_mode_without_allow_from_says_it_needs_one(allow_from: str) -> None:
    problems = problems_of({"MTLS_PROXY_PROTOCOL": "v2", "MTLS_PROXY_ALLOW_FROM": allow_from})

    assert problems == [
        "MTLS_PROXY_PROTOCOL=v2 needs MTLS_PROXY_ALLOW_FROM: the load balancer addresses "
        "(CIDRs) that may send a PROXY header"
    ]


def test_one_good_network_beside_a_bad_one_reports_only_the_bad_one() -> None:
    problems = problems_of({"MTLS_PROXY_PROTOCOL": "v1", "MTLS_PROXY_ALLOW_FROM": "10.0.0.0/8 x"})

    assert problems == ["MTLS_PROXY_ALLOW_FROM has 'x', which is not an IP or CIDR"]


def test_proxy_allow_from_takes_commas_and_spaces_and_ipv6() -> None:
    settings = ServerSettings.from_env(
        {
            **FILES,
            "MTLS_PROXY_PROTOCOL": "v2",
            "MTLS_PROXY_ALLOW_FROM": "10.0.0.1, ::1 192.0.2.0/24",
        }
    )

    assert [str(n) for n in settings.proxy_allow_from] == ["10.0.0.1/32", "::1/128", "192.0.2.0/24"]
    assert settings.proxy_allowed("192.0.2.9")
    assert settings.proxy_allowed("::ffff:10.0.0.1")
    assert not settings.proxy_allowed("10.0.0.2")


def test_ciphers_default_to_the_forward_secret_aead_list() -> None:
    assert ServerSettings.from_env(FILES).ciphers == DEFAULT_CIPHERS


def test_the_seeds_cipher_profile_is_accepted() -> None:
    settings = ServerSettings.from_env({**FILES, "MTLS_CIPHERS": "ECDHE-RSA-AES256-GCM-SHA384"})

    assert settings.ciphers == "ECDHE-RSA-AES256-GCM-SHA384"


def test_a_cipher_list_openssl_does_not_know_is_refused_naming_the_variable() -> None:
    problems = problems_of({"MTLS_CIPHERS": "NO-SUCH-CIPHER"})

    assert problems == ["MTLS_CIPHERS='NO-SUCH-CIPHER' selects no cipher OpenSSL knows"]
