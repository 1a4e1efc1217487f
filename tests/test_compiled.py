"""The CPU kernels' torch.compile policy across configurations (schnet_model/nn/compiled.py)."""

from __future__ import annotations

import warnings


def _sum(x, xs):
    out = x
    for y in xs:  # one traced graph per list length, as one per interaction count in the model's kernels
        out = out + 2 * y
    return out


def test_a_process_that_sets_up_configuration_after_configuration_never_fails_on_dynamos_recompile_limit():
    """A reused fold actor traced the same fullgraph kernel once per configuration until dynamo's recompile limit
    raised FailOnRecompileLimitHit (not a RuntimeError) and failed the trial. Now the limit falls back to the eager
    kernel with a warning, and forget_compiled() — what a fold actor and a trial process call when they set up a new
    configuration — lets every configuration compile afresh."""
    import torch._dynamo

    from schnet_model.nn.compiled import Kernel, forget_compiled

    with torch._dynamo.config.patch(recompile_limit=2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = Kernel(_sum)
        for n in (1, 2, 3, 4):  # a 3rd and 4th shape: past the limit
            out = kept(True, torch.ones(3), [torch.ones(3)] * n)
            assert torch.equal(out, torch.full((3,), 1.0 + 2 * n))  # same numbers, compiled or not
        assert kept.failed and any("failed" in str(w.message) and "Recompile" in str(w.message) for w in caught)
        fresh = Kernel(lambda x, xs: _sum(x, xs))
        for n in (1, 2, 3, 4):
            forget_compiled()
            out = fresh(True, torch.ones(3), [torch.ones(3)] * n)
            assert torch.equal(out, torch.full((3,), 1.0 + 2 * n)) and fresh.compiled is not None and not fresh.failed
