"""Scoring processes give every batch's scores back, in order, and say so when one fails."""

import numpy as np
import pytest

from echoengine.errors import EchoError
from echoengine.scorepool import ScoringPool, can_fork

pytestmark = pytest.mark.skipif(not can_fork(), reason="scoring processes are forked (not on this system)")


class _Energy:
    """A scorer of windows: each window's mean square and its process (a model stands here in tests of the pool)."""

    def prepare(self, windows):
        return np.ascontiguousarray(windows, dtype=np.float32)

    def score(self, windows):
        import os

        if not np.isfinite(windows).all():
            raise ValueError("not finite")
        return np.stack([(windows**2).mean(axis=1), np.full(len(windows), os.getpid())], axis=1)


def test_batches_come_back_in_order_scored_in_the_children(rng):
    batches = [rng.normal(0, i + 1, (4, 100)).astype(np.float32) for i in range(9)]
    items = [(i, None if i == 4 else batch) for i, batch in enumerate(batches)]  # a batch without windows
    with ScoringPool(_Energy(), 2, (4, 100)) as pool:
        results = list(pool.scores(items))
    assert [tag for tag, _ in results] == list(range(9))
    assert results[4][1] is None
    for (i, scores), batch in zip(results, batches, strict=True):
        if i != 4:
            np.testing.assert_allclose(scores[:, 0], (batch**2).mean(axis=1), rtol=1e-6)
    import os

    assert {int(scores[0, 1]) for _, scores in results if scores is not None} - {os.getpid()}  # not here


def test_a_failing_batch_is_one_error_and_the_children_end(rng):
    batches = [(0, rng.normal(size=(4, 10)).astype(np.float32)), (1, np.full((4, 10), np.nan, np.float32))]
    pool = ScoringPool(_Energy(), 2, (4, 10))
    children = [child for child, _ in pool._children]
    with pytest.raises(EchoError, match="a scoring process failed: ValueError: not finite"):
        list(pool.scores(batches))
    pool.close()
    assert not any(child.is_alive() for child in children)
