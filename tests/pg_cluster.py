"""A private PostgreSQL cluster for the tests: its own data directory under a temporary
path, a Unix socket in that directory, no TCP listener, nothing changed in the system's
clusters. ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
``postgres`` user (``runuser``); otherwise as the current user.

``Cluster.start()`` returns once the server accepts connections (``pg_ctl -w``);
``Cluster.stop()`` stops it (``-m fast``) and removes the directory. ``Cluster.fresh_url()``
gives each caller its own schema, so one cluster serves a whole session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

PORT = 54329
"""The number in the socket's name (``.s.PGSQL.54329``); no TCP port is opened."""


def bindir() -> Path | None:
    """The newest installed PostgreSQL server's ``bin`` directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """One private cluster (see the module docstring)."""

    def __init__(self, binaries: Path):
        self.bin = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="pgtest."))
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.dir.chmod(0o700)
        self.data = self.dir / "data"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.dir)
        if done.returncode:
            log = self.dir / "pg.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):"
                               f" {done.stdout}{done.stderr}{tail}")

    def start(self) -> Cluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-instructions", "-E", "UTF8", "--locale", "C")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-o",
                  f"-c listen_addresses='' -k {self.dir} -p {PORT} -c max_connections=200",
                  "-w", "start")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres", schema: str | None = None) -> str:
        """A ``postgresql://`` URL of the cluster through its socket, with ``search_path``
        set to ``schema`` when given."""
        url = f"postgresql://postgres@/{database}?host={quote(str(self.dir), safe='')}&port={PORT}"
        if schema:
            url += "&options=" + quote(f"-csearch_path={schema}", safe="")
        return url

    def fresh_url(self) -> str:
        """Create a new empty schema and return a URL that uses it."""
        import psycopg

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return self.url(schema=schema)
