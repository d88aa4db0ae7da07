"""The per-process registry of generations (see `ollama_web.chat.generation`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ollama_web.chat.errors import TooManyGenerationsError
from ollama_web.chat.generation import INTERRUPTED, ChatOpener, Generation, GenerationSpec
from ollama_web.chat.host_slots import SlotsInUse
from ollama_web.conversations.schemas import MessagePublic
from ollama_web.conversations.writes import Writes
from ollama_web.core.config import Settings

if TYPE_CHECKING:
    from ollama_web.chat.host_slots import HostSlots
    from ollama_web.chat.relay_base import RelayBase
    from ollama_web.chat.slots import SharedSlots

logger = logging.getLogger("ollama_web.chat")

RETAIN_SECONDS = 120.0
"""How long a finished generation stays replayable from memory (later: from the database)."""
MAX_RETAINED = 1000
MAX_RETAINED_BYTES = 64 * 1024 * 1024
"""The events finished generations keep for replay, at most (the oldest go first): a few
huge answers must not hold gigabytes for RETAIN_SECONDS."""
RESERVATION_TTL_SECONDS = 30.0
"""A slot reserved by a request whose job never started (its transaction failed) lapses."""
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(eq=False)
class Reservation:
    """A user's generation slot, taken before anything is stored."""

    user_id: str
    created_at: float = field(default_factory=time.monotonic)
    active: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    shared: bool = False
    """Also held in Redis (see `slots`), to give back when released."""
    host_slot: int | None = None
    """Its slot among this host's processes, without Redis (see `host_slots`)."""
    taking: bool = False
    """Its slot is being taken in Redis: a heartbeat must not add it first, or the take
    would find it there and not count it against the limit."""
    released: bool = False

    def held(self, now: float) -> bool:
        return self.active or now - self.created_at < RESERVATION_TTL_SECONDS


