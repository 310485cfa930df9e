"""What a reload (SIGHUP) may change: everything but the sockets, the store and the number of
workers, which belong to the running supervisor."""

from __future__ import annotations

from gateway.config import build_config
from gateway.supervisor import needs_restart, worker_count


def config(**sections):
    document = {"portal": {"public_url": "https://files.city.example.lg.jp"}, **sections}
    return build_config(document, environ={})


def test_policy_templates_and_hostname_reload_but_listeners_storage_and_workers_do_not():
    running = config(gateway={"workers": 2})
    assert needs_restart(running, config(
        gateway={"workers": 2, "hostname": "gw2.example.lg.jp"}, policy={"locale": "en"},
    )) == []
    assert needs_restart(running, config(
        gateway={"workers": 3}, smtp={"listen": "127.0.0.1:10026"},
        storage={"data_dir": "/srv/other"},
    )) == ["smtp.listen", "storage", "gateway.workers"]


def test_auto_is_one_worker_per_core_this_process_may_run_on():
    assert worker_count(config(gateway={"workers": "auto"})) >= 1
    assert worker_count(config(gateway={"workers": 3})) == 3
