"""The labgrid client process: every talk with a labgrid coordinator happens here, one
process per lease, through labgrid's own `ClientSession` (labgrid.remote.client).

Why a process of its own: labgrid allows one client session per process (a second
`start_session` in the same process fails in the coordinator: `assert peer not in
self.clients`), and a lease must be given back even when its client dies. The harness
(`harness.board.lab`) starts this module with a pipe on stdin that only it writes to; it
never writes, so end-of-file on stdin means "give everything back", whether the harness
closed it on purpose, was interrupted (Ctrl-C, SIGTERM) or was killed (kill -9 included).
This process is in a session of its own (a Ctrl-C at the terminal does not reach it) and
ignores SIGINT; a SIGTERM sent to it counts as end-of-file: it releases its places and
cancels its reservations, then exits. Only a kill -9 of this process itself leaves a place
acquired; `harness.board.lab.release_hint` says how to free it.

Actions (one JSON document per line on stdout; labgrid's own prints go to stderr):

    lease  COORD FILTER COUNT WAIT  reserve (queued behind other users, like
                                    `labgrid-client reserve --wait`), acquire, report
                                    {"event": "acquired", place, address, port, username,
                                    tags, token} per place, then {"event": "ready"}; hold
                                    until stdin closes; release, cancel, {"event":
                                    "released"}. COUNT 0: every place of the filter that is
                                    free now (at least one, waited for when WAIT is 1).
    free   COORD FILTER             {"free": n, "total": m, "places": [...], "holders": {}}
    setup  COORD SPEC.json          create places with matches and tags (farm-sim)

FILTER is `name=PLACE` (an exact place name: the coordinator's scheduler matches the
`name` tag exactly, unlike labgrid-client's substring `-p`) or `TAG=VALUE` (a pool).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from labgrid.remote.client import start_session
from labgrid.remote.common import Reservation
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2

#: How often a waiting reservation is polled (it expires after 60 s unpolled).
POLL_SECONDS = 0.5
#: Set by a SIGTERM that came before the lease's own handler was in place.
EARLY_SIGTERM: list[bool] = []


class LeaseError(Exception):
    """A failure to report as {"event": "error"}."""


def say(**doc: Any) -> None:
    """One protocol line on the real stdout."""
    sys.__stdout__.write(json.dumps(doc) + "\n")
    sys.__stdout__.flush()


@contextlib.contextmanager
def labgrid_prints_to_stderr() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


def parse_filter(text: str) -> dict[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise LeaseError(f"bad filter {text!r}: TAG=VALUE")
    return {key: value}


class Client:
    """One labgrid ClientSession and what this process holds through it."""

    def __init__(self, coordinator: str) -> None:
        self.coordinator = coordinator
        try:
            with labgrid_prints_to_stderr():
                self.session = start_session(coordinator)
        except Exception as exc:  # grpc/labgrid raise several types for "cannot connect"
            raise LeaseError(f"labgrid coordinator {coordinator}: cannot connect ({exc})"
                             ) from None
        self.loop = self.session.loop
        self.tokens: list[str] = []
        self.acquired: list[str] = []

    def run(self, coro: Any) -> Any:
        with labgrid_prints_to_stderr():
            return self.loop.run_until_complete(coro)

    # -- places -----------------------------------------------------------------------------

    def matching(self, fltr: dict[str, str]) -> list[str]:
        """Names of the places the filter matches, as the coordinator's scheduler does (a
        place's tags plus its own name as tag `name`)."""
        out = []
        for name, place in sorted(self.session.places.items()):
            tags = {**place.tags, "name": name}
            if all(tags.get(k) == v for k, v in fltr.items()):
                out.append(name)
        return out

    def check_filter(self, fltr: dict[str, str]) -> list[str]:
        names = self.matching(fltr)
        if names:
            return names
        places = ", ".join(sorted(self.session.places)) or "none"
        if "name" in fltr:
            raise LeaseError(f"labgrid coordinator {self.coordinator}: no place named "
                             f"{fltr['name']!r} (names match exactly; places: {places})")
        (k, v), = fltr.items()
        raise LeaseError(f"labgrid coordinator {self.coordinator}: no place has the tag "
                         f"{k}={v} (places: {places})")

    def holders(self, names: list[str]) -> dict[str, str]:
        """{place: who holds or has reserved it} for the busy ones among `names`."""
        out = {}
        for name in names:
            place = self.session.places[name]
            if place.acquired:
                out[name] = f"acquired by {place.acquired}"
            elif place.reservation:
                out[name] = "reserved"
        return out

    # -- reservations -----------------------------------------------------------------------

    async def _create(self, fltr: dict[str, str]) -> tuple[str, str]:
        req = pb2.CreateReservationRequest(
            filters={"main": pb2.Reservation.Filter(filter=fltr)}, prio=0.0)
        res = Reservation.from_pb2((await self.session.stub.CreateReservation(req)).reservation)
        self.tokens.append(res.token)
        return res.token, res.state.name

    async def _poll(self, token: str) -> tuple[str, list[str]]:
        req = pb2.PollReservationRequest(token=token)
        res = Reservation.from_pb2((await self.session.stub.PollReservation(req)).reservation)
        return res.state.name, [n for group in res.allocations.values() for n in group]

    async def _cancel(self, token: str) -> None:
        with contextlib.suppress(Exception):
            await self.session.stub.CancelReservation(
                pb2.CancelReservationRequest(token=token))

    async def _acquire(self, name: str) -> dict[str, Any]:
        """Acquire the place allocated to us (by its exact name) and read its
        NetworkService."""
        self.session.args = argparse.Namespace(place=name, allow_unmatched=False, kick=False)
        await self.session.acquire()
        self.acquired.append(name)
        place = self.session.places[name]
        services = [(rname, entry) for (rname, cls), entry in
                    sorted(self.session.get_target_resources(place).items())
                    if cls == "NetworkService"]
        if not services:
            raise LeaseError(f"labgrid place {name}: no NetworkService resource (the "
                             "exporter must publish one and the place match it, e.g. "
                             f"labgrid-client -p {name} add-match EXPORTER/GROUP/"
                             "NetworkService)")
        args = services[0][1].args
        return {"place": name, "address": str(args["address"]),
                "port": int(args.get("port", 22)), "username": str(args["username"]),
                "tags": dict(place.tags)}

    async def release_all(self) -> list[str]:
        released = []
        for name in self.acquired:
            self.session.args = argparse.Namespace(place=name, kick=False)
            with contextlib.suppress(Exception):
                await self.session.release()
                released.append(name)
        self.acquired = []
        for token in self.tokens:
            await self._cancel(token)
        self.tokens = []
        return released


