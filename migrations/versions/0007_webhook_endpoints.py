"""webhook delivery endpoints (per-endpoint concurrency)

Revision ID: 0007_webhook_endpoints
Revises: 0006_file_names
Create Date: 2026-12-02 10:00:00.000000

"""
from typing import Sequence, Union
from urllib.parse import urlsplit

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007_webhook_endpoints'
down_revision: Union[str, Sequence[str], None] = '0006_file_names'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _endpoint(url: str) -> str:
    """A frozen copy of gateway.webhooks.outbox.endpoint_of (migrations do not import the app)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return url[:300]
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = port or {"http": 80, "https": 443}.get(scheme, 0)
    return f"{scheme}://{host}:{port}"[:300]


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('endpoint', sa.String(length=300), nullable=True))
        batch_op.create_index('ix_webhook_deliveries_endpoint', ['status', 'endpoint'],
                              unique=False)
    table = sa.table('webhook_deliveries', sa.column('id', sa.String),
                     sa.column('url', sa.Text), sa.column('endpoint', sa.String),
                     sa.column('status', sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(table.c.id, table.c.url)
                        .where(table.c.status == 'pending')).all()
    for row_id, url in rows:  # only pending rows are ever claimed again
        conn.execute(table.update().where(table.c.id == row_id)
                     .values(endpoint=_endpoint(url)))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_endpoint')
        batch_op.drop_column('endpoint')
