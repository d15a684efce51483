"""channel states: upstream and admin disables kept across restarts and replicas

Revision ID: 0004_channel_states
Revises: 0003_webhooks
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004_channel_states'
down_revision: str | Sequence[str] | None = '0003_webhooks'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'channel_states',
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('disabled_reason', sa.Text(), nullable=False),
        sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('channel_states')
