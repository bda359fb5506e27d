"""What a running ingest-gp holds besides its ``ServiceContext``: the validation pool and the
import jobs it runs. One per app (tests run several apps in one process)."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_common import gctuning
from fhir_common.service import ServiceContext
from ingest_gp.bulk import Importer
from ingest_gp.csvingest import Mappings
from ingest_gp.pool import Pool
from ingest_gp.settings import IngestGpSettings


@dataclass
class Runtime:
    settings: IngestGpSettings
    pool: Pool
    importer: Importer
    mappings: Mappings


_RUNTIMES: dict[int, Runtime] = {}


async def start(ctx: ServiceContext) -> Runtime:
    settings = ctx.settings
    assert isinstance(settings, IngestGpSettings)
    pool = Pool(settings.ingest_gp_workers)
    runtime = Runtime(
        settings, pool, Importer(ctx, pool, settings), Mappings(settings.mapping_dir())
    )
    _RUNTIMES[id(ctx)] = runtime
    if not settings.embedded:
        pool.start()  # warm workers before the first push; embedded mode starts them on need
    await runtime.importer.start()
    if not settings.embedded:
        # This process is ingest-gp alone (embedded mode's process is everyone's: left alone).
        gctuning.tune()
    return runtime


async def stop(ctx: ServiceContext) -> None:
    runtime = _RUNTIMES.pop(id(ctx), None)
    if runtime is not None:
        await runtime.importer.stop()
        runtime.pool.close()


def of(ctx: ServiceContext) -> Runtime:
    runtime = _RUNTIMES.get(id(ctx))
    if runtime is None:
        raise RuntimeError("ingest-gp is not running")
    return runtime
