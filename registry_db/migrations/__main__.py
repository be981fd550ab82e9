"""``python -m registry_db.migrations MESSAGE``: autogenerate the next migration."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from registry_db.engine import alembic_config


def main(message: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        with engine.begin() as conn:
            cfg = alembic_config(conn)
            command.upgrade(cfg, "heads")
            heads = ScriptDirectory.from_config(cfg).get_heads()
            number = len(list(ScriptDirectory.from_config(cfg).walk_revisions())) + 1
            command.revision(cfg, message=message, autogenerate=True,
                             rev_id=f"{number:04d}", head=heads[0] if heads else "base")
        engine.dispose()


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "schema change")
