"""Data: record types (`records`, stdlib only), JSONL I/O (`jsonl`), loaders for posts, comparisons and samples
(`loaders`), the paper's query format (`format`) and post-disjoint splits (`splits`).

Nothing is imported here, so `import rlhflab.data.records` (the labelling app) stays free of everything else.
"""
