"""Benchmarks of JoinedUp: ``python -m joinedup.bench`` (``make bench``).

Adding one: in a module of this package, write an ``async def`` that takes a ``Context`` and
returns a ``Result`` (or several), decorate it with ``@benchmark("area.thing.measure")``, and
import the module in ``joinedup.bench.cli``. Size it with ``ctx.size(full, quick)`` (``--quick``
is the CI smoke test), report every size in ``params``, show a ``ctx.track(...)`` progress bar if
it runs for more than a moment, and ``raise Skip("why")`` when what it needs is not there.
"""

from joinedup.bench.registry import REGISTRY, Benchmark, Context, Result, Skip, benchmark

__all__ = ["REGISTRY", "Benchmark", "Context", "Result", "Skip", "benchmark"]