def _stdin_closed(loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """A future done when the harness's end of stdin closes (it never writes)."""
    fut = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data and not fut.done():
            loop.remove_reader(fd)
            fut.set_result(None)

    loop.add_reader(fd, readable)
    return fut


async def _lease(client: Client, fltr: dict[str, str], count: int, wait: bool,
                 gone: asyncio.Future) -> bool:
    """Reserve and acquire; False if the harness went away before everything was held."""
    names = client.check_filter(fltr)
    want = count or len(names)
    told_waiting = False
    while len(client.acquired) < want:
        token, state = await client._create(fltr)
        while state == "waiting":
            first = not client.acquired
            if not (first and wait):
                await client._cancel(token)
                client.tokens.remove(token)
                if first:
                    raise LeaseError("no free place for " + " ".join(
                        f"{k}={v}" for k, v in fltr.items()) + " (busy: " + ", ".join(
                        f"{n} {h}" for n, h in client.holders(names).items()) + ")")
                return True
            if not told_waiting:
                say(event="waiting", token=token, holders=client.holders(names))
                told_waiting = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(gone), POLL_SECONDS)
            if gone.done():
                return False
            state, _ = await client._poll(token)
        state, places = await client._poll(token)
        if state not in ("allocated", "acquired") or len(places) != 1:
            raise LeaseError(f"reservation {token} is {state} (allocation {places})")
        info = await client._acquire(places[0])
        say(event="acquired", token=token, **info)
        if gone.done():
            return False
    return True


def cmd_lease(client: Client, fltr: dict[str, str], count: int, wait: bool) -> int:
    gone = _stdin_closed(client.loop)
    client.loop.add_signal_handler(
        signal.SIGTERM, lambda: gone.done() or gone.set_result(None))
    if EARLY_SIGTERM and not gone.done():
        gone.set_result(None)
    try:
        held = client.run(_lease(client, fltr, count, wait, gone))
        if held:
            say(event="ready", places=list(client.acquired))
            client.run(gone)
    finally:
        released = client.run(client.release_all())
        say(event="released", places=released)
    return 0


def cmd_free(client: Client, fltr: dict[str, str]) -> int:
    names = client.check_filter(fltr)
    holders = client.holders(names)
    say(free=len(names) - len(holders), total=len(names), places=names, holders=holders)
    return 0


async def _setup(client: Client, places: list[dict[str, Any]]) -> None:
    """Create each place with its matches and tags, then wait until each match has an
    available resource (the exporter has registered)."""
    s = client.session
    for p in places:
        s.args = argparse.Namespace(place=p["name"], patterns=p["matches"],
                                    tags=[f"{k}={v}" for k, v in p["tags"].items()])
        if p["name"] not in s.places:
            await s.add_place()
        await s.add_match()
        await s.set_tags()
    for _ in range(200):
        await s.sync_with_coordinator()
        missing = []
        for p in places:
            try:
                s.check_matches(s.places[p["name"]])
            except Exception:
                missing.append(p["name"])
        if not missing:
            return
        await asyncio.sleep(0.05)
    raise LeaseError(f"labgrid exporter resources for {', '.join(missing)} never appeared")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    action, coordinator, rest = argv[0], argv[1], argv[2:]
    if action == "lease":
        # Ctrl-C at the terminal is the harness's; it closes our stdin. A SIGTERM before
        # the lease's own handler is in place is remembered: the lease then ends at once.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: EARLY_SIGTERM.append(True))
    try:
        client = Client(coordinator)
        if action == "lease":
            return cmd_lease(client, parse_filter(rest[0]), int(rest[1]), rest[2] == "1")
        if action == "free":
            return cmd_free(client, parse_filter(rest[0]))
        if action == "setup":
            with open(rest[0]) as fh:
                client.run(_setup(client, json.load(fh)))
            say(event="ready")
            return 0
        raise LeaseError(f"unknown action {action}")
    except LeaseError as exc:
        say(event="error", message=str(exc))
        return 2
    except Exception as exc:  # labgrid's own errors (UserError, ServerError, grpc)
        say(event="error", message=f"labgrid: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
