"""gear.ini: where it is found, what it accepts, and how it says what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gearqueue.cli.config_example import render_example
from gearqueue.config import find_config, load_settings, mask_url
from gearqueue.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_seed_keys_work_exactly_as_written(tmp_path: Path) -> None:
    ini = write(tmp_path / "gear.ini",
                "[projectr_service]\nqueue_enabled = 0\nqueue_host = localhost\n")
    settings = load_settings(ini, environ={})
    projectr = settings.service("projectr")
    assert projectr.queue_enabled is False
    assert projectr.queue == "projectr_jobs"
    assert settings.broker_urls("projectr") == ("amqp://guest:guest@localhost:5672/%2F",)
    assert settings.service("echo").queue == "echo_jobs"


def test_values_are_literal_so_percent_encoded_urls_survive(tmp_path: Path) -> None:
    url = "amqp://gear:pa%25ss%40word@127.0.0.1:5672/%2Fgear"
    ini = write(tmp_path / "gear.ini", f"[rabbitmq]\nurl = {url}\n")
    assert load_settings(ini, environ={}).rabbitmq.urls == (url,)


def test_several_urls_fail_over_in_order(tmp_path: Path) -> None:
    ini = write(tmp_path / "gear.ini",
                "[rabbitmq]\nurl = amqp://a:1@h1/%2F, amqps://b:2@h2:5671/v\n")
    assert load_settings(ini, environ={}).rabbitmq.urls == (
        "amqp://a:1@h1/%2F", "amqps://b:2@h2:5671/v")


def test_environment_url_overrides_the_file(tmp_path: Path) -> None:
    ini = write(tmp_path / "gear.ini", "[rabbitmq]\nurl = amqp://a:1@h1/%2F\n")
    settings = load_settings(ini, environ={"GEAR_RABBITMQ_URL": "amqp://x:y@env/%2F"})
    assert settings.rabbitmq.urls == ("amqp://x:y@env/%2F",)


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path / "explicit.ini", "")
    from_env = write(tmp_path / "env.ini", "")
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "gear.ini", "")
    assert find_config(explicit, {"GEAR_INI": str(from_env)}) == explicit
    assert find_config(None, {"GEAR_INI": str(from_env)}) == from_env
    assert find_config(None, {}) == Path("./gear.ini")


@pytest.mark.parametrize(("text", "wanted"), [
    ("[rabitmq]\nurl = amqp://h/\n", "section [rabitmq]: unknown section"),
    ("[echo_service]\nprefech = 3\n", "section [echo_service], key 'prefech': unknown key"),
    ("[echo_service]\nprefetch = many\n", "key 'prefetch': invalid literal"),
    ("[echo_service]\nprefetch = 0\n", "key 'prefetch': must be at least 1"),
    ("[echo_service]\nqueue_enabled = maybe\n", "key 'queue_enabled': expected 0/1"),
    ("[echo_service]\nqueue_type = stream\n", "key 'queue_type': expected one of classic"),
    ("[echo_service]\nfallback = redis\n",
     "section [echo_service], key 'fallback': expected one of none, inline, got 'redis'"),
    ("[rabbitmq]\nconnect_retry_seconds = -1\n", "key 'connect_retry_seconds': must be at"),
    ("[rabbitmq]\nurl = http://h/\n", "key 'url': not an amqp:// or amqps:// URL"),
    ("[echo_service]\ntime_limit = 10\nsoft_time_limit = 20\n", "key 'soft_time_limit'"),
    ("no section header\n", "not a valid ini file"),
])
def test_errors_name_file_section_and_key(tmp_path: Path, text: str, wanted: str) -> None:
    ini = write(tmp_path / "gear.ini", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(ini, environ={})
    assert str(caught.value).startswith(f"file {ini}")
    assert wanted in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.ini", environ={})


def test_no_file_anywhere_says_where_it_looked(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if Path("/etc/gear/gear.ini").exists():
        pytest.fail("this machine has /etc/gear/gear.ini; the test needs it absent")
    with pytest.raises(ConfigError, match=r"no gear.ini found.*GEAR_INI"):
        find_config(None, {})


def test_relative_paths_are_taken_from_the_ini_folder(tmp_path: Path) -> None:
    ini = write(tmp_path / "gear.ini", "[paths]\nstate_dir = var/state\n")
    assert load_settings(ini, environ={}).paths.state_dir == tmp_path / "var" / "state"


def test_example_is_the_rendering_of_the_key_table_and_loads(tmp_path: Path) -> None:
    example = ROOT / "gear.ini.example"
    assert example.read_text() == render_example(), \
        "gear.ini.example is stale: run `gearqueue check-config --example > gear.ini.example`"
    settings = load_settings(example, environ={})
    assert settings.service("projectr").queue == "projectr_jobs"


def test_every_key_of_the_example_is_accepted_uncommented(tmp_path: Path) -> None:
    text = "\n".join(line[2:] if line.startswith("; ") and " = " in line else line
                     for line in render_example().splitlines())
    load_settings(write(tmp_path / "gear.ini", text), environ={})


def test_mask_url_hides_the_password() -> None:
    assert mask_url("amqp://gear:s3cret@h:5672/%2F") == "amqp://gear:***@h:5672/%2F"
    assert mask_url("amqp://h/%2F") == "amqp://h/%2F"


def test_check_config_prints_settings_with_passwords_masked(tmp_path: Path) -> None:
    ini = write(tmp_path / "gear.ini", "[rabbitmq]\nurl = amqp://gear:s3cret@h:5672/%2F\n")
    result = subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(ini),
                             "check-config"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout
    assert "amqp://gear:***@h:5672/%2F" in result.stdout


def test_check_config_exits_2_on_a_bad_file(tmp_path: Path) -> None:
    ini = write(tmp_path / "gear.ini", "[echo_service]\nprefetch = lots\n")
    result = subprocess.run([sys.executable, "-m", "gearqueue.cli", "--config", str(ini),
                             "check-config"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "key 'prefetch'" in result.stderr
