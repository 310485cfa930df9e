"""The configuration through the real command (`python -m gateway`, a process): check-config exits
2 with one line naming the key, the path from the environment, explain (the configuration itself:
tests/unit/test_config.py)."""

import subprocess
import sys

from tests.support.processes import ROOT

EXAMPLE = ROOT / "config" / "gateway.toml"


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
        env=env, timeout=60,
    )


def test_check_config_exits_2_with_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nmax_recipients = "abc"\n')
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "smtp.max_recipients" in lines[0]


def test_check_config_accepts_the_example_and_an_override():
    result = run_cli("check-config", "--config", str(EXAMPLE), "-o", "smtp.max_recipients=7")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    bad = run_cli("check-config", "--config", str(EXAMPLE), "-o", "policy.convert=everything")
    assert bad.returncode == 2 and "policy.convert" in bad.stderr


def test_config_path_from_environment_variable(tmp_path):
    import os

    bad = tmp_path / "env.toml"
    bad.write_text("[nonsense]\n")
    env = dict(os.environ, PPAP_GATEWAY_CONFIG=str(bad))
    result = run_cli("check-config", env=env)
    assert result.returncode == 2 and "nonsense" in result.stderr


def test_explain_prints_department_and_each_recipient():
    result = run_cli(
        "explain", "--config", str(EXAMPLE), "--from", "somu@city.example.lg.jp",
        "--to", "tanaka@partner.example.com", "--to", "jinji@city.example.lg.jp",
    )
    assert result.returncode == 0, result.stderr
    assert "department  somu" in result.stdout
    assert "max_downloads=5" in result.stdout
    assert "tanaka@partner.example.com  external" in result.stdout
    assert "jinji@city.example.lg.jp  internal" in result.stdout
