"""Runs neutron-server's WSGI app; executed by the neutron venv's python, never imported.

Neutron 29 ships no server script, only ``neutron.wsgi.api:application``. This file
stays stdlib-only (plus neutron) because it runs in neutron's own virtualenv, which
does not contain vpc_cni. It is started by ``vpc_cni.lab.neutron`` as::

    python -I neutron_server.py STATE_DIR NAME

STATE_DIR holds neutron.conf, api-paste.ini and the sqlite database; NAME only tags
the process (the per-test prefix) so leftovers can be traced. The bound port is
written to STATE_DIR/port once the server accepts connections.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _QuietHandler(WSGIRequestHandler):
    """Neutron logs every request itself; wsgiref's access log would double the log."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _create_schema(database: Path) -> None:
    """Builds the schema from the models: alembic migrations cannot ALTER sqlite tables."""
    import sqlalchemy
    from neutron.db.migration.models import head

    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    head.get_metadata().create_all(engine)
    engine.dispose()


def _write_port(state_dir: Path, port: int) -> None:
    """Publishes the port atomically so the parent never reads a half-written number."""
    tmp = state_dir / "port.tmp"
    tmp.write_text(str(port))
    tmp.rename(state_dir / "port")


def main() -> None:
    state_dir = Path(sys.argv[1])
    # Neutron parses sys.argv as oslo.config options; ours would be rejected.
    sys.argv = sys.argv[:1]
    database = state_dir / "neutron.sqlite"
    if not database.exists():
        _create_schema(database)
    os.environ["OS_NEUTRON_CONFIG_DIR"] = str(state_dir)
    os.environ["OS_NEUTRON_CONFIG_FILES"] = "neutron.conf"
    from neutron.wsgi.api import application

    # One request at a time: sqlite reports "database is locked" under concurrent writes.
    server: WSGIServer = make_server(
        "127.0.0.1", 0, application, server_class=WSGIServer, handler_class=_QuietHandler
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _write_port(state_dir, server.server_port)
    server.serve_forever()


if __name__ == "__main__":
    main()
