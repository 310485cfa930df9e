"""Envelope addresses: which are plain mailboxes (delivered where their domain says), the domain,
and the null sender."""

import pytest

from gateway.addresses import NULL_SENDER, domain_of, is_plain_mailbox, reverse_path
from gateway.pipeline import policy


@pytest.mark.parametrize("address", [
    "tanaka@city.example.lg.jp",
    "Tanaka.Ichiro+ppap@City.Example.LG.JP",
    "o'brien-x_y=z@ward.city.example.lg.jp",
    "kacho@city.example.lg.jp.",  # a trailing root dot names the same domain
    "田中@市役所.example.jp",  # RFC 6531: non-ASCII letters are atext
])
def test_plain_mailboxes(address):
    assert is_plain_mailbox(address)


@pytest.mark.parametrize("address", [
    "tanaka%partner.example.com@city.example.lg.jp",  # percent hack
    "partner.example.com!tanaka@city.example.lg.jp",  # UUCP bang path
    '"tanaka@partner.example.com"@city.example.lg.jp',  # quoted "@"
    '"tanaka"@city.example.lg.jp',  # anything quoted
    '"a b"@city.example.lg.jp',
    "@partner.example.com:tanaka@city.example.lg.jp",  # a source route left in
    "@a.example,@b.example:tanaka@city.example.lg.jp",
    "tanaka@[192.0.2.1]",  # address literals
    "tanaka@[IPv6:2001:db8::1]",
    "a..b@city.example.lg.jp", ".a@city.example.lg.jp", "a.@city.example.lg.jp",
    "a b@city.example.lg.jp", "a\t@city.example.lg.jp", "田\u3000中@city.example.lg.jp",
    "a\u202e@city.example.lg.jp",  # bidi override
    "tanaka", "tanaka@", "@city.example.lg.jp", "", "<>",
    "tanaka@city..example.lg.jp", "tanaka@-city.example.lg.jp", "tanaka@city.example.lg.jp%x",
    "a@b@city.example.lg.jp",
])
def test_anything_a_hop_could_route_elsewhere_is_not_plain(address):
    assert not is_plain_mailbox(address)


def test_domain_of_and_its_old_home():
    assert domain_of("a@City.Example.LG.JP.") == "city.example.lg.jp"
    assert policy.domain_of is domain_of  # still importable from policy


def test_null_reverse_path_is_the_empty_sender():
    assert reverse_path("<>") == NULL_SENDER == "" and reverse_path(None) == ""
    assert reverse_path("somu@city.example.lg.jp") == "somu@city.example.lg.jp"
