"""A gateway configuration for tests: internal domain city.example.lg.jp, data under tmp_path,
listeners on ephemeral ports, the next hop a test names."""

from __future__ import annotations

from pathlib import Path

from gateway.app import with_ephemeral_port
from gateway.config import Config, build_config

INTERNAL = "city.example.lg.jp"
PUBLIC_URL = "https://files.city.example.lg.jp"


def make_config(tmp_path: Path, next_hop_url: str, document: dict | None = None,
                overrides: tuple[str, ...] = ()) -> Config:
    base = {
        "gateway": {"internal_domains": [INTERNAL], "hostname": "gw.test"},
        "storage": {"data_dir": str(tmp_path / "data")},
        "portal": {"public_url": PUBLIC_URL},
        "next_hop": {"url": next_hop_url, "timeout": "5s", "starttls": "off"},
    }
    for section, values in (document or {}).items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return with_ephemeral_port(build_config(base, overrides, environ={}))
