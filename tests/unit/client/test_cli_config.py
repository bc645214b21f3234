"""The `vdi` administrator commands' wiring, without a manager: every one answers --help, the configuration is
read from the environment before the file, the file `vdi login` writes is private, and a missing configuration
is a clear error."""
from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

import pytest

from vdi_client import config
from vdi_client.cli import ProgressBar, parse_settings, quoted, table
from vdi_client.errors import VdiClientError

COMMANDS = [["login"], ["desktops", "list"], ["desktops", "reboot"], ["desktops", "migrate"], ["pools", "create"],
            ["pools", "resize"], ["pools", "edit"], ["hosts", "maintenance"], ["policies", "run"],
            ["events", "tail"], ["jobs", "wait"]]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_answers_help(args):
    result = subprocess.run([sys.executable, "-m", "manager.cli", *args, "--help"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: vdi {' '.join(args)}")


def test_no_configuration_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "manager.cli", "desktops", "list"], capture_output=True,
                            text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "set VDI_URL" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in ("VDI_URL", "VDI_TOKEN", "VDI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_saved_config_is_private_and_read_back(home):
    path = config.save("https://vdi.example.com", 'tok"en\\x')
    assert path == home / "vdi" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load() == config.Settings("https://vdi.example.com", 'tok"en\\x')


def test_saving_narrows_an_older_wider_file(home):
    path = home / "vdi" / "config.toml"
    path.parent.mkdir()
    path.write_text('url = "x"\n')
    path.chmod(0o644)
    config.save("https://a", "t")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_environment_comes_before_the_file(home, monkeypatch):
    config.save("https://file", "file-token")
    monkeypatch.setenv("VDI_URL", "https://env")
    assert config.load() == config.Settings("https://env", "file-token")
    monkeypatch.setenv("VDI_TOKEN", "env-token")
    assert config.load() == config.Settings("https://env", "env-token")
    assert config.load("https://flag", "flag-token") == config.Settings("https://flag", "flag-token")


def test_a_broken_file_is_named(home):
    (home / "vdi").mkdir()
    (home / "vdi" / "config.toml").write_text("url = \n")
    with pytest.raises(config.NotConfigured, match="config.toml is not valid TOML"):
        config.load()


def test_settings_and_quoting():
    assert parse_settings(["size=3", "description=two words", "lease_seconds=null", 'name="7"']) == {
        "size": 3, "description": "two words", "lease_seconds": None, "name": "7"}
    with pytest.raises(VdiClientError, match="key=value"):
        parse_settings(["size"])
    assert quoted("eng-001") == "eng-001"
    assert quoted('a "b"') == '"a \\"b\\""'


def test_table_and_progress_bar_only_on_a_terminal():
    out = io.StringIO()
    table([{"name": "a", "ok": True, "n": None}, {"name": "long-name", "ok": False, "n": 1.5}], ["name", "ok", "n"],
          out=out)
    assert out.getvalue().splitlines() == ["NAME       OK   N", "a          yes  -", "long-name  no   1.5"]
    piped = io.StringIO()
    bar = ProgressBar(piped)
    bar.show(0.5, "half")
    bar.close()
    assert piped.getvalue() == ""  # a pipe or log file gets no bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal():
    from vdi_client.models import Job

    screen = Terminal()
    bar = ProgressBar(screen)
    bar.job(Job(id="j", kind="pools.resize", state="running", progress=50.0, eta_seconds=12))
    bar.job(Job(id="j", kind="pools.resize", state="succeeded", progress=100.0))
    bar.close()
    frames = screen.getvalue().split("\r")[1:]
    assert frames[0].startswith("[" + "#" * 15 + "." * 15 + "]  50% pools.resize running, about 12 s left")
    assert frames[1].startswith("[" + "#" * 30 + "] 100% pools.resize succeeded")
    assert screen.getvalue().endswith("\n")  # the next output starts on a line of its own
