"""The Ray executor's scheduling rule, apart from Ray: which stage actors to start, which idle ones to
release, which unit goes to which actor. Pure Python, so the rule can be checked on any cluster size
by simulation (``tests/test_scheduler.py``).

The rule
--------
1. **Reachability.** A stage keeps actors only while work can still reach it: a unit waiting or
   running at that stage or at any earlier one. (Counting only running units of earlier stages,
   not waiting ones, freed a pool one hop before its next shard arrived: the first cause of the
   ``make demo`` hang.)
2. **Admission within a budget.** The executor counts what its own live actors request (CPU, GPU,
   memory) and creates an actor only when that sum plus the new request stays within the cluster's
   totals, the way Ray Data's streaming executor budgets its operators. An actor that would not fit
   is not created, so Ray never holds a request of ours pending while our own idle actors sit on the
   resources it waits for (the second cause: the deadlock itself).
3. **Waiting work before idle actors.** When a stage has waiting units and no actor, and its actor
   does not fit, idle actors of stages with no waiting units are released, the most downstream
   first, until it fits. A busy actor is never interrupted. A released stage is started again when
   work reaches it (its model is loaded again: time, never a hang).
4. **Downstream first.** Stages with waiting work are served from the most downstream: finishing
   shards frees their inputs and their actors sooner than starting new ones. Extra actors of a
   stage (``executor.stage_workers``) only take resources no waiting stage without an actor needs.

5. **Work done outside an actor is reserved too.** A server the run manages (the embedded llama.cpp
   server) does the LLM stages' work on its own threads while their actors only wait on HTTP, so
   the actors ask for almost nothing and the server's CPUs are held as a reservation while work can
   still reach an LLM stage (rule 1's test), then given back to the speech stages. The reservation is
   cut down so that one actor of each LLM stage and one actor of any other stage still fit beside it.

Why it cannot deadlock: say nothing runs and units wait. If a stage with waiting units has an idle
actor, a unit is dispatched. Otherwise every actor of the run is idle and belongs to a stage with no
waiting units, so rule 3 may release all of them; since each stage's actor fits the cluster by itself
(checked before the run, and beside the reservation of rule 5 by its cap), the most downstream
waiting stage then gets its actor. Either way a unit
starts, every unit ends, so the run ends. What the rule cannot see (other jobs on a shared cluster,
resources split across nodes) is caught by the executor's watchdog, which stops the run with a
diagnosis instead of waiting forever.

Why not Ray Data's streaming executor: it budgets resources the same way, but in Ray 2.60 an
actor-pool operator keeps at least one actor for the whole execution (``ActorPoolStrategy`` rejects
``min_size < 1``; every operator scales to its initial size when execution starts), so all stage
pools would have to fit the cluster at once. The demo's stages ask 3.65 CPUs of a 2-CPU machine.
Per-shard markers and resume would also have to live inside the UDFs, with the skip decision made
after the actors were already started.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

RESOURCE_KEYS = ("CPU", "GPU", "memory")
_EPS = 1e-9


@dataclass(frozen=True)
class Request:
    """What one actor asks of the cluster (Ray's resource names; memory in bytes)."""

    CPU: float = 0.0
    GPU: float = 0.0
    memory: float = 0.0

    def __add__(self, other: Request) -> Request:
        return Request(*(getattr(self, k) + getattr(other, k) for k in RESOURCE_KEYS))

    def __sub__(self, other: Request) -> Request:
        return Request(*(getattr(self, k) - getattr(other, k) for k in RESOURCE_KEYS))

    def fits_in(self, room: Request) -> bool:
        return all(getattr(self, k) <= getattr(room, k) + _EPS for k in RESOURCE_KEYS)

    @classmethod
    def of(cls, resources: dict[str, float]) -> Request:
        return cls(*(float(resources.get(k, 0.0) or 0.0) for k in RESOURCE_KEYS))

    def describe(self) -> str:
        parts = []
        for k in RESOURCE_KEYS:
            v = getattr(self, k)
            if v:
                parts.append(f"{v / 2**30:.2f} GiB memory" if k == "memory" else f"{v:g} {k}")
        return ", ".join(parts) or "nothing"


# Actor states. ``placing``: created, Ray has not given it a worker yet; ``loading``: its stage's
# setup() runs (models load); ``idle``: ready, no unit; ``busy``: running a unit.
PLACING, LOADING, IDLE, BUSY = "placing", "loading", "idle", "busy"


@dataclass
class Slot:
    """One actor of the run, as the scheduler sees it."""

    id: int
    stage: int
    state: str = PLACING
    unit: Any = None
    since: float = 0.0  # when it entered its current state
    info: dict[str, Any] = field(default_factory=dict)  # pid, node (filled in by the executor)


@dataclass
class Decision:
    release: list[Slot] = field(default_factory=list)
    start: list[Slot] = field(default_factory=list)
    dispatch: list[tuple[Slot, Any]] = field(default_factory=list)
    made_room_for: dict[int, int] = field(default_factory=dict)  # released slot id -> stage it made room for


class Scheduler:
    """State of the run's actors and waiting units; ``decide()`` applies the rule above.

    Units are opaque except for ``unit.stage_index``. The caller turns decisions into Ray calls and
    reports back with ``placed`` / ``loaded`` / ``finished`` / ``lost``.
    """

    def __init__(
        self,
        requests: list[Request],
        workers: list[int],
        capacity: Request,
        reserve: Request | None = None,
        reserve_for: frozenset[int] = frozenset(),
    ):
        self.requests = requests
        self.workers = [max(1, w) for w in workers]
        self.capacity = capacity
        self.waiting: dict[int, deque[Any]] = {i: deque() for i in range(len(requests))}
        self.slots: dict[int, Slot] = {}
        self._next_id = 0
        self.reserve_for = frozenset(reserve_for)
        self.reserve = self._capped(reserve or Request())

    def _capped(self, want: Request) -> Request:
        """Rule 5's reservation, cut down so that beside it one actor of every stage of ``reserve_for``
        and one actor of any other stage still fit the cluster (so rule 3's argument still holds)."""

        if not self.reserve_for:
            return Request()
        clients = Request()
        for j in self.reserve_for:
            clients = clients + self.requests[j]
        out = []
        for k in RESOURCE_KEYS:
            largest = max((getattr(r, k) for r in self.requests), default=0.0)
            room = getattr(self.capacity, k) - largest - getattr(clients, k)
            out.append(max(0.0, min(getattr(want, k), room)))
        return Request(*out)

    def reserving(self) -> bool:
        """Rule 5: the reservation stands while work can still reach a stage it serves."""
        return bool(self.reserve_for) and any(self.reachable(j) for j in self.reserve_for)

    # -- what the executor reports -------------------------------------------------------------------
    def submit(self, unit: Any, *, front: bool = False) -> None:
        q = self.waiting[unit.stage_index]
        q.appendleft(unit) if front else q.append(unit)

    def placed(self, slot: Slot, now: float) -> None:
        if slot.state == PLACING:
            slot.state, slot.since = LOADING, now

    def loaded(self, slot: Slot, now: float) -> None:
        if slot.state in (PLACING, LOADING):
            slot.state, slot.since = IDLE, now

    def finished(self, slot: Slot, now: float) -> Any:
        unit, slot.unit = slot.unit, None
        slot.state, slot.since = IDLE, now
        return unit

    def lost(self, slot: Slot) -> Any:
        """The actor died; its unit (if any) goes back to the front of its stage's queue."""
        self.slots.pop(slot.id, None)
        unit, slot.unit = slot.unit, None
        if unit is not None:
            self.submit(unit, front=True)
        return unit

    # -- queries ------------------------------------------------------------------------------------
    def active(self) -> bool:
        return any(self.waiting.values()) or any(s.state == BUSY for s in self.slots.values())

    def held(self) -> Request:
        total = self.reserve if self.reserving() else Request()
        for s in self.slots.values():
            total = total + self.requests[s.stage]
        return total

    def room(self) -> Request:
        return self.capacity - self.held()

    def stage_slots(self, i: int) -> list[Slot]:
        return [s for s in self.slots.values() if s.stage == i]

    def reachable(self, i: int) -> bool:
        """Rule 1: a unit waits or runs at stage ``i`` or before it."""
        if any(self.waiting[j] for j in range(i + 1)):
            return True
        return any(s.state == BUSY and s.stage <= i for s in self.slots.values())

    # -- the rule -----------------------------------------------------------------------------------
    def decide(self, now: float) -> Decision:
        d = Decision()
        # Rule 1: free the actors of stages no work can reach any more (a busy one cannot be: its unit).
        for s in list(self.slots.values()):
            if not self.reachable(s.stage):
                self._release(s, d)
        # Rules 3 and 4: one actor for each stage with waiting units, most downstream first.
        for i in sorted((i for i, q in self.waiting.items() if q), reverse=True):
            if self.stage_slots(i):
                continue
            if not self._make_room(i, d):
                continue
            d.start.append(self._new_slot(i, now))
        # Extra actors (stage_workers > 1) from what is left, only where waiting units outnumber actors.
        for i in sorted((i for i, q in self.waiting.items() if q), reverse=True):
            while True:
                have = self.stage_slots(i)
                spare = [s for s in have if s.state in (PLACING, LOADING, IDLE)]
                if len(have) >= self.workers[i] or len(spare) >= len(self.waiting[i]):
                    break
                if not self.requests[i].fits_in(self.room()):
                    break
                d.start.append(self._new_slot(i, now))
        # Dispatch: every idle actor whose stage has waiting units takes the first of them.
        for s in sorted(self.slots.values(), key=lambda s: (-s.stage, s.id)):
            if s.state == IDLE and self.waiting[s.stage]:
                s.unit = self.waiting[s.stage].popleft()
                s.state, s.since = BUSY, now
                d.dispatch.append((s, s.unit))
        return d

    def _make_room(self, i: int, d: Decision) -> bool:
        """Release idle actors of stages without waiting units (most downstream first) until stage
        ``i``'s actor fits; release nothing when even all of them would not make room."""
        need = self.requests[i]
        if need.fits_in(self.room()):
            return True
        candidates = sorted(
            (s for s in self.slots.values() if s.state == IDLE and not self.waiting[s.stage]),
            key=lambda s: (-s.stage, -s.id),
        )
        room = self.room()
        chosen = []
        for s in candidates:
            if need.fits_in(room):
                break
            chosen.append(s)
            room = room + self.requests[s.stage]
        if not need.fits_in(room):
            return False  # busy or still-starting actors hold the rest: wait for one to finish
        for s in chosen:
            self._release(s, d)
            d.made_room_for[s.id] = i
        return True

    def _release(self, s: Slot, d: Decision) -> None:
        self.slots.pop(s.id, None)
        d.release.append(s)

    def _new_slot(self, i: int, now: float) -> Slot:
        s = Slot(id=self._next_id, stage=i, since=now)
        self._next_id += 1
        self.slots[s.id] = s
        return s
