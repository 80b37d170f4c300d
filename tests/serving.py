"""Start ``siamindex serve`` as a real process on a free loopback port, for tests and tools."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    index: Path, *extra: str, timeout: float = 120
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``siamindex serve --index INDEX`` on 127.0.0.1, once ready: (process, base URL). Killed
    on exit if it is still running."""
    port = free_port()
    command = [sys.executable, "-m", "siamindex", "serve", "--index", str(index)]
    process = subprocess.Popen(
        [*command, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
        start_new_session=True,  # its own process group: serve --workers starts children
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.communicate()[1][-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("serve never became ready")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield process, base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the server and any workers it started
        process.communicate()
