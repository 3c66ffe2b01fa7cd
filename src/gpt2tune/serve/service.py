"""The models a server offers and the one thread that decodes for all of them.

The base model and its adapters share one engine (one copy of the base weights; a batch mixes
rows of different adapters); each full fine-tuned variant has an engine of its own. A single
worker thread steps every engine that has work, so the event loop that answers HTTP never
waits on a forward pass. Requests and cancellations reach the worker through a thread-safe
inbox; tokens come back to each request's asyncio queue.

Adapters of the base can be added and removed while the server runs (``add_adapter``,
``remove_adapter``): the worker changes the model between two decoding steps, so a new adapter
joins the running batch at once, and a removed one keeps its weights until its last running row
has ended.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.multilora import AdapterBank, add_adapter, remove_adapter
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.errors import UserError
from gpt2tune.inference.engine import Engine, GenerationRequest, Token
from gpt2tune.serve.tasks import ServedClassifier, ServedQA, ServedTask

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One name clients can ask for."""

    name: str
    kind: str
    """``base``, ``adapter`` or ``variant``."""
    engine: Engine
    adapter: str | None
    """The adapter's name inside the engine; None for a base or a variant."""
    tokenizer: Tokenizer


class Busy(Exception):
    """The queue is full: try again later (HTTP 429, with ``Retry-After``)."""

    retry_after_s = 1
    """A hint for the client: seconds to wait before retrying."""


