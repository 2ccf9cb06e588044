"""Configuration: unsafe timing refused with a reason, overrides, the sample kept current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vigil import config
from vigil.config import ConfigError, DetectionSettings

ROOT = Path(__file__).resolve().parents[2]


def _load(tmp_path: Path, text: str, *overrides: str) -> config.Settings:
    path = tmp_path / "vigil.conf"
    path.write_text(text)
    conf = config.load(["--config-file", str(path)], config_files=[], overrides=overrides)
    return config.settings_from_conf(conf)


BASE = "[api]\nauth_token = t\n[agent]\nkey = k\n"


def test_defaults_meet_the_detection_target(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE)
    # declared failed within 2 s of the last heartbeat, with defaults
    assert s.detection.failed_after <= 2.0
    assert s.database_url.startswith("sqlite:")


@pytest.mark.parametrize(
    ("detection", "why"),
    [
        (DetectionSettings(heartbeat_interval=0.5, suspect_after=0.6), "one lost or late"),
        (
            DetectionSettings(heartbeat_interval=0.5, suspect_after=1.0, failed_after=1.2),
            "packet loss would fence healthy hosts",
        ),
        (
            DetectionSettings(heartbeat_interval=0.2, suspect_after=1.0, failed_after=1.0),
            "must exceed suspect_after",
        ),
    ],
)
def test_unsafe_timing_is_refused_with_the_reason(detection: DetectionSettings, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        detection.validate()


def test_unsafe_timing_in_a_file_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="failed_after"):
        _load(
            tmp_path,
            BASE + "[detection]\nheartbeat_interval = 1.0\nfailed_after = 2.0\n"
            "suspect_after = 2.0\n",
        )


def test_secrets_are_required_and_can_come_from_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="auth_token"):
        _load(tmp_path, "[agent]\nkey = k\n")
    (tmp_path / "token").write_text("from-file\n")
    s = _load(tmp_path, f"[api]\nauth_token_file = {tmp_path / 'token'}\n[agent]\nkey = k\n")
    assert s.api_token == "from-file"
    assert "from-file" not in repr(s)  # never in a log line that prints the settings


def test_generated_secrets_can_follow_token_on_a_command_line() -> None:
    # a secret starting with "-" after `--token` is taken for an option by argparse
    # (one in 64 of token_urlsafe's; a CI run failed on one)
    secrets = {config.random_secret() for _ in range(3000)}
    assert len(secrets) == 3000
    assert not [s for s in secrets if s.startswith("-")]


def test_overrides_are_typed_and_checked(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE, "recovery.max_parallel_evacuations=3", "detection.failed_after=2.5")
    assert s.recovery.max_parallel_evacuations == 3
    assert s.detection.failed_after == 2.5
    with pytest.raises(ConfigError, match="no option"):
        _load(tmp_path, BASE, "recovery.nonsense=1")
    with pytest.raises(ConfigError):
        _load(tmp_path, BASE, "recovery.max_parallel_evacuations=many")


def test_sample_config_is_current(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "oslo_config.generator",
            "--config-file",
            str(ROOT / "etc" / "vigil-config-generator.conf"),
            "--output-file",
            str(out),
        ],
        check=True,
    )
    committed = (ROOT / "etc" / "vigil.conf.sample").read_text()
    assert out.read_text() == committed, (
        "etc/vigil.conf.sample is stale: run "
        "oslo-config-generator --config-file etc/vigil-config-generator.conf"
    )