class GenerationRegistry:
    def __init__(
        self,
        settings: Settings,
        writes: Writes,
        gateway: ChatOpener,
        on_complete: Callable[[Generation], None] | None = None,
    ) -> None:
        self.settings = settings
        self.writes = writes
        self._gateway = gateway
        self._on_complete = on_complete
        self._running: dict[str, Generation] = {}
        self._retained: OrderedDict[str, tuple[float, Generation, int]] = OrderedDict()
        """Finished generations: when each finished, and the bytes of its events."""
        self._retained_bytes = 0
        self._reservations: dict[str, list[Reservation]] = {}
        self._awaiting_output: set[str] = set()
        self._quiet = asyncio.Event()
        self._quiet.set()
        self.relay: RelayBase | None = None
        """Stop and re-attach for answers of other processes: this host's, and with REDIS_URL
        every host's (None where neither can be used)."""
        self.slots: SharedSlots | None = None
        """Set with REDIS_URL: the per-user limit counted across processes."""
        self.host_slots: HostSlots | None = None
        """The per-user limit counted across this host's processes (with REDIS_URL too: it
        holds while Redis is unreachable)."""
        self._interrupt_timer: asyncio.TimerHandle | None = None
        self._interrupting = False

    # ------------------------------------------------------------- slots

    async def reserve(self, user_id: str) -> Reservation:
        """Take one of the user's MAX_CONCURRENT_GENERATIONS_PER_USER slots, or 429: in this
        process, across those of this host through lock files (see `host_slots`), and with
        REDIS_URL across all of them through Redis (see `slots`)."""
        now = time.monotonic()
        self._drop_lapsed(user_id, now)
        held = self._reservations.setdefault(user_id, [])
        limit = self.settings.max_concurrent_generations_per_user
        if len(held) >= limit:
            raise TooManyGenerationsError(limit)
        reservation = Reservation(user_id, now)
        held.append(reservation)
        if self.host_slots is not None:
            try:
                reservation.host_slot = self.host_slots.take(user_id, limit)
            except SlotsInUse:
                self.release(reservation)
                raise TooManyGenerationsError(limit) from None
        if self.slots is not None:
            reservation.taking = True
            try:
                taken = await self.slots.take(user_id, reservation.id, limit)
            except BaseException:  # cancelled: a slot taken in Redis lapses unrefreshed
                self.release(reservation)
                raise
            finally:
                reservation.taking = False
            if taken is False:
                self.release(reservation)
                raise TooManyGenerationsError(limit)
            reservation.shared = bool(taken)  # None: Redis failed; the next heartbeat adds it
        return reservation

    def release(self, reservation: Reservation) -> None:
        reservation.released = True
        if reservation.host_slot is not None and self.host_slots is not None:
            self.host_slots.give_back(reservation.user_id, reservation.host_slot)
            reservation.host_slot = None
        if reservation.shared and self.slots is not None:
            reservation.shared = False
            self.slots.give_back(reservation.user_id, reservation.id)
        held = self._reservations.get(reservation.user_id)
        if held is None:
            return
        if reservation in held:
            held.remove(reservation)
        if not held:
            del self._reservations[reservation.user_id]

    def _drop_lapsed(self, user_id: str, now: float) -> None:
        """Release the user's reservations whose job never started (see
        RESERVATION_TTL_SECONDS): their slots, here and shared, are free again."""
        for reservation in [r for r in self._reservations.get(user_id, ()) if not r.held(now)]:
            self.release(reservation)

    # -------------------------------------------------------------- jobs

    def start(self, reservation: Reservation, spec: GenerationSpec) -> Generation:
        generation = Generation(
            spec, self._gateway, self.writes, self.settings.generation_checkpoint_seconds
        )
        reservation.active = True
        self._running[generation.id] = generation
        if not self.settings.chat_continue_on_disconnect:
            grace = self.settings.chat_disconnect_grace_seconds
            generation.log.on_abandoned = lambda: generation.abandon(grace)
        self._awaiting_output.add(generation.id)
        self._quiet.clear()
        generation.start(lambda finished: self._finished(finished, reservation), self._output)
        if self._interrupting:  # its request came in before the stop, and ran past its grace
            generation.stop(INTERRUPTED)
        return generation

    def _output(self, generation: Generation) -> None:
        self._awaiting_output.discard(generation.id)
        if not self._awaiting_output:
            self._quiet.set()

    async def wait_for_first_outputs(self, limit: float) -> None:
        """Until no answer of this process waits for its first token, or `limit` seconds:
        background model calls (titles) yield to answers people are waiting for."""
        if not self._quiet.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), limit)

    def _finished(self, generation: Generation, reservation: Reservation) -> None:
        self._output(generation)
        self.release(reservation)
        self._running.pop(generation.id, None)
        if generation.withdrawn:  # its row is gone; no client knows its id
            return
        now = time.monotonic()
        size = sum(map(len, generation.log.frames))
        self._retained[generation.id] = (now, generation, size)
        self._retained_bytes += size
        self._prune(now)
        if self._on_complete is not None and generation.result is not None:
            self._on_complete(generation)
        # Kept for replay, it needs its events, not the first message (up to
        # MAX_MESSAGE_CHARS) its title is written from: MAX_RETAINED_BYTES does not count it.
        generation.spec = dataclasses.replace(generation.spec, title_source=None)

    def _prune(self, now: float) -> None:
        retained = self._retained
        while retained:
            finished_at, _, size = next(iter(retained.values()))
            if (
                len(retained) <= MAX_RETAINED
                and self._retained_bytes <= MAX_RETAINED_BYTES
                and now - finished_at < RETAIN_SECONDS
            ):
                break
            retained.popitem(last=False)
            self._retained_bytes -= size

    def get(self, message_id: str) -> Generation | None:
        """A running generation, or a finished one still in memory."""
        running = self._running.get(message_id)
        if running is not None:
            return running
        self._prune(time.monotonic())
        entry = self._retained.get(message_id)
        return entry[1] if entry is not None else None

    async def stop(self, message_id: str) -> MessagePublic | dict[str, Any] | None:
        """Stop the answer wherever it is generated: here (its upstream is closed at once),
        else through the process generating it (see `relay`). The message as stored
        when it ended (as JSON when it came from another process); None when no process
        claims it."""
        generation = self.get(message_id)
        if generation is not None:
            generation.stop()
            await generation.wait()
            return generation.result
        if self.relay is not None:
            return await self.relay.stop(message_id)
        return None

    async def stop_each(self, message_ids: Collection[str]) -> None:
        """Stop these answers, all at once, wherever they are generated (their conversation
        or their user is being deleted). Never raises: the deletion goes on whatever
        happened to a stop (and the lease keeper stops an answer whose row is gone)."""
        ids = list(message_ids)
        outcomes = await asyncio.gather(*(self.stop(i) for i in ids), return_exceptions=True)
        for message_id, outcome in zip(ids, outcomes, strict=True):
            if isinstance(outcome, Exception):
                logger.warning("could not stop the answer %s", message_id, exc_info=outcome)
            elif isinstance(outcome, BaseException):
                raise outcome

    def stop_ownerless(self, message_ids: Collection[str]) -> None:
        """Stop these running answers of this process: their rows are gone or their user is
        disabled (see `leases`)."""
        for message_id in message_ids:
            generation = self._running.get(message_id)
            if generation is not None and generation.stop():
                logger.info(
                    "answer %s was deleted or its user disabled while it was generated: stopped",
                    message_id,
                )

    @property
    def running_ids(self) -> frozenset[str]:
        return frozenset(self._running)

    async def heartbeat(self, interval: float) -> None:
        """Keep the lease of every running answer (see `ollama_web.chat.leases`), and the
        shared slots this process holds; drop finished answers kept past RETAIN_SECONDS
        (else only the next chat or re-attach would: an idle server held them), and release
        reservations that lapsed (else only their user's next chat would)."""
        now = time.monotonic()
        self._prune(now)
        for user_id in list(self._reservations):
            self._drop_lapsed(user_id, now)
        running = list(self._running.values())
        if running:
            await asyncio.gather(*(generation.heartbeat(interval) for generation in running))
        if self.slots is not None:
            await self._refresh_slots(self.slots)

    async def _refresh_slots(self, slots: SharedSlots) -> None:
        """Write every slot this process holds to Redis: those it lost (it restarted empty)
        and those taken while it was unreachable are counted across processes again."""
        now = time.monotonic()
        held = [
            reservation
            for reservations in self._reservations.values()
            for reservation in reservations
            if reservation.held(now) and not reservation.taking
        ]
        if not held:
            return
        written = await slots.refresh((r.user_id, r.id) for r in held)
        for reservation in held:
            if reservation.released:
                # Released while the refresh ran: its slot, given back before the refresh
                # reached Redis, may be there again. Given back after it, it is gone.
                slots.give_back(reservation.user_id, reservation.id)
            elif written:
                reservation.shared = True

    def stop_signal(self, received: int) -> None:
        """The server was asked to stop (see `core.stop_signals`) and waits for open streams.
        Streams following answers of other processes end at once (their clients reconnect,
        to a process that stays). Answers generated here get SHUTDOWN_GRACE_SECONDS to end;
        then each still running is stored `interrupted` and its streams end with that
        event, so the server stops waiting then, not when it gives up on them. A second
        signal ends them at once."""
        if self.relay is not None:
            self.relay.end_follows("This server is stopping; reconnect to resume.")
        grace = self.settings.shutdown_grace_seconds if received == 1 else 0.0
        if self._interrupt_timer is not None:
            self._interrupt_timer.cancel()
        loop = asyncio.get_running_loop()
        self._interrupt_timer = loop.call_later(grace, self._interrupt_all)

    def _interrupt_all(self) -> None:
        self._interrupt_timer = None
        self._interrupting = True
        running = list(self._running.values())
        if running:
            logger.info("stopping: %d answer(s) still running stored as interrupted", len(running))
        for generation in running:
            generation.stop(INTERRUPTED)

    async def shutdown(self) -> None:
        """Stop every running job; each stores its partial answer as `interrupted`. A job
        still running after SHUTDOWN_GRACE_SECONDS (its final write stuck, say) is
        cancelled, so nothing outlives the engine; the sweep at the next start marks its
        answer `interrupted` with the last checkpoint."""
        if self._interrupt_timer is not None:
            self._interrupt_timer.cancel()
            self._interrupt_timer = None
        running = list(self._running.values())
        for generation in running:
            generation.stop(INTERRUPTED)
        if running:
            waits = [asyncio.ensure_future(g.wait()) for g in running]
            _, pending = await asyncio.wait(waits, timeout=SHUTDOWN_GRACE_SECONDS)
            for waiter in pending:
                waiter.cancel()
            stuck = [g for g in running if g.running]
            for generation in stuck:
                generation.cancel()
            if stuck:
                await asyncio.wait([asyncio.ensure_future(g.wait()) for g in stuck], timeout=1)
