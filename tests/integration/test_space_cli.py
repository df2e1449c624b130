"""``trusted-space space up|down`` as a user runs them: separate processes, exit codes, output.

These start their own small spaces (not the session's), so they are marked ``slow``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from connectors.spaces.space import SpaceError, load_config, read_space_file, up

from .conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_config(directory: Path, extra: str = "") -> Path:
    path = directory / "space.toml"
    path.write_text(
        '[space]\nname = "mini"\ndir = "out"\nbase_port = 0\n\n'
        '[[node]]\nname = "city-centre"\nroles = ["operator"]\n\n'
        '[[node]]\nname = "bank-x"\nroles = ["consumer"]\n' + extra,
        encoding="utf-8",
    )
    return path


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port some other program listens on, for the ``with`` block."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def test_up_json_then_down(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    started = cli("space", "up", str(config), "--json", "--timeout", "60")

    assert started.returncode == 0, started.stderr
    lines = started.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    nodes = {n["name"]: n for n in summary["nodes"]}
    assert set(nodes) == {"city-centre", "bank-x"}
    for node in nodes.values():
        assert httpx.get(f"{node['url']}/readyz", timeout=10).status_code == 200
        assert alive(node["pid"])
    with pytest.raises(SpaceError, match="already running"):
        up(load_config(config))

    stopped = cli("space", "down", "--space-dir", str(tmp_path / "out"))

    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    deadline = time.monotonic() + 10
    while any(alive(n["pid"]) for n in nodes.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(n["pid"]) for n in nodes.values())
    assert all(n["pid"] is None for n in read_space_file(tmp_path / "out")["nodes"])
    # a second run reuses the directories: same keys, same ports, already admitted
    key = (tmp_path / "out" / "bank-x" / "keys" / "node.key").read_bytes()
    with up(load_config(config)) as again:
        assert again.urls["bank-x"] == nodes["bank-x"]["url"]
        assert httpx.get(f"{again.urls['bank-x']}/readyz", timeout=10).status_code == 200
    assert (tmp_path / "out" / "bank-x" / "keys" / "node.key").read_bytes() == key


def test_config_error_exit_2_names_the_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'colour = "blue"\n')

    result = cli("space", "up", str(config))

    assert result.returncode == 2
    assert f"{config}:13:" in result.stderr
    assert "node 'bank-x': unknown key 'colour'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_port_in_use_fails_before_starting(tmp_path: Path) -> None:
    with busy_port() as port:
        config = write_config(tmp_path, f"port = {port}\n")

        with pytest.raises(SpaceError, match=f"port {port}") as info:
            up(load_config(config))

    assert info.value.node == "bank-x"
    assert not (tmp_path / "out" / "space.json").exists()


def test_node_that_dies_is_named_with_its_log(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'settings = { store_url = "nowhere:" }\n')

    result = cli("space", "up", str(config), "--timeout", "60")

    assert result.returncode == 1
    assert "bank-x" in result.stderr
    assert "exited" in result.stderr
    assert "nowhere:" in result.stderr  # from the tail of its log
    doc = read_space_file(tmp_path / "out")
    assert [n["pid"] for n in doc["nodes"]] == [None, None]  # the operator was stopped too


def test_a_changed_base_port_after_a_failed_start_is_taken_up(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with busy_port() as port:
        config.write_text(
            config.read_text(encoding="utf-8").replace("base_port = 0", f"base_port = {port}"),
            encoding="utf-8",
        )
        failed = cli("space", "up", str(config), "--json")
        assert failed.returncode == 1
        problem = json.loads(failed.stdout)["problem"]
        assert f"port {port}" in problem["detail"] and problem["node"] == "city-centre"

        # Act: the user changes base_port (here: free ports) and starts again.
        config.write_text(
            config.read_text(encoding="utf-8").replace(f"base_port = {port}", "base_port = 0"),
            encoding="utf-8",
        )
        with up(load_config(config), timeout=60) as running:
            # Assert: the stale directory took the new address; members found the operator there.
            url = running.urls["city-centre"]
            assert not url.endswith(f":{port}")
            assert httpx.get(f"{running.urls['bank-x']}/readyz", timeout=10).status_code == 200
            anchor = json.loads((tmp_path / "out" / "bank-x" / "operator.json").read_text())
            assert anchor["url"] == url


def test_a_node_that_ran_keeps_its_address_and_the_refusal_says_why(tmp_path: Path) -> None:
    with busy_port() as port:
        config = write_config(tmp_path, f"port = {port}\n")
        with pytest.raises(SpaceError, match=f"port {port}"):
            up(load_config(config))
    (tmp_path / "out" / "bank-x" / "logs").mkdir()  # as if it had been started
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        moved = other.getsockname()[1]
    config = write_config(tmp_path, f"port = {moved}\n")

    with pytest.raises(SpaceError, match=f"was started at 127.0.0.1:{port}") as info:
        up(load_config(config))

    assert info.value.node == "bank-x"
    assert f"127.0.0.1:{moved}" in str(info.value)