class TooLarge(Exception):
    """A request larger than the server ever takes at once (HTTP 400): retrying cannot help.

    ``param`` names the request's field to make smaller."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Failure:
    """The engine failed while this request ran; ``message`` says how."""

    message: str


class End:
    """The type of ``END``."""


END = End()
"""Put on a stream's queue after the request's last token."""


@dataclass
class Stream:
    """The tokens of one engine request, delivered to the asyncio side."""

    model: ServedModel
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Token | Failure | End] = field(default_factory=asyncio.Queue)
    rid: int | None = None
    """The engine's id for the request, once the worker has submitted it."""

    def push(self, item: Token | Failure | End) -> None:
        """Called by the worker thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


@dataclass
class WorkerCall:
    """A function to run on the worker thread between two decoding steps; its result (or its
    exception) comes back to an asyncio future."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as e:
            self.loop.call_soon_threadsafe(self._settle, None, e)
        else:
            self.loop.call_soon_threadsafe(self._settle, result, None)

    def _settle(self, result: Any, error: Exception | None) -> None:
        if self.future.done():  # the awaiting handler was cancelled
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class Service:
    """Owns the engines and the worker thread."""

    def __init__(
        self,
        models: list[ServedModel],
        *,
        max_queue: int = 64,
        classifiers: Sequence[ServedClassifier] = (),
        qa: Sequence[ServedQA] = (),
        max_request_tokens: int | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.classifiers = {c.name: c for c in classifiers}
        self.qa = {q.name: q for q in qa}
        self.engines: list[Engine] = []
        for m in models:
            if all(m.engine is not e for e in self.engines):
                self.engines.append(m.engine)
        self.max_queue = max_queue
        self.max_request_tokens = max_request_tokens
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[tuple[int, int], Stream] = {}
        self._lock = threading.Lock()
        # accepted and unfinished requests per engine: at most its batch plus the queue
        self._in_flight = {id(e): 0 for e in self.engines}
        # requests accepted and unfinished per task model (classifier, QA): one runs, the rest wait
        self._serial = dict.fromkeys([*self.classifiers, *self.qa], 0)
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._adding: set[str] = set()  # names whose adapters are being installed
        # adapters to remove from their engine once no request uses them (worker thread only)
        self._draining: dict[str, Engine] = {}

    # ------------------------------------------------------------------ admission

    def budget(self, window: int) -> int:
        """The most token slots one request may use: ``max_request_tokens``, by default four
        full batches of the model's context ``window`` (4 x max_batch x window)."""
        if self.max_request_tokens is not None:
            return self.max_request_tokens
        return 4 * max((e.max_batch for e in self.engines), default=1) * window

    def capacity(self, model: ServedModel) -> int:
        """The most engine requests (prompts) of ``model`` the server holds at once: its batch
        plus the queue. A list of more prompts can never be admitted."""
        return model.engine.max_batch + self.max_queue

    def admit_serial(self, task: ServedTask) -> None:
        """Count a request of a task model (a classifier, a QA model) in: one runs at a time,
        ``max_queue`` may wait; pair with ``release_serial``.

        Raises:
            Busy: ``max_queue`` requests are waiting for this model already.
        """
        with self._lock:
            if self._serial[task.name] >= 1 + self.max_queue:
                raise Busy(
                    f"the server is busy ({self._serial[task.name]} requests in flight for "
                    f"{task.name}, queue of {self.max_queue}); retry shortly"
                )
            self._serial[task.name] += 1

    def release_serial(self, task: ServedTask) -> None:
        """A request ``admit_serial`` counted in has ended."""
        with self._lock:
            self._serial[task.name] -= 1

    # ------------------------------------------------------------------ called from the event loop

    def submit(self, requests: list[tuple[ServedModel, GenerationRequest]]) -> list[Stream]:
        """Queue requests (all or none); return a stream of tokens for each.

        Raises:
            UserError: a request cannot run (checked here, before anything is queued).
            TooLarge: more requests of one engine than its batch and the queue hold together.
            Busy: more than ``max_queue`` requests would wait for the batch.
        """
        for model, request in requests:
            model.engine.check(request)
        # a list of prompts is several requests of one engine: they count together
        wanted = Counter(id(model.engine) for model, _ in requests)
        for model, _ in requests:
            if wanted[id(model.engine)] > self.capacity(model):
                raise TooLarge(
                    f"{wanted[id(model.engine)]} prompts are more than this server takes at "
                    f"once ({self.capacity(model)}); send at most {self.capacity(model)}",
                    "prompt",
                )
        with self._lock:
            for model, _ in requests:
                engine = model.engine
                limit = self.capacity(model)
                if self._in_flight[id(engine)] + wanted[id(engine)] > limit:
                    raise Busy(
                        f"the server is busy ({self._in_flight[id(engine)]} requests in "
                        f"flight for {model.name}, queue of {self.max_queue}); retry "
                        "shortly"
                    )
            for model, _ in requests:
                self._in_flight[id(model.engine)] += 1
        loop = asyncio.get_running_loop()
        streams = [Stream(model, request, loop) for model, request in requests]
        for s in streams:
            self._inbox.put(("submit", s, None))
        return streams

    def cancel(self, stream: Stream, row: int | None = None) -> None:
        """Stop one row of a stream's request, or all of it (the client went away)."""
        self._inbox.put(("cancel", stream, row))

    # ------------------------------------------------------------------ adapters at run time

    def base(self) -> ServedModel:
        """The base model, whose engine the adapters share."""
        return next(m for m in self.models.values() if m.kind == "base")

    def name_taken(self, name: str) -> bool:
        """Whether a model, classifier or QA model is served as ``name``, or one is being added
        so."""
        return name in self._serial or name in self.models or name in self._adding

    async def add_adapter(
        self, name: str, adapter: tuple[LoRAConfig, dict[str, torch.Tensor]]
    ) -> ServedModel:
        """Install an adapter of the base (``formats.peft.read_adapter``'s result) and serve it as
        ``name``; requests may use it as soon as this returns.

        Raises:
            UserError: ``name`` is taken, or the adapter cannot be mixed per row (DoRA).
        """
        if self.name_taken(name):
            raise UserError(f"a model named {name!r} is served already; choose another name")
        base = self.base()
        self._adding.add(name)
        try:
            key = await self._on_worker(lambda: self._install(base.engine, name, adapter))
        finally:
            self._adding.discard(name)
        model = ServedModel(name, "adapter", base.engine, key, base.tokenizer)
        self.models[name] = model
        return model

    async def remove_adapter(self, name: str) -> None:
        """Stop serving the adapter ``name``: it is gone for new requests at once; its running
        rows finish, then the worker removes its weights.

        Raises:
            KeyError: no adapter is served as ``name``.
        """
        model = self.models.get(name)
        if model is None or model.kind != "adapter" or model.adapter is None:
            raise KeyError(name)
        del self.models[name]
        key, engine = model.adapter, model.engine
        # the requests submitted before are ahead of this in the inbox: the worker sees their rows
        await self._on_worker(lambda: self._draining.update({key: engine}))

    async def _on_worker(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the worker thread between two decoding steps."""
        loop = asyncio.get_running_loop()
        call = WorkerCall(fn, loop, loop.create_future())
        self._inbox.put(call)
        return await call.future

    def _install(
        self, engine: Engine, name: str, adapter: tuple[LoRAConfig, dict[str, torch.Tensor]]
    ) -> str:
        """(worker) Put the adapter into ``engine``'s model; return its name there: ``name``, or
        ``name#2``... while an adapter unloaded under ``name`` still finishes its rows."""
        bank = engine.bank if engine.bank is not None else AdapterBank()
        key, i = name, 1
        while key in bank.names:
            i += 1
            key = f"{name}#{i}"
        add_adapter(engine.model, bank, key, *adapter)
        engine.bank = bank  # a model served without adapters had none
        return key

    def _remove_unused_adapters(self) -> None:
        """(worker) Remove the unloaded adapters that no request (waiting or running) uses."""
        for key, engine in list(self._draining.items()):
            if any(run.request.adapter == key for run in engine.running.values()):
                continue
            if engine.bank is not None and key in engine.bank.names:
                remove_adapter(engine.model, engine.bank, key)
            del self._draining[key]

    @property
    def in_flight(self) -> int:
        """Requests accepted and not finished, over all engines and task models."""
        return sum(self._in_flight.values()) + sum(self._serial.values())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpt2tune-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running, then stop the worker; after ``timeout`` seconds, end what is
        still running (its clients are gone by then: the server stops only after its
        connections) and stop anyway, so shutdown stays bounded."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abort.set()
                self._thread.join(5)

    def _end_all(self) -> None:
        """(worker) End every request still running: the server is stopping."""
        for eid, rid in list(self._streams):
            stream = self._streams.pop((eid, rid))
            stream.model.engine.cancel(rid)
            self._end(stream, Failure("the server is shutting down"))

    # ------------------------------------------------------------------ the worker thread

    def _run(self) -> None:
        while True:
            if self._abort.is_set():
                self._end_all()
                return
            busy = [e for e in self.engines if not e.idle]
            try:
                # wait for work only when there is nothing to decode
                item = self._inbox.get(timeout=0.05) if not busy else self._inbox.get_nowait()
            except queue.Empty:
                item = None
            if isinstance(item, WorkerCall):
                item.run()
            elif item is not None:
                self._take(*item)
            if self._draining:
                self._remove_unused_adapters()
            if item is not None:
                continue  # drain the inbox before the next step
            if not busy:
                if self._stopping.is_set():
                    return
                continue
            for engine in busy:
                self._step(engine)

    def _take(self, kind: str, stream: Stream, row: int | None) -> None:
        engine = stream.model.engine
        if kind == "submit":
            try:
                stream.rid = engine.submit(stream.request)
            except Exception as e:  # checked before queueing; a failure here is a bug, not input
                log.exception("submitting a request failed")
                self._end(stream, Failure(f"could not start the request: {e}"))
                return
            self._streams[(id(engine), stream.rid)] = stream
        elif kind == "cancel" and stream.rid is not None:
            key = (id(engine), stream.rid)
            if key not in self._streams:
                return  # it has ended already
            engine.cancel(stream.rid, row)
            if row is None:
                self._end(self._streams.pop(key), END)

    def _step(self, engine: Engine) -> None:
        try:
            tokens = engine.step()
        except Exception as e:  # e.g. out of memory: fail this engine's requests, keep serving
            log.exception("a decoding step failed")
            for eid, rid in list(self._streams):
                if eid == id(engine):
                    engine.cancel(rid)
                    self._end(self._streams.pop((eid, rid)), Failure(f"generation failed: {e}"))
            return
        for t in tokens:
            stream = self._streams.get((id(engine), t.request))
            if stream is not None:  # else: cancelled meanwhile
                stream.push(t)
        # a request ends with its last row: by a last token, or by cancelling its last rows
        for eid, rid in list(self._streams):
            if eid == id(engine) and engine.finished(rid):
                self._end(self._streams.pop((eid, rid)), END)

    def _end(self, stream: Stream, last: Failure | End) -> None:
        # its rows are done: free its place before the client can learn it ended, so a client
        # that sends its next request at once never finds its own finished one still counted
        with self._lock:
            self._in_flight[id(stream.model.engine)] -= 1
        stream.push(last)
