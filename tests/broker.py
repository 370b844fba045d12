"""A throwaway mosquitto broker for the tests: a free local port, a config in a temporary folder, stop and restart.

Tests that need it skip, with the reason, when Debian's ``mosquitto`` is not
installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (path for path in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(path, os.X_OK)), None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def require_mosquitto() -> str:
    """The broker program's path, or skip the test saying how to get it."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients)")
    return MOSQUITTO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """mosquitto listening on 127.0.0.1 only, without persistence; anonymous unless ``users`` are given.

    Parameters
    ----------
    folder : Path
        Where its config, password file and log go.
    users : dict, optional
        ``{name: password}``: then only these may connect.
    """

    def __init__(self, folder: Path, *, users: dict[str, str] | None = None) -> None:
        self.program = require_mosquitto()
        self.folder, self.port = folder, free_port()
        self.config, self.log_path = folder / "mosquitto.conf", folder / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        if os.geteuid() == 0:
            lines.append("user root")  # keep root's access to the temporary folder (mode 700)
        if users:
            if MOSQUITTO_PASSWD is None:
                pytest.skip("mosquitto_passwd is not installed (Debian: apt-get install mosquitto)")
            passwords = folder / "passwords"
            for name, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", *([] if passwords.exists() else ["-c"]), passwords, name,
                                password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen | None = None

    def url(self, topic: str, *, user: str = "") -> str:
        """``mqtt://[user@]127.0.0.1:PORT/topic``."""
        return f"mqtt://{user + '@' if user else ''}127.0.0.1:{self.port}/{topic}"

    def start(self, timeout: float = 10.0) -> Broker:
        """Start it and return once it accepts connections."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([self.program, "-c", str(self.config)], stdout=log,
                                             stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s); does nothing when not running."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
