"""What a mail administrator installs: a wheel built from this tree (not the editable install
`make` uses), in a fresh virtualenv, started as `ppap-gateway serve` from outside the source tree
(so nothing can be read from it), one sample PPAP mail through it to an outbox next hop, the
portal's landing page and stylesheet from the installed package; and the systemd unit that runs
it, checked by systemd's own tools.

The wheel is built with pip (`pip wheel --no-deps`, build isolation: setuptools comes from the
index pip is configured with, as for any user) from a copy of pyproject.toml, README.md and
gateway/ only, so a file the package needs but does not declare is missing from the wheel and
the test fails. Dependencies come from the same index (the machine's pip cache makes this quick).
On this machine: build ~2.5 s, virtualenv ~3 s, install ~6 s, serve and send ~3 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.support.processes import ROOT, free_port, wait_listening
from tests.support.received import links_in

UNIT = ROOT / "packaging" / "systemd" / "ppap-gateway.service"
SYSUSERS = ROOT / "packaging" / "sysusers.d" / "ppap-gateway.conf"
INSTALLED_COMMAND = "/opt/ppap-gateway/bin/ppap-gateway"  # where the unit expects the program
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
# What the package must carry besides its modules: templates, the portal's static files and the
# database migrations (a subpackage without data files would not show a missing declaration).
PACKAGE_DATA = (
    "gateway/templates/mail/notice.ja.txt",
    "gateway/templates/mail/notice.en.html",
    "gateway/templates/mail/receipt.ja.txt",
    "gateway/templates/web/landing.html",
    "gateway/templates/web/base.html",
    "gateway/templates/web/static/portal.css",
    "gateway/store/migrations/sqlite/0001_initial.sql",
    "gateway/containers/__init__.py",
)


def run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a step outside the source tree; fail with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PPAP_GATEWAY_CONFIG",
                                                            "PPAP_GATEWAY_MASTER_KEY")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv holding the wheel built from this tree, and nothing else of ours."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "gateway", source / "gateway",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    timings = {}
    started = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
         str(source)], cwd=work, timeout=300)
    (wheel,) = (work / "dist").glob("ppap_gateway-*.whl")
    timings["build"] = time.monotonic() - started

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = {p.relative_to(source).as_posix() for p in (source / "gateway").rglob("*")
               if p.is_file()}
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    assert shipped <= names, f"in gateway/ but not in the wheel: {sorted(shipped - names)}"

    venv = work / "venv"
    started = time.monotonic()
    run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    timings["venv"] = time.monotonic() - started
    started = time.monotonic()
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=work,
        timeout=300)
    timings["install"] = time.monotonic() - started
    print("wheel smoke: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items()))
    return venv


def test_the_installed_wheel_relays_a_ppap_mail_to_the_outbox_and_serves_the_portal(
    installed: Path, tmp_path: Path
):
    command = installed / "bin" / "ppap-gateway"
    where = run([str(installed / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
                cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout  # not the source tree
    assert run([str(command), "--version"], cwd=tmp_path).stdout.strip() == f"ppap-gateway {VERSION}"

    smtp, portal, admin = free_port(), free_port(), free_port()
    outbox, data = tmp_path / "outbox", tmp_path / "data"
    config = tmp_path / "gateway.toml"  # the example configuration, as an administrator copies it
    shutil.copy2(ROOT / "config" / "gateway.toml", config)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PPAP_GATEWAY_CONFIG",
                                                            "PPAP_GATEWAY_MASTER_KEY")}
    started = time.monotonic()
    process = subprocess.Popen(
        [str(command), "serve", "--config", str(config),
         "-o", f"smtp.listen=127.0.0.1:{smtp}", "-o", f"next_hop.url=outbox:{outbox}",
         "-o", f"storage.data_dir={data}", "-o", f"storage.database={data}/gateway.sqlite3",
         "-o", f"storage.master_key_file={data}/master.key",
         "-o", f"portal.listen=127.0.0.1:{portal}",
         "-o", f"portal.public_url=http://127.0.0.1:{portal}",
         "-o", f"admin.listen=127.0.0.1:{admin}"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_listening(smtp, process)
        sent = run([str(command), "send-sample", "--server", f"127.0.0.1:{smtp}"], cwd=tmp_path)
        assert sent.stdout.startswith("250"), sent.stdout
        (eml,) = outbox.glob("*.eml")
        (token,) = links_in(eml.read_bytes())
        with urllib.request.urlopen(f"http://127.0.0.1:{portal}/d/{token}", timeout=10) as page:
            assert page.status == 200
            html = page.read().decode("utf-8")
        with urllib.request.urlopen(f"http://127.0.0.1:{portal}/static/portal.css",
                                    timeout=10) as css:
            assert css.status == 200 and css.headers.get_content_type() == "text/css"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    print(f"wheel smoke: serve, send and read the portal {time.monotonic() - started:.1f} s")
    assert process.returncode == 0, stderr
    assert "見積書_2026年11月.zip" in html and '<form method="post"' in html
    assert '<link rel="stylesheet" href="/static/portal.css">' in html


def unit_for(command: Path, tmp_path: Path) -> Path:
    """The shipped unit, its program path pointed at an installed `ppap-gateway` (systemd
    verifies that the command exists), under its own name."""
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED_COMMAND) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_COMMAND, str(command)), encoding="utf-8")
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path):
    unit = unit_for(Path(sys.executable).parent / "ppap-gateway", tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                               str(unit)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    print(f"systemd-analyze security: exposure {exposure.group(1)}")
    assert float(exposure.group(1)) <= 2.0, security.stdout  # systemd calls 0-2 "OK"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers here")
def test_the_sysusers_file_creates_the_user_the_unit_runs_as(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    dry_run = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "--dry-run", str(SYSUSERS)],
                             capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "Creating user 'ppap-gateway'" in dry_run.stdout + dry_run.stderr
    assert "User=ppap-gateway\n" in UNIT.read_text(encoding="utf-8")
