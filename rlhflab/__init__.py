"""rlhflab: learning to summarize from human feedback, the whole loop (SFT, labels, RM, PPO, evaluation)."""

__version__ = "0.1.0"
