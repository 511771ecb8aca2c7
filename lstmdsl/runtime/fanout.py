"""A step's independent GEMMs on streams of their own (plan.Loop.fanout, passes/fanout.py).

Each group forks from the phase's stream (events, so the host never waits), runs its i-th GEMM on the
i-th stream of a device.Wave (the first on the phase's stream itself) with a cuBLAS lane of its own (a
handle and workspace: two GEMMs at once must not share one), and joins back before the next op. Inside
a CUDA graph's capture the GEMMs become parallel branches of the graph. An engine's fan streams and
events are its own and reused by every group: as with the wavefront's, one host thread issues on an engine
at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import cublas, device


@dataclass(frozen=True)
class Fan:
    """The streams (wave) and cuBLAS lanes (lanes[i] for the i-th GEMM of a group) of a phase's groups."""

    wave: object  # device.Wave
    lanes: tuple[int, ...]


def fan(engine, ws, phase: str, stream: int, lane: int) -> Fan | None:
    """The fan of a phase issued on `stream` (whose GEMMs take `lane`), or None where its GEMMs run one
    after another: no groups, the engine's use_fanout off, while profiling (a profile adds each op's time:
    overlapped GEMMs would count as serial), or where the persistent kernel runs the loop. Inside someone
    else's capture only once the phase was tuned with the fan (Engine._tune times its GEMMs on the lanes
    then, which no capture may do; a lane's cuBLAS handle could be made there: device.relaxed_capture)."""
    groups = getattr(engine.program.plan, phase).loop.fanout
    if not groups or not engine.use_fanout or engine.parts is not None \
            or engine.persistent_run(ws, phase) is not None:
        return None
    if device.is_capturing(stream) and (phase, True, False) not in ws.tuned:
        return None
    width = max(len(g) for p in (engine.program.plan.forward, engine.program.plan.backward) for g in p.loop.fanout)
    if engine.fan_wave is None:  # its streams and events made before any capture
        engine.fan_wave = device.Wave(width)
    # (parts past a wavefront's layers': a stack's lanes are cublas.lane(stream, k) for k < MAX_LANES)
    return Fan(engine.fan_wave, (lane,) + tuple(cublas.lane(stream, cublas.MAX_LANES + i) for i in range(1, width)))
