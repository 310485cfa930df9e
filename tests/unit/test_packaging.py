"""What an installation carries, checked without building anything (tests/e2e/test_packaging.py
builds the wheel, installs it and runs it): every file the package reads at run time is declared
as package data, the templates are found inside the package, `ppap-gateway --version` reports
the installed metadata, and the systemd unit says what README.md says it does."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import BUNDLED_TEMPLATES, GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
UNIT = ROOT / "packaging" / "systemd" / "ppap-gateway.service"
CONFIG_PATH = "/etc/ppap-gateway/gateway.toml"


def declared_package_data() -> set[Path]:
    """The files setuptools puts into the wheel besides modules: [tool.setuptools.package-data]
    patterns, each relative to its package's directory."""
    found: set[Path] = set()
    for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        directory = ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            found.update(path for path in directory.glob(pattern) if path.is_file())
    return found


def test_every_file_of_the_package_that_is_not_a_module_is_declared_package_data():
    data_files = {path for path in PACKAGE.rglob("*") if path.is_file()
                  and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts}
    assert data_files, "no data files found: the templates should be under gateway/"
    missing = sorted(str(path.relative_to(ROOT)) for path in data_files - declared_package_data())
    assert missing == []


def test_the_templates_are_found_inside_the_package_and_are_the_default():
    assert BUNDLED_TEMPLATES == PACKAGE / "templates"
    assert GatewaySettings().templates_dir == BUNDLED_TEMPLATES
    for name in ("mail/notice.ja.txt", "mail/notice.en.html", "web/landing.html",
                 "web/static/portal.css"):
        assert (BUNDLED_TEMPLATES / name).is_file(), name
    # templates/ at the top stays, for the administrator who looks there: a link to the package's
    top = ROOT / "templates"
    assert top.is_symlink() and top.resolve() == BUNDLED_TEMPLATES.resolve()


def test_version_option_prints_the_installed_metadata_version(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    expected = metadata.version("ppap-gateway")
    assert expected == PYPROJECT["project"]["version"]  # `make` reinstalls when pyproject changes
    assert capsys.readouterr().out == f"ppap-gateway {expected}\n"


def test_version_of_a_tree_that_was_never_installed_says_so(monkeypatch):
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cli.metadata, "version", not_installed)
    assert cli.installed_version() == "unknown (not installed)"


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """The unit file as systemd reads it: sections of keys, each with its values in order
    (comments and blank lines skipped; no line continuations are used)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(UNIT.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not expected"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"line {number} is not KEY=VALUE: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_the_systemd_unit_runs_serve_as_its_own_user_with_the_hardening_asked_for():
    unit = unit_settings()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    expect = {
        "User": "ppap-gateway", "Group": "ppap-gateway",
        "ExecStart": f"/opt/ppap-gateway/bin/ppap-gateway serve --config {CONFIG_PATH}",
        "Restart": "on-failure", "RestartPreventExitStatus": str(cli.EXIT_CONFIG),
        "StateDirectory": "ppap-gateway", "WorkingDirectory": "/var/lib/ppap-gateway",
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "ProtectHome": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    assert {key: service.get(key, [None])[-1] for key in expect} == expect
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_readme_tells_how_to_install_the_service_with_the_paths_the_unit_uses():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.partition("\n## As a service\n")[2].partition("\n## ")[0]
    assert section, "README.md has no 'As a service' section"
    for needed in ("packaging/systemd/ppap-gateway.service", "packaging/sysusers.d/",
                   CONFIG_PATH, "/opt/ppap-gateway", "/var/lib/ppap-gateway",
                   "systemctl enable --now ppap-gateway"):
        assert needed in section, needed
