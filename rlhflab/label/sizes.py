"""How long each stored text may be: the one place the database columns (models), the JSON API's and the HTML
forms' validation (schemas, pages) and the file parsers (formats) take their limits from, so that a value one
of them accepts the others store and export back. Characters, not bytes. Standard library only."""

from __future__ import annotations

USERNAME = 64  # users.username; imported workers' names are cut to it
PROJECT_NAME = 200  # projects.name
POST_KEY = 200  # posts.post_key: a post's id in its source data
SUBREDDIT = 200  # posts.subreddit (a CNN/DM article's site)
POLICY = 200  # tasks.policy_a / policy_b, a sample's policy
SPLIT = 64  # tasks.split
IDEMPOTENCY_KEY = 100  # answers.idempotency_key
TEXT = 200_000  # a post, a summary, a continuation (Text columns: the bound is ours, not the database's)
INSTRUCTIONS = 20_000  # projects.instructions
NOTE = 5_000  # answers.note
WORKER = USERNAME  # a label's worker becomes an (external) account
BATCH = 64  # a label's batch (read, not stored: an export's batch is the project's name)
