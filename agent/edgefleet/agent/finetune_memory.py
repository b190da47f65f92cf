"""The CPU allocator's peak during a call: what a training step really holds, measured.

Why the profiler: torch keeps no statistics for its CPU allocator (``torch.cuda`` has
``max_memory_allocated``; the CPU has nothing), and process RSS cannot resolve kilobytes under a
torch runtime of hundreds of megabytes. With ``profile_memory=True`` the profiler records every
allocation and free of the c10 CPU allocator -- the model's tensors, autograd's saved tensors,
gradients and the kernels' temporaries (im2col, layout reorders) alike -- and by default only
on the calling thread, so the agent's serving threads do not pollute a fine-tuning figure.
The peak is the running sum's maximum, counted from zero at the start of the call (memory
allocated earlier and still alive is not included; memory freed inside the call that was
allocated before it counts negative). That last part made the figure jitter: Python's cyclic
garbage collector, running at an arbitrary point inside the call, freed tensors of *earlier*
calls (autograd graphs hold cycles) and lowered the peak by up to 0.5 MB in one run of 30. So
the collector runs once before the call and is paused during it: only the call's own frees count.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

__all__ = ["allocator_peak"]

T = TypeVar("T")


def allocator_peak(call: Callable[[], T]) -> tuple[T, int]:
    """``call()``'s result and the peak net bytes it allocated on this thread's CPU allocator."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = call()
    finally:
        if was_enabled:
            gc.enable()
    events = prof.profiler.kineto_results.events() if prof.profiler is not None else []
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
    return result, peak
