"""replays: what is kept to recognise a retried call, sealed; out of the usage ledger

Revision ID: b7e2c4d9a1f3
Revises: 19b66f6036d3
Create Date: 2026-11-28 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7e2c4d9a1f3'
down_revision = '19b66f6036d3'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('replays',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.String(length=32), nullable=False),
    sa.Column('usage_id', sa.Integer(), nullable=True),
    sa.Column('key_hash', sa.String(length=64), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('delivered', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['usage_id'], ['usage.id'], name=op.f('fk_replays_usage_id_usage'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_replays')),
    sa.UniqueConstraint('app_id', 'key_hash', name='replay_key'),
    sa.UniqueConstraint('usage_id', name=op.f('uq_replays_usage_id'))
    )
    with op.batch_alter_table('replays', schema=None) as batch_op:
        batch_op.create_index('ix_replays_request', ['app_id', 'request_hash'], unique=False)

    # The ledger keeps only what was charged: keys, fingerprints and answers (which
    # held visitors' documents in plain text) move out, sealed, into replays.
    with op.batch_alter_table('usage', schema=None) as batch_op:
        batch_op.drop_constraint('app_idempotency_key', type_='unique')
        batch_op.drop_column('response_body')
        batch_op.drop_column('request_fingerprint')
        batch_op.drop_column('idempotency_key')


def downgrade():
    with op.batch_alter_table('usage', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('request_fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('response_body', sa.Text(), nullable=True))
        batch_op.create_unique_constraint('app_idempotency_key', ['app_id', 'idempotency_key'])

    with op.batch_alter_table('replays', schema=None) as batch_op:
        batch_op.drop_index('ix_replays_request')

    op.drop_table('replays')
