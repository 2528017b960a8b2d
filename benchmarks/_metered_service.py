"""The functions service exactly as production starts it, plus a switch for its usage meter: the
metering-overhead benchmark (usage_metering_overhead.py) measures metered and unmetered calls in ONE
process, so that the difference between two processes (3-4 % of CPU per call between two unmetered
ones) is not read as metering overhead.

Run as `python benchmarks/_metered_service.py [service options]` with the service's usual environment
(STRATOLAB_FUNCTIONS_METERING left on) and STRATOLAB_BENCH_METER_CONTROL naming a Unix socket path.
`FunctionsService.launch_instance` runs as `python -m stratolab.functions.service.app` runs it; the
subclass only keeps a handle on the meter the service built and serves the control socket on the
service's own event loop, one command a line, one answer a line:

    on     the meter's real ledger, call journal and budget client are put back: every call journalled
    off    the meter's ledger, journal and budget client are set to None, so that it is field for field
           `FunctionMeter.off()` (what STRATOLAB_FUNCTIONS_METERING=0 builds): `call` returns at its
           first test and the housekeeping tick skips `reconcile`; the journal itself (and its fold
           thread) is kept, so nothing journalled is lost
    count  how many invocations the service has answered so far, those answered 429 or 503 left out
           (the meter bills the others), from its own Prometheus counter, which `ServiceState.invoke`
           counts in the same step as it meters: on and off answer it too ("on 1234"), at the very
           moment of the switch, so the calls of each mode are known exactly
    fold   the real journal folded now, off the loop (in the default executor, as the journal's own
           thread folds): answers how many calls it folded
    tids   "tids" and the kernel thread ids of the journal's fold threads: the benchmark counts their CPU
           on its own (a fold lands every 5 s in whichever slice runs then)

STRATOLAB_BENCH_FOLD_EVERY_S, where set, is the journal's fold interval (the benchmark sets twice the
service's own: with the meter on half the time, each fold then takes as many calls as a production fold
takes at the same rate, so a fold's fixed cost is spread over as many calls as it is in production).
Commands are handled on the event loop thread, between the service's own callbacks, so a switch never
lands in the middle of a call's bookkeeping. Nothing here changes the product's code paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from stratolab.functions.service import metrics
from stratolab.functions.service.app import FunctionsService
from stratolab.functions.service.usage_meter import NOT_RUN, FunctionMeter

CONTROL_ENV = "STRATOLAB_BENCH_METER_CONTROL"
#: the journal's fold interval in seconds, where the benchmark sets one (see usage_meter)
FOLD_EVERY_ENV = "STRATOLAB_BENCH_FOLD_EVERY_S"

log = logging.getLogger("stratolab.functions")


def answered() -> int:
    """Invocations answered so far and billed when metered (not 429 or 503: usage_meter.NOT_RUN)."""
    return int(
        sum(
            sample.value
            for family in metrics.INVOCATIONS.collect()
            for sample in family.samples
            if sample.name.endswith("_total") and int(sample.labels["status"]) not in NOT_RUN
        )
    )


class MeterSwitch:
    """Turns one FunctionMeter off (its parts set aside) and on again (its parts put back)."""

    def __init__(self, meter: FunctionMeter):
        self.meter = meter
        self.parts = (meter.ledger, meter.journal, meter.usage)

    def set(self, on: bool) -> None:
        self.meter.ledger, self.meter.journal, self.meter.usage = self.parts if on else (None, None, None)

    def fold(self) -> int:
        journal = self.parts[1]
        return journal.fold() if journal is not None else 0


class SwitchedFunctionsService(FunctionsService):
    """The functions service with its meter's switch on a control socket (see the module docstring)."""

    switch: MeterSwitch | None = None

    def usage_meter(self) -> FunctionMeter:
        meter = super().usage_meter()
        self.switch = MeterSwitch(meter)
        if meter.journal is not None and os.environ.get(FOLD_EVERY_ENV):
            # the benchmark meters half the calls: a fold at twice the service's interval takes as
            # many calls as the service's own fold takes with every call metered
            meter.journal.flush_every_s = float(os.environ[FOLD_EVERY_ENV])
        return meter

    async def serve(self) -> None:
        path = os.environ[CONTROL_ENV]
        server = await asyncio.start_unix_server(self.control, path=path)
        try:
            await super().serve()
        finally:
            server.close()
            os.unlink(path)

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while line := await reader.readline():
                command = line.decode().strip()
                switch = self.switch
                if switch is None:
                    answer = "error: the service has not built its meter yet"
                elif command in ("on", "off"):
                    switch.set(command == "on")
                    answer = f"{command} {answered()}"
                elif command == "count":
                    answer = f"count {answered()}"
                elif command == "fold":
                    answer = str(await loop.run_in_executor(None, switch.fold))
                elif command == "tids":
                    folds = [t.native_id for t in threading.enumerate() if t.name.startswith("fold ")]
                    answer = " ".join(["tids", *map(str, folds)])
                else:
                    answer = f"error: unknown command {command!r} (on, off, count, fold, tids)"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        except Exception:
            log.exception("meter control connection failed")
        finally:
            writer.close()


def main(**kwargs: Any) -> None:
    SwitchedFunctionsService.launch_instance(**kwargs)


if __name__ == "__main__":
    main()
