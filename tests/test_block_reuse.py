"""The engine hands its large CPU blocks out again from frame to frame instead of mapping fresh
memory for every feature map; only its own allocations, and it gives them back when an engine
is destroyed."""

import numpy as np
import pytest
import torch

from engine_library import Engine, block_counts
from small_network import export_small_network

# The x4 side's 64-channel maps are 10 MB here: well above the 1 MiB below which malloc is kept.
LENGTH, HEIGHT, WIDTH = 12, 40, 64


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("reuse") / "small.pt"
    net = export_small_network(path)
    video = torch.rand(LENGTH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1)).numpy()
    return net, path, video


def test_windows_after_the_first_reuse_every_large_block(model):
    net, path, video = model
    engine = Engine(path)
    counts = []
    for n in range(2, LENGTH - 2):  # sequential playback: sliding windows
        numbers = list(range(n - 2, n + 3))
        output = engine.run(video[numbers], numbers)
        counts.append(block_counts())
        # Reused memory carries nothing stale into the result.
        with torch.no_grad():
            expected = net(torch.from_numpy(video[numbers])[None])[0].numpy()
        np.testing.assert_allclose(output, expected, atol=1e-4)
    fresh = [c[0] for c in counts]
    reused = [c[1] for c in counts]
    assert fresh[-1] == fresh[2], f"blocks still allocated anew in steady state: {fresh}"
    assert reused[-1] - reused[2] >= 5 * (len(counts) - 3), reused  # several per window


def test_allocations_outside_the_engine_are_not_kept(model):
    _, path, video = model
    engine = Engine(path)
    engine.run(video[:5], list(range(5)))
    before = block_counts()
    large = torch.empty(64 << 20, dtype=torch.uint8)
    large.fill_(1)
    del large
    assert block_counts() == before


def test_destroying_an_engine_gives_the_idle_blocks_back(model):
    _, path, video = model
    engine = Engine(path)
    engine.run(video[:5], list(range(5)))
    assert block_counts()[2] > 0  # the run's temporaries wait for the next frame
    del engine
    assert block_counts()[2] == 0
