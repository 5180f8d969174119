"""Sharded processes run the same number of forward passes: a process with fewer chunks repeats one, marked."""

import torch

from rlhflab.train.distributed import Processes, chunk_range, lockstep_chunks

CPU = torch.device("cpu")


def test_whole_processes_just_take_their_chunks():
    assert lockstep_chunks(5, Processes(0, 2, CPU)) == [(0, True), (1, True)]
    assert lockstep_chunks(5, Processes(1, 2, CPU)) == [(2, True), (3, True), (4, True)]


def test_sharded_processes_pad_to_the_longest_share_with_dropped_repeats():
    # 5 chunks over 2 processes: 2 and 3 -> rank 0 repeats its last chunk once and drops the result
    assert lockstep_chunks(5, Processes(0, 2, CPU, shard=True)) == [(0, True), (1, True), (1, False)]
    assert lockstep_chunks(5, Processes(1, 2, CPU, shard=True)) == [(2, True), (3, True), (4, True)]
    # fewer chunks than processes: the empty ones run chunk 0 and drop it
    shares = [lockstep_chunks(1, Processes(r, 3, CPU, shard=True)) for r in range(3)]
    assert shares == [[(0, False)], [(0, False)], [(0, True)]]
    assert lockstep_chunks(0, Processes(0, 2, CPU, shard=True)) == []


def test_every_chunk_is_kept_exactly_once_for_any_split():
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            kept = [k for r in range(world) for k, keep in lockstep_chunks(n, Processes(r, world, CPU, shard=True))
                    if keep]
            assert kept == list(range(n)) == [k for r in range(world) for k in chunk_range(n, Processes(r, world, CPU))]
            lengths = {len(lockstep_chunks(n, Processes(r, world, CPU, shard=True))) for r in range(world)}
            assert len(lengths) == 1  # lockstep
