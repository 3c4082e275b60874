"""hot path indexes: what the sweep and the claims need at scale (issue 15's scale run)

- ix_usage_pending_hold gets `AND hold_expires_at IS NOT NULL` (always true): only the
  sweeps, which compare hold_expires_at, may use it. The claim of settle and release by
  primary key implied the old predicate, and PostgreSQL's planner preferred the partial
  index, reading every entry left by the calls settled since the last vacuum.
- ix_replays_created_at: the sweep deletes retry records older than REPLAY_TTL by it
  (it read the whole table).
- replay_key becomes a unique index of the records with a key only, and
  ix_replays_request one of the key-less records, (app_id, request_hash, id): a key-less
  call's lookup walked replay_key's (app, NULL) entries, every key-less call of the app
  in the last 30 minutes.
- ix_app_spend_hour: the sweep forgets budget hours that left the window by it (it read
  the whole table).

Revision ID: d5c62fd20855
Revises: c4a9e1f27b60
Create Date: 2026-12-03 07:37:52.659220

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd5c62fd20855'
down_revision = 'c4a9e1f27b60'
branch_labels = None
depends_on = None

OLD_PENDING_HOLD = "status = 'pending'"
PENDING_HOLD = "status = 'pending' AND hold_expires_at IS NOT NULL"


def _pending_hold(predicate):
    op.drop_index('ix_usage_pending_hold', table_name='usage')
    op.create_index(
        'ix_usage_pending_hold',
        'usage',
        ['hold_expires_at'],
        unique=False,
        postgresql_where=sa.text(predicate),
        sqlite_where=sa.text(predicate),
    )


def upgrade():
    _pending_hold(PENDING_HOLD)
    op.create_index('ix_replays_created_at', 'replays', ['created_at'], unique=False)
    op.create_index('ix_app_spend_hour', 'app_spend', ['hour'], unique=False)
    with op.batch_alter_table('replays', schema=None) as batch_op:
        batch_op.drop_constraint('replay_key', type_='unique')
    op.create_index(
        'replay_key',
        'replays',
        ['app_id', 'key_hash'],
        unique=True,
        postgresql_where=sa.text('key_hash IS NOT NULL'),
        sqlite_where=sa.text('key_hash IS NOT NULL'),
    )
    op.drop_index('ix_replays_request', table_name='replays')
    op.create_index(
        'ix_replays_request',
        'replays',
        ['app_id', 'request_hash', 'id'],
        unique=False,
        postgresql_where=sa.text('key_hash IS NULL'),
        sqlite_where=sa.text('key_hash IS NULL'),
    )


def downgrade():
    op.drop_index('ix_replays_request', table_name='replays')
    op.create_index('ix_replays_request', 'replays', ['app_id', 'request_hash'], unique=False)
    op.drop_index('replay_key', table_name='replays')
    with op.batch_alter_table('replays', schema=None) as batch_op:
        batch_op.create_unique_constraint('replay_key', ['app_id', 'key_hash'])
    op.drop_index('ix_app_spend_hour', table_name='app_spend')
    op.drop_index('ix_replays_created_at', table_name='replays')
    _pending_hold(OLD_PENDING_HOLD)
