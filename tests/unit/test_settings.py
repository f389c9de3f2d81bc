"""Settings: ZAPFLOW_* names, the ecosystem's standard names, `.env`, and clear CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zapflow.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings()
    assert (settings.http_port, settings.topic_partitions) == (8000, 12)
    assert settings.database_url is None
    assert settings.kafka_bootstrap_servers is None
    assert settings.effective_public_url == "http://localhost:8000"
    assert settings.runtime_file == Path(".zapflow/runtime.json")


def test_standard_names_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@db/x")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ZAPFLOW_HTTP_PORT", "9001")
    monkeypatch.setenv("ZAPFLOW_PUBLIC_URL", "https://zap.example/")
    settings = Settings()
    assert settings.database_url == "postgresql://a@db/x"
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-test"
    assert "sk-test" not in repr(settings)
    assert settings.effective_public_url == "https://zap.example"
    assert settings.http_port == 9001


def test_dotenv_file_is_read_and_blank_means_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ZAPFLOW_TOPIC_PARTITIONS=3\nDATABASE_URL=\nOPENAI_API_KEY=\n")
    settings = Settings()
    assert settings.topic_partitions == 3
    assert settings.database_url is None
    assert settings.openai_api_key is None


def test_a_bad_value_is_one_clear_cli_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "zapflow", "migrate"],
        env={"ZAPFLOW_HTTP_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ZAPFLOW_HTTP_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    standard = {
        "database_url": "DATABASE_URL",
        "kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
        "openai_api_key": "OPENAI_API_KEY",
        "openai_base_url": "OPENAI_BASE_URL",
    }
    missing = [
        name
        for name in Settings.model_fields
        if f"`{standard.get(name, 'ZAPFLOW_' + name.upper())}`" not in readme
    ]
    assert missing == []
