"""upload names and metadata

Revision ID: 0006_file_names
Revises: 0005_job_leases
Create Date: 2026-12-02 10:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006_file_names'
down_revision: Union[str, Sequence[str], None] = '0005_job_leases'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('name', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('meta', sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_column('meta')
        batch_op.drop_column('name')
