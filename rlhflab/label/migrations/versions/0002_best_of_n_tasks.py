"""best-of-N tasks: tasks.choices

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 10:00:00

Only a nullable column is added (ALTER TABLE ADD COLUMN on SQLite too): a batch "recreate" of `tasks` would DROP
the old table, and with foreign keys on that DROP deletes every assignment and answer through ON DELETE CASCADE.
Existing tasks keep their kind ("comparison" or "rating") and get NULL choices.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('tasks', sa.Column('choices', sa.JSON(), nullable=True))


def downgrade() -> None:
    # a downgrade must not leave best-of-N tasks behind as comparisons with no summaries
    op.execute("DELETE FROM tasks WHERE kind = 'best_of_n'")
    op.drop_column('tasks', 'choices')  # not batch: native DROP COLUMN (SQLite >= 3.35), no table recreate
