"""Online API: per-request async streaming over one shared engine loop.

One background task owns the engine. Requests and aborts are queued as commands and applied
between steps by that task, so the engine is never touched from two places at once; each step
runs in a worker thread (the event loop stays responsive) and its outputs are routed to the
per-request queues that `generate` reads.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from os import PathLike
from typing import AsyncIterator

from engine.config import EngineConfig
from engine.llm_engine import EngineStats, LLMEngine
from engine.sampling_params import SamplingParams
from engine.sequence import RequestOutput


class AsyncLLM:
    def __init__(self, model: str | PathLike | None = None, *, engine: LLMEngine | None = None, **config):
        """An engine for `model` built from EngineConfig fields, or a ready `engine`."""
        assert (model is None) != (engine is None), "give a model or an engine"
        self.engine = engine or LLMEngine(EngineConfig(model=str(model), **config))
        self._queues: dict[str, asyncio.Queue] = {}
        self._commands: list[tuple] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._ids = itertools.count()
        self._closing = False

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    @property
    def num_waiting(self) -> int:
        """Requests not admitted by the scheduler yet (queued here or in its waiting queue)."""
        return len(self.engine.scheduler.waiting) + sum(cmd[0] == "add" for cmd in self._commands)

    @property
    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    @property
    def num_aborted(self) -> int:
        return self.engine.stats.requests_aborted

    def check_fits(self, prompt_len: int, params: SamplingParams) -> str | None:
        """Why such a request can never run here (too long, more KV than the cache holds), or None."""
        return self.engine.check_fits(prompt_len, params)

    def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None,
        stream: bool = True,
    ) -> AsyncIterator[RequestOutput]:
        """Submit the request now and return an iterator of its cumulative output after every
        step it makes progress in (with stream=False: only when a sample finishes); the last one
        has finished=True (finish_reason "abort" on the samples if aborted). Submitting at the call,
        not at the first read, keeps `num_waiting` exact for a server's queue bound: its check and
        the submission happen with no await between them. Call from the event loop."""
        request_id = f"async-{next(self._ids)}" if request_id is None else request_id
        if request_id in self._queues:
            raise ValueError(f"request id {request_id!r} is already running")
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        self._submit(("add", prompt, params, request_id, stream))
        outputs = self._outputs(request_id, queue)
        # an iterator dropped before its first read never runs its `finally`: abort when collected
        weakref.finalize(outputs, self._abandon, request_id)
        return outputs

    async def _outputs(self, request_id: str, queue: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                out = await queue.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
        finally:
            self._queues.pop(request_id, None)
            if not finished:  # the consumer walked away: stop computing for it
                self._submit(("abort", request_id))

    def _abandon(self, request_id: str) -> None:
        if self._queues.pop(request_id, None) is not None:  # never read to the end, nor closed
            self._commands.append(("abort", request_id))
            if self._wakeup is not None:
                self._wakeup.set()

    def abort(self, request_id: str) -> None:
        self._submit(("abort", request_id))

    # RL: run on the engine loop between steps, so no step is in flight (each needs no request running)
    async def load_weights(self, weights) -> int:
        return await self._call(self.engine.load_weights, list(weights))

    async def reset_prefix_cache(self) -> bool:
        return await self._call(self.engine.reset_prefix_cache)

    async def sleep(self, level: int = 1) -> None:
        await self._call(self.engine.sleep, level)

    async def wake_up(self) -> None:
        await self._call(self.engine.wake_up)

    async def _call(self, fn, *args):
        future = asyncio.get_running_loop().create_future()
        self._submit(("call", fn, args, future))
        return await future

    def _submit(self, command: tuple) -> None:
        self._commands.append(command)
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wakeup.set()

    async def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                commands, self._commands = self._commands, []
                for cmd in commands:
                    if cmd[0] == "add":
                        engine.add_request(cmd[1], cmd[2], cmd[3], stream=cmd[4])
                    elif cmd[0] == "call":
                        _, fn, args, future = cmd
                        try:
                            future.set_result(await asyncio.to_thread(fn, *args))
                        except Exception as exc:  # noqa: BLE001 - the caller's error, not the loop's
                            future.set_exception(exc)
                    else:
                        engine.abort_request(cmd[1])
                if not engine.has_unfinished_requests():
                    if self._closing:
                        return
                    self._wakeup.clear()
                    if not self._commands:
                        await self._wakeup.wait()
                    continue
                for out in await asyncio.to_thread(engine.step):
                    queue = self._queues.get(out.request_id)
                    if queue is not None:
                        queue.put_nowait(out)
        except Exception as exc:  # surface engine failures to every waiting consumer
            for queue in self._queues.values():
                queue.put_nowait(exc)
            raise

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Abort every request still running (their consumers see finish_reason "abort"), let
        the loop hand those results out and stop; cancel it if that takes over `timeout` s."""
        self._closing = True
        if self._task is None or self._task.done():
            return
        self._commands += [("abort", rid) for rid in list(self._queues)]
        self._commands += [("abort", g.request_id) for g in [*self.engine.scheduler.waiting, *self.engine.scheduler.running]]
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except (asyncio.TimeoutError, Exception):
            self._task.cancel()
        self._task = None
