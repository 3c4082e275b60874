"""grant receipts: the SHA-256 of each grant's receipt capability

grants.receipt_hash is nullable and unique: grants made before receipts existed have
none (their receipt cannot be opened), new grants get one at creation.

Revision ID: c4a9e1f27b60
Revises: b7e2c4d9a1f3
Create Date: 2026-12-02 08:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c4a9e1f27b60'
down_revision = 'b7e2c4d9a1f3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receipt_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_grants_receipt_hash'), ['receipt_hash'])


def downgrade():
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_grants_receipt_hash'), type_='unique')
        batch_op.drop_column('receipt_hash')
