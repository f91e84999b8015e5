"""The database layer: the pool with its timeouts and retries (``Store``), the schema's
migrations, start-up's database steps and the embedded PostgreSQL.

It knows no domain: each domain keeps its statements beside it and runs them through
``Store.run`` (an op that adds to a value is given as ``landed_once(work)``, applied once
across its retries; a write whose caller has a row to commit with it takes a ``Within``).
Import the store's names from here; ``relay.db.migrate``,
``relay.db.bootstrap`` and ``relay.db.embedded_pg`` are imported by name where needed.
"""

from relay.db.landed import landed_once
from relay.db.store import RETRYABLE_ERRORS, DatabaseUnavailable, Store
from relay.db.within import Within

__all__ = ["RETRYABLE_ERRORS", "DatabaseUnavailable", "Store", "Within", "landed_once"]
