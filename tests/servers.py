"""Real servers for the service's tests: ``echoengine serve`` in a subprocess, and a throwaway PostgreSQL cluster.

Both start on free local resources (a free TCP port on 127.0.0.1; a Unix
socket in a temporary folder for PostgreSQL, no TCP) and are stopped by the
fixtures that start them. PostgreSQL refuses to run as root: when the tests
run as root, the cluster runs as a system user made for it (``useradd``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_USER = "echoengine-test"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``echoengine serve BUNDLE --store STORE ...`` in a subprocess, its output in ``STORE/../server-N.log``.

    Parameters
    ----------
    bundle, store : Path
        What it serves and where it keeps audio (and its SQLite database, without ``db``).
    db : str, optional
        A database URL.
    options : sequence of str
        More command-line options (``--threshold 0``, ``--max-upload-mb 1``).
    """

    count = 0

    def __init__(self, bundle: Path, store: Path, *, db: str | None = None, options: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        Server.count += 1
        self.log = store.parent / f"server-{Server.count}.log"
        command = [sys.executable, "-m", "echoengine", "serve", str(bundle), "--store", str(store), "--port",
                   str(self.port), "--log-level", "warning", *options] + (["--db", db] if db else [])
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                                os.environ.get("PYTHONPATH")]))}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    def wait_ready(self, timeout: float = 90.0) -> Server:
        """Wait until ``/healthz`` answers 200; an error with the server's log if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.output()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """What the server has written so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``: no clean-up of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.client.close()

    def stop(self) -> None:
        """Stop it as Ctrl-C would (the worker finishes its recording first)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.client.close()

    def wait_for(self, recording_ids, timeout: float = 120.0, statuses=("done", "failed")) -> list[dict]:
        """Poll until every recording has one of ``statuses``; their JSON."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [self.client.get(f"/api/recordings/{i}").json() for i in recording_ids]
            if all(r.get("status") in statuses for r in found):
                return found
            time.sleep(0.2)
        raise AssertionError(f"recordings not finished in {timeout} s: {found}\n{self.output()[-3000:]}")


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), or None when not installed."""
    for folder in [os.environ.get("ECHOENGINE_PG_BIN", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                                                    reverse=True)]:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


class PostgresCluster:
    """A PostgreSQL cluster in a temporary folder, listening on a Unix socket only, trust authentication.

    Run as root, the cluster runs as the system user :data:`PG_USER` (made
    when missing). :meth:`database` makes an empty database and returns its
    SQLAlchemy URL.
    """

    def __init__(self, bin_folder: Path) -> None:
        self.bin = bin_folder
        self.folder = Path(tempfile.mkdtemp(prefix="echoengine-pg-"))
        self.data, self.socket = self.folder / "data", self.folder / "socket"
        self.socket.mkdir()
        self.user = PG_USER if os.geteuid() == 0 else None
        if self.user:
            if subprocess.run(["id", "-u", self.user], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.user],
                               check=True, capture_output=True)
            shutil.chown(self.folder, self.user)
            shutil.chown(self.socket, self.user)
        self.role = self.user or os.environ.get("USER") or "postgres"
        self._run("initdb", "-D", str(self.data), "-U", self.role, "--auth=trust", "--no-sync", "-E", "UTF8")
        options = f"-k {self.socket} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w",
                  "-t", "60", "start")
        self.count = 0

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.folder)
        if result.returncode:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def database(self, prefix: str = "echo") -> str:
        """A new, empty database; its ``postgresql+psycopg://`` URL."""
        import psycopg

        self.count += 1
        name = f"{prefix}{self.count}"
        with psycopg.connect(host=str(self.socket), user=self.role, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.role}@/{name}?host={self.socket}"

    def stop(self) -> None:
        """Stop the server and remove the cluster."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
