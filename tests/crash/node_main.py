"""Run real node processes fast: a fork server for the crash-safety harness.

Starting ``trusted-space node serve`` costs one to three seconds on a small machine, almost all of
it importing FastAPI, numpy and the protocol code; a harness that kills a node a hundred times
would spend minutes importing. So this module runs as one long-lived process that imports
everything once and then *forks* a fresh node process on request. Each child is a real node: it
opens the node directory's SQLite store itself (nothing of the store exists before the fork),
builds the app with :func:`connectors.node.app.create_app` exactly as ``node serve`` does, and
serves
it with uvicorn. The harness kills a child with SIGKILL; the kernel then closes its files, which
is all a crashed node leaves behind, and the next child recovers the store from disk.

The listening socket of each node is bound once by this server and inherited by every child of
that node (as with systemd socket activation): a restarted node serves on the same port with no
race for it, and a request that arrives while no child runs waits in the backlog for the next one.

Protocol (one JSON object per line on stdin, one answer per line on stdout)::

    {"op": "start", "dir": "/path/to/node"}   -> {"pid": 1234}
    {"op": "reap", "pid": 1234}               -> {"pid": 1234, "status": -9}
    end of input                              -> every child still running is killed; exit

``python -m tests.crash.node_main serve DIR`` runs one node in the foreground instead (for
debugging a harness failure by hand).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import h11  # noqa: F401 - imported here, once, rather than in every child
import httpcore  # noqa: F401
import sqlalchemy.dialects.sqlite  # noqa: F401
import uvicorn
import uvicorn.lifespan.on
import uvicorn.protocols.http.auto
import uvicorn.protocols.websockets.auto

from connectors.common.settings import load_settings
from connectors.node.app import create_app

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def _serve(directory: Path, sock: socket.socket | None) -> None:
    """Build the node of ``directory`` and serve it until killed (the child's whole life)."""
    settings = load_settings(directory)
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    server.run(sockets=None if sock is None else [sock])


def _child(directory: Path, sock: socket.socket, others: list[socket.socket]) -> None:
    """In the forked child: own output, default signals, then serve; never return."""
    code = 0
    try:
        for other in others:
            other.close()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        log_dir = directory / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(log_dir / "node.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(null_fd)
        os.close(log_fd)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        print(f"--- crash harness: node process {os.getpid()} starting", file=sys.stderr)
        _serve(directory, sock)
    except BaseException as exc:  # report whatever killed the child, then exit
        print(f"--- crash harness: node process failed: {exc!r}", file=sys.stderr)
        code = 1
    finally:
        os._exit(code)


class ForkServer:
    """The parent: binds each node's socket once and forks a child per start."""

    def __init__(self) -> None:
        self.sockets: dict[Path, socket.socket] = {}
        self.children: set[int] = set()

    def _socket(self, directory: Path) -> socket.socket:
        sock = self.sockets.get(directory)
        if sock is None:
            settings = load_settings(directory)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.host, settings.port))
            sock.listen(128)
            sock.set_inheritable(True)
            self.sockets[directory] = sock
        return sock

    def start(self, directory: Path) -> int:
        sock = self._socket(directory)
        others = [s for d, s in self.sockets.items() if d != directory]
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(directory, sock, others)
        self.children.add(pid)
        return pid

    def reap(self, pid: int) -> int:
        if pid not in self.children:
            raise ValueError(f"{pid} is not a node process of this server")
        _, status = os.waitpid(pid, 0)
        self.children.discard(pid)
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        for pid in sorted(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            except ProcessLookupError:
                pass
        self.children.clear()
        for sock in self.sockets.values():
            sock.close()


def _answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def run_server() -> None:
    server = ForkServer()
    try:
        for line in sys.stdin:
            try:
                request = json.loads(line)
                if request["op"] == "start":
                    _answer({"pid": server.start(Path(request["dir"]))})
                elif request["op"] == "reap":
                    pid = int(request["pid"])
                    _answer({"pid": pid, "status": server.reap(pid)})
                else:
                    _answer({"error": f"unknown op {request['op']!r}"})
            except Exception as exc:  # the harness reads the error
                _answer({"error": repr(exc)})
    finally:
        server.close()


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "serve":
        _serve(Path(argv[1]).resolve(), None)
    elif not argv:
        run_server()
    else:
        sys.exit("usage: python -m tests.crash.node_main [serve DIR]")


if __name__ == "__main__":
    main(sys.argv[1:])
