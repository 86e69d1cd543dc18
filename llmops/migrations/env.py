"""The one alembic environment: llmops/db.py passes the connection (already in its locked transaction), the
store's declared tables and its version table through `config.attributes`. Not for the `alembic` command
line: stores migrate themselves when opened (llmops.db.open_store)."""

from alembic import context

attrs = context.config.attributes
context.configure(connection=attrs["connection"], target_metadata=attrs["target_metadata"],
                  version_table=attrs["version_table"], render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
