"""per-key provenance mode (off | metadata | signed)

Revision ID: 0010_provenance
Revises: 0007_webhook_endpoints
Create Date: 2026-12-02 16:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0010_provenance'
down_revision: Union[str, Sequence[str], None] = '0007_webhook_endpoints'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("provenance", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("provenance")
