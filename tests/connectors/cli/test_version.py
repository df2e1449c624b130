"""``trusted-space --version`` and ``trusted-space version`` print the installed version."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from connectors.cli.main import app


def test_version_option_and_command_print_the_installed_version() -> None:
    runner = CliRunner()
    for args in (["--version"], ["version"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert result.output.strip() == version("trusted-space")
