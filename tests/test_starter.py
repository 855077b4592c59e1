"""`suki-relay init` writes a starter that passes check; `serve` without a config says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from suki_relay.cli.main import main


def test_init_writes_a_starter_that_passes_check(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "relay"
    assert main(["init", str(folder)]) == 0
    assert (folder / "actions.yaml").is_file() and (folder / "templates").is_dir()
    assert any((folder / "templates").iterdir())
    assert "#" in (folder / "actions.yaml").read_text()  # commented
    monkeypatch.setenv("SUKI_WEBHOOK_SECRET", "starter-secret")
    capsys.readouterr()
    assert main(["-c", str(folder / "actions.yaml"), "check"]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out


def test_init_keeps_an_existing_config_unless_forced(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "actions.yaml").write_text("# mine\n")
    assert main(["init", str(tmp_path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "actions.yaml").read_text() == "# mine\n"
    assert main(["init", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "actions.yaml").read_text() != "# mine\n"


def test_serve_without_a_config_names_it_and_suggests_init(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SUKI_RELAY_CONFIG", raising=False)
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "no config file 'actions.yaml'" in err and "suki-relay init" in err
    assert "Errno" not in err and "Traceback" not in err
