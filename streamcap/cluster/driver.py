"""The driver of ``monitor --ray``: connects to Ray, places one actor per camera group, and
merges every actor's records into ONE JSONL log (each record gains ``node``, ``group`` and
``seq``, its line number in the actor's local log).

Faults: Ray restarts a crashed actor (``max_restarts``) and re-places the actors of a dead
node on the remaining nodes; the driver notices a new incarnation by its reply, logs
``actor_restarted`` or ``camera_moved`` (from/to node, outage), and takes the lines the old
incarnation wrote but it had not pulled from the old local log when that file is readable
here (shared storage, or the same machine); otherwise it logs ``records_missed`` with the
sequence numbers it has. After a stretch without an answer it logs ``caught_up`` with the
sequence numbers it pulled late.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from streamcap.cluster.actor import CameraGroup, read_lines
from streamcap.cluster.config import CameraConfig, Group
from streamcap.errors import BadInputError, StreamcapError

log = logging.getLogger(__name__)
POLL_S = 1.0  # the longest wait for any actor's answer (actors answer as soon as they log)
# An actor collects records this long after the first before answering: each answer costs about
# 1 ms of CPU in the driver and 1 ms in the actor (Ray's call machinery), so fewer answers are
# cheaper, at that much latency. While a tile of the group is watched, 1/--serve-fps at most.
LINGER_S = 0.25
_ADDED = frozenset({"node", "group", "seq"})  # the keys the driver adds to each forwarded record
UNREACHABLE_S = 2.0  # no answer for this long counts as an outage (caught_up is logged after)
RETRY_S = 0.25  # after a failed call, ask that actor again this much later


@dataclass
class _GroupState:
    group: Group
    actor: Any
    consumed: dict[str, int] = field(default_factory=dict)  # local log path -> last seq written
    path: str | None = None
    node: str | None = None
    node_id: str | None = None
    started: float | None = None
    last_ok: float = field(default_factory=time.monotonic)
    last_ok_wall: float = field(default_factory=time.time)
    pending: Any = None
    done: bool = False
    dead: bool = False
    exit_code: int | None = None
    error: str | None = None
    received: int = 0
    retry_at: float = 0.0
    watching: tuple | None = None  # the cameras this incarnation was told to send frames of
    snapshots: int = 0
    snapshots_dropped: int = 0
    acked: list = field(default_factory=list)  # the snapshots of the last answer, acknowledged in the next call


def node_label(node_ip: str, node_id: str) -> str:
    return f"{node_ip}-{node_id[:6]}"


def connect(address: str, *, num_cpus: float | None = None):
    """``local``: start a one-node Ray here, listening on loopback only; ``auto``: the running
    cluster; else HOST:PORT. A loopback address keeps the driver on that loopback address too."""
    import os

    import ray

    from streamcap.cluster import quiet

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet.apply()  # the driver's own Ray worker, and a local cluster's daemons
    kw: dict[str, Any] = dict(log_to_driver=False, configure_logging=False, namespace="streamcap")
    if address == "local":
        loopback_only()
        kw.update(include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1")
        return ray.init(**kw)
    host = address.rsplit(":", 1)[0] if ":" in address else ""
    if host.startswith("127."):
        kw["_node_ip_address"] = host
    try:
        return ray.init(address=address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise BadInputError(f"--ray {address}: cannot connect to the Ray cluster: {str(err).splitlines()[0]}") from None


class ClusterMonitor:
    """Places the groups and merges their records; ``run()`` until stopped, then ``stop()``."""

    def __init__(self, cfg: CameraConfig, jobs: dict[str, Any], *, sink: Any, local_dir: str,
                 stage_factory: Callable | None = None, on_record: Callable[[dict], None] | None = None,
                 duration_s: float | None = None, linger_s: float = LINGER_S, views: dict[str, dict] | None = None,
                 hub: Any = None, events: Any = None, view_fps: float = 5.0) -> None:
        """``views``: per group, what its actor runs besides the engine (``actor.CameraGroup``);
        ``hub``: the dashboard's ``LiveHub`` (frames of watched cameras come from the actors);
        ``events``: the driver's ``EventStore`` (snapshots from the actors are written there)."""
        self.cfg, self.jobs, self.sink = cfg, jobs, sink
        self.views = views or {}
        self.hub, self.events, self.view_fps = hub, events, view_fps
        self.linger_s = linger_s
        self.local_dir = local_dir
        self.stage_factory = stage_factory
        self.on_record = on_record
        self.duration_s = duration_s
        self.states: dict[str, _GroupState] = {}
        self._stored: set[str] = set()  # snapshot names written into the events folder
        self._stop = threading.Event()
        self.reason: str | None = None
        self.lines = 0

    # -- placement -----------------------------------------------------------------------------
    def place(self) -> None:
        import ray

        remote = ray.remote(CameraGroup)
        for name, group in self.cfg.groups.items():
            opts: dict[str, Any] = dict(max_restarts=group.max_restarts, max_task_retries=0,
                                        max_concurrency=4, scheduling_strategy="SPREAD",
                                        name=f"streamcap-{name}-{uuid.uuid4().hex[:6]}")
            opts["num_cpus"] = 1 if group.num_cpus is None else group.num_cpus
            if group.num_gpus:
                opts["num_gpus"] = group.num_gpus
            if group.resources:
                opts["resources"] = dict(group.resources)
            actor = remote.options(**opts).remote(name, self.jobs[name], self.local_dir, self.stage_factory,
                                                  self.views.get(name))
            self.states[name] = _GroupState(group=group, actor=actor)
        nodes = [{"node": node_label(n["NodeManagerAddress"], n["NodeID"]), "alive": n["Alive"],
                  "resources": {k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")}}
                 for n in ray.nodes()]
        self._write("cluster", nodes=nodes, groups={n: [c.name for c in s.group.cameras] for n, s in self.states.items()})

    # -- the merged log -------------------------------------------------------------------------
    def _write(self, event: str, **fields: Any) -> None:
        if self.sink is not None:
            self.sink.write(event, **fields)
        if self.on_record is not None:
            self.on_record({"event": event, **fields})

    def _forward(self, st: _GroupState, node: str, path: str, first_seq: int, lines: list[str], **extra: Any) -> None:
        """Each actor line into the merged log with ``node``, ``group`` and ``seq`` (and ``extra``)
        added. A line the actor's own log wrote (``record_line``: redacted, compact) is extended
        as text and the answer's lines go out in one write; anything else (a line holding a URL,
        naming one of the added keys, or not JSON) is rebuilt by ``make_record`` as before."""
        fast = getattr(self.sink, "takes_encoded", False)  # a RecordTap without enrichers
        added = {"node": node, "group": st.group.name}
        clash = _ADDED.union(extra)
        batch: list[tuple[dict, str]] = []
        for i, line in enumerate(lines):
            seq = first_seq + i
            try:
                rec = json.loads(line)
            except ValueError:
                rec = {"event": "unparsed", "text": line[:500]}
            else:
                if (fast and type(rec) is dict and line.endswith("}") and len(rec) > 1 and "://" not in line
                        and not (rec.keys() & clash)):
                    rec.update(added, seq=seq, **extra)
                    tail = json.dumps({**added, "seq": seq, **extra}, ensure_ascii=False, separators=(",", ":"))
                    batch.append((rec, line[:-1] + "," + tail[1:]))
                    self.lines += 1
                    st.received += 1
                    continue
            if batch:  # keep the file's order
                self._flush(batch)
            event = rec.pop("event", "unknown")
            source = rec.pop("source", None)
            rec.update(node=node, group=st.group.name, seq=seq, **extra)
            if self.sink is not None:
                self.sink.write(event, source=source, **rec)
            if self.on_record is not None:
                self.on_record({"event": event, "source": source, **rec})
            self.lines += 1
            st.received += 1
        if batch:
            self._flush(batch)
        if lines:
            st.consumed[path] = first_seq + len(lines) - 1

    def _flush(self, batch: list[tuple[dict, str]]) -> None:
        try:
            self.sink.write_encoded(batch)
        finally:
            if self.on_record is not None:
                for rec, _ in batch:
                    self.on_record(rec)
            batch.clear()

    # -- one answer from an actor ---------------------------------------------------------------
    def _handle(self, st: _GroupState, reply: dict) -> None:
        now, wall = time.monotonic(), time.time()
        node = node_label(reply["node_ip"], reply["node_id"])
        gap = now - st.last_ok
        if st.path is not None and reply["started"] != st.started:
            self._new_incarnation(st, reply, node, wall)
        elif gap > UNREACHABLE_S and reply["lines"]:
            self._write("caught_up", group=st.group.name, node=node, unreachable_s=round(gap, 3),
                        from_seq=reply["first_seq"], to_seq=reply["first_seq"] + len(reply["lines"]) - 1)
        if reply["started"] != st.started:
            st.watching = None  # a new incarnation watches nothing yet
        st.path, st.node, st.node_id, st.started = reply["path"], node, reply["node_id"], reply["started"]
        st.last_ok, st.last_ok_wall = now, wall
        self._take_snapshots(st, reply.get("snapshots") or (), reply.get("snapshots_dropped", 0))
        self._forward(st, node, reply["path"], reply["first_seq"], reply["lines"])
        for camera, jpeg in (reply.get("frames") or {}).items():
            if self.hub is not None:
                self.hub.put_jpeg(camera, jpeg)
        st.done, st.exit_code, st.error = reply["done"], reply["exit_code"], reply["error"]

    def _take_snapshots(self, st: _GroupState, items, dropped: int) -> None:
        """Write the actor's snapshots into the driver's events folder (names checked), once
        each (an actor sends again what it was not acknowledged), and acknowledge them all in
        the next call."""
        st.acked = [name for name, _ in items]
        if self.events is None:
            return
        for name, data in items:
            try:
                self.events.path(name)
            except ValueError:
                log.warning("group %s sent a snapshot outside the events folder: %r", st.group.name, name)
                continue
            if name in self._stored:
                continue
            self.events.store(name, data)
            self._stored.add(name)
            st.snapshots += 1
        if dropped > st.snapshots_dropped:
            self._write("snapshots_dropped", group=st.group.name, node=st.node, dropped=dropped - st.snapshots_dropped,
                        message="the driver fell behind; these snapshots were never sent")
        st.snapshots_dropped = dropped

    def _sync_watching(self) -> None:
        """Tell each actor which of its cameras someone watches on the dashboard (on change)."""
        if self.hub is None:
            return
        for st in self.states.values():
            if st.dead or st.started is None:
                continue
            watched = tuple(sorted(c.name for c in st.group.cameras
                                   if (slot := self.hub.slot(c.name)) is not None and slot.viewers > 0))
            if watched != st.watching:
                st.watching = watched
                st.actor.watch.remote(list(watched), self.view_fps)

    def node_status(self) -> list[dict]:
        """Per node: its groups and cameras, and how long since each group last answered."""
        now = time.monotonic()
        nodes: dict[str, dict] = {}
        for st in self.states.values():
            n = nodes.setdefault(st.node or "(not placed yet)", {"node": st.node, "groups": [], "cameras": []})
            n["groups"].append({"group": st.group.name, "answered_s_ago": round(now - st.last_ok, 1),
                                "reachable": now - st.last_ok <= UNREACHABLE_S and not st.dead,
                                "failed": st.dead, "lines": st.received})
            n["cameras"] += [c.name for c in st.group.cameras]
        return list(nodes.values())

    def _new_incarnation(self, st: _GroupState, reply: dict, node: str, wall: float) -> None:
        old_path, old_node = st.path, st.node
        outage = round(wall - st.last_ok_wall, 3)
        if reply["path"] != old_path:  # another node: take what the old one wrote, if readable here
            last = st.consumed.get(old_path, 0)
            rest, _ = read_lines(Path(old_path), last, 10**9)
            if rest:
                self._forward(st, old_node, old_path, last + 1, rest, recovered=True)
            elif not Path(old_path).exists():
                self._write("records_missed", group=st.group.name, node=old_node, after_seq=last,
                            message="the old node's local log is not readable here; lines after after_seq "
                                    "are only in that node's log")
            for cam in st.group.cameras:
                self._write("camera_moved", source=cam.name, group=st.group.name, node=node,
                            **{"from": old_node, "to": node}, outage_s=outage)
        else:
            self._write("actor_restarted", group=st.group.name, node=node, outage_s=outage,
                        cameras=[c.name for c in st.group.cameras], resumed_after_seq=st.consumed.get(old_path, 0))

    # -- the loop --------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._stop.set()

    def _poll_once(self, timeout: float) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        by_ref = {}
        now = time.monotonic()
        for st in self.states.values():
            if st.dead or (st.pending is None and (st.done or now < st.retry_at)):
                continue  # ended (everything pulled), or failed a moment ago
            if st.pending is None:
                linger = min(self.linger_s, 1.0 / self.view_fps) if st.watching and self.view_fps > 0 else self.linger_s
                st.pending = st.actor.fetch.remote(dict(st.consumed), linger_s=linger, acked=list(st.acked))
            by_ref[st.pending] = st
        if not by_ref:
            time.sleep(min(timeout, RETRY_S))
            return
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        if ready:  # and whatever else is ready by now
            ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        for ref in ready:
            st = by_ref[ref]
            st.pending = None
            try:
                self._handle(st, ray.get(ref))
            except ActorDiedError as err:
                st.retry_at = time.monotonic() + RETRY_S
                if "restart" in str(err).lower() and "exceeded" not in str(err).lower():
                    continue  # being restarted: ask again
                if not st.dead:
                    st.dead = True
                    self._write("actor_failed", group=st.group.name, node=st.node,
                                cameras=[c.name for c in st.group.cameras], message=str(err).splitlines()[0][:300])
            except RayActorError:
                st.retry_at = time.monotonic() + RETRY_S  # unavailable for now (restarting, node lost)

    def run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            self._poll_once(POLL_S)
            self._sync_watching()
            if self.duration_s is not None and time.monotonic() - started >= self.duration_s:
                self.request_stop("duration")
            live = [s for s in self.states.values() if not s.dead]
            if live and all(s.done for s in live):
                self.request_stop("ended")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every actor's run, pull what is left, write ``cluster_end``."""
        import ray

        reason = self.reason or "stopped"
        refs = {st.group.name: st.actor.stop.remote(reason) for st in self.states.values() if not st.dead}
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = [s for s in self.states.values() if not s.dead]
            if all(s.done for s in live):
                break
            self._poll_once(POLL_S)
        self._write("cluster_end", reason=reason, lines=self.lines,
                    groups={n: {"node": s.node, "received": s.received, "exit_code": s.exit_code,
                                "error": s.error, "failed": s.dead} for n, s in self.states.items()})
        for st in self.states.values():
            try:
                ray.kill(st.actor, no_restart=True)
            except Exception:  # already gone
                pass

    def exit_code(self) -> int:
        if self.reason == "sigint":
            return 130
        if self.reason == "sigterm":
            return 143
        codes = [s.exit_code for s in self.states.values() if s.exit_code]
        if any(s.dead for s in self.states.values()):
            codes.append(1)
        return max(codes) if codes else 0


def loopback_only() -> None:
    """Make a Ray started by this process listen on 127.0.0.1 only. Ray's servers listen on
    every interface unless the node's address is exactly 127.0.0.1, and Ray replaces 127.0.0.1
    by the machine's network address unless clusters are switched off (its single-machine mode,
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): switched off here, in this process and for the
    daemons it starts. A one-node cluster loses nothing by it."""
    import os

    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def driver_events(events_dir: Path, max_mb: float, tap: Any):
    """The driver's events folder. The actors name and draw the snapshots (their records carry
    the names); here they are only stored, so the store's enricher is not attached: ``stats``
    and ``end`` records get this folder's figures instead of the actor's."""
    from streamcap.events import EventStore

    store = EventStore(events_dir, max_mb).open()

    def figures(record: dict) -> None:
        if record.get("event") in ("stats", "end"):
            record["events"] = store.usage()
    tap.add_enricher(figures)
    return store


def with_nodes(app: Any, mon: "ClusterMonitor") -> None:
    """``/api/state`` of the dashboard gains ``nodes`` (``ClusterMonitor.node_status``) and each
    camera its ``node``."""
    plain = app.state

    def state() -> dict:
        out = plain()
        nodes = mon.node_status()
        where = {cam: n["node"] for n in nodes for cam in n["cameras"]}
        for cam in out.get("cameras", []):
            cam["node"] = where.get(cam.get("name"))
        out["nodes"] = nodes
        return out
    app.state = state


def run_cluster(cfg: CameraConfig, jobs: dict[str, Any], *, address: str, log_path: Path | None,
                local_dir: str, duration_s: float | None = None, stage_factory: Callable | None = None,
                install_signals: bool = True, console: Any = None, index: bool = True,
                tap: Any = None, linger_s: float = LINGER_S, views: dict[str, dict] | None = None,
                events_dir: Path | None = None, events_max_mb: float = 500.0, dashboard: Any = None,
                view_fps: float = 5.0) -> int:
    """Connect, place, merge until a signal (or duration); the exit code. The merged records go
    through a record tap (``streamcap.tap``): the JSONL log, the search index beside it, and
    every subscriber of ``tap`` (alerts' deliveries, metrics, the dashboard) get every record of
    every node. ``events_dir``: the actors' snapshots are written there (the log's records name
    them); ``dashboard`` (``web.wiring.Dashboard`` on ``tap``): live tiles get the actors' frames
    and ``/api/state`` gains ``nodes``."""
    import ray

    from streamcap.runner import Job, _attach_outputs, _close_outputs
    from streamcap.tap import RecordTap

    started_here = not ray.is_initialized()
    if started_here:
        import os

        # A local cluster offers at least one CPU per camera group (cameras wait on the network
        # more than they compute): a 2-core machine still runs 4 groups.
        need = sum(1 if g.num_cpus is None else g.num_cpus for g in cfg.groups.values())
        connect(address, num_cpus=max(float(os.cpu_count() or 1), need) if address == "local" else None)
    tap = tap if tap is not None else RecordTap()
    if events_dir is not None and tap.events is None:
        tap.events = driver_events(events_dir, events_max_mb, tap)
    _attach_outputs(Job(command="monitor", sources=[], log=log_path, index=index, events_dir=events_dir), tap)
    sink = tap
    mon = ClusterMonitor(cfg, jobs, sink=sink, local_dir=local_dir, stage_factory=stage_factory,
                         duration_s=duration_s, linger_s=linger_s, views=views, events=tap.events,
                         hub=dashboard.hub if dashboard is not None else None, view_fps=view_fps)
    if dashboard is not None:
        with_nodes(dashboard.app, mon)
    old = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig, name in ((signal.SIGINT, "sigint"), (signal.SIGTERM, "sigterm")):
            old[sig] = signal.signal(sig, lambda *_a, _n=name: mon.request_stop(_n))
    try:
        mon.place()
        if console is not None:
            console.print(f"streamcap: {len(mon.states)} camera group(s) placed on the Ray cluster; "
                          f"merged log: {log_path or '(none)'}", highlight=False, markup=False)
        mon.run()
    except StreamcapError:
        raise
    finally:
        try:
            mon.stop()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            _close_outputs(tap)
            if started_here:
                ray.shutdown()
    if console is not None:
        console.print(f"streamcap: {mon.lines} records merged from {len(mon.states)} group(s); ended: {mon.reason}",
                      highlight=False, markup=False)
    return mon.exit_code()
