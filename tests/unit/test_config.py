"""Configuration: validated once, every problem one line naming the key, exit status 2."""

from datetime import timedelta
from pathlib import Path

import pytest

from gateway.config import ConfigError, build_config, load_config, parse_override
from gateway.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "gateway.toml"


def test_example_config_loads_and_shows_every_section():
    config = load_config(str(EXAMPLE), environ={})
    assert config.smtp.listen_port == 10025
    assert config.gateway.internal_domains == ("city.example.lg.jp",)
    assert config.policy.link_lifetime == timedelta(days=7)
    assert [d.name for d in config.departments] == ["somu", "kikaku"]
    assert config.departments[0].policy.max_downloads == 5
    # a department inherits the default policy's other keys
    assert config.departments[1].policy.link_lifetime == timedelta(days=3)
    assert config.departments[1].policy.max_downloads == 0


def test_defaults_apply_to_an_empty_document():
    config = build_config({}, environ={})
    assert config.next_hop.url == "outbox:var/outbox"
    assert config.policy.convert == "encrypted-zip"
    assert config.storage.database == Path("var/data/gateway.sqlite3")
    assert str(config.gateway.timezone) == "Asia/Tokyo"


@pytest.mark.parametrize(
    "document, key",
    [
        ({"smtp": {"listn": "127.0.0.1:25"}}, "smtp.listn"),
        ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients"),
        ({"smtp": {"max_recipients": True}}, "smtp.max_recipients"),
        ({"smtp": {"max_message_size": "lots"}}, "smtp.max_message_size"),
        ({"policy": {"link_lifetime": "forever"}}, "policy.link_lifetime"),
        ({"policy": {"link_lifetime": "60d"}}, "policy.link_lifetime"),
        ({"policy": {"password": "postcard"}}, "policy.password"),
        ({"smtp": {"tls_cert": "/nonexistent/cert.pem"}}, "smtp.tls_cert"),
        ({"dkim": {"keys": [{"domain": "a.jp", "selector": "s", "key_file": "/no/key.pem"}]}},
         "dkim.keys[0].key_file"),
        ({"departments": [{"name": "x", "senders": ["a@b"], "policy": {"locale": "fr"}}]},
         "departments[0].policy.locale"),
        ({"departments": [{"name": "x", "senders": ["a@b"], "colour": "red"}]},
         "departments[0].colour"),
        ({"next_hop": {"url": "http://example"}}, "next_hop.url"),
        ({"gateway": {"timezone": "Mars/Olympus"}}, "gateway.timezone"),
        ({"smtp": {"allowed_clients": ["not-a-net"]}}, "smtp.allowed_clients"),
        ({"extra": {}}, "extra"),
        ({"notify": {"claim_lease": "500ms"}}, "notify.claim_lease"),
    ],
)
def test_each_bad_value_names_its_key(document, key):
    with pytest.raises(ConfigError) as caught:
        build_config(document, environ={})
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


def test_overrides_are_validated_like_the_file():
    config = build_config({}, ("smtp.max_recipients=5", "next_hop.url=smtp://127.0.0.1:2526"), {})
    assert config.smtp.max_recipients == 5
    assert config.next_hop.url == "smtp://127.0.0.1:2526"
    with pytest.raises(ConfigError) as caught:
        build_config({}, ("smtp.max_recipients=abc",), {})
    assert caught.value.key == "smtp.max_recipients"


def test_override_parses_toml_values_or_takes_a_bare_string():
    assert parse_override('smtp.allowed_clients=["10.0.0.0/8"]') == ("smtp", "allowed_clients", ["10.0.0.0/8"])
    assert parse_override("policy.locale=en") == ("policy", "locale", "en")
    with pytest.raises(ConfigError):
        parse_override("nodot=1")


def test_master_key_comes_from_the_named_environment_variable():
    config = build_config({"storage": {"master_key_env": "MY_KEY"}}, environ={"MY_KEY": "abc"})
    assert config.storage.master_key_from_env == "abc"


def test_units():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration(30) == timedelta(seconds=30)
    assert parse_size("50MiB") == 50 * 1024 * 1024
    assert parse_size("2MB") == 2_000_000
    for bad in ("-1s", "7 parsecs", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_example_config_names_every_key_of_every_section():
    import re

    from gateway.config import SECTION_KEYS

    text = EXAMPLE.read_text(encoding="utf-8")
    named = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.M))
    missing = {f"{section}.{key}" for section, keys in SECTION_KEYS.items()
               for key in keys if key not in named}
    assert missing == set(), "config/gateway.toml shows every key with its default"


def test_the_notice_claim_lease_is_a_setting_of_ten_minutes_by_default():
    assert build_config({}, environ={}).notify.claim_lease == timedelta(minutes=10)
    assert build_config({}, ("notify.claim_lease=3s",), {}).notify.claim_lease == \
        timedelta(seconds=3)
