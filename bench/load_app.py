"""Load test of the real dashboard: N concurrent sessions making edits against `streamlit run`.

    python bench/load_app.py [--sessions 20] [--duration 60] [--out bench/results/load_app.json]
    python bench/load_app.py --smoke          # 2 sessions, 3 rounds each (what the tests run)

Starts `streamlit run app/Home.py` on a free loopback port (the shipped model, BACKPACK_THREADS=1)
and opens --sessions browser sessions at once, each speaking Streamlit's own websocket protocol
(`/_stcore/stream`, the BackMsg / ForwardMsg protobufs of the installed streamlit), as a browser
tab does. Each session opens the Steer page, then for --duration seconds applies edit sets of its
own through the page's "Edit set as JSON" box and "Apply the JSON" button (or, with --rounds,
for that many rounds each, whatever they take: the smoke test is bounded by work, not by the
machine's speed): every edit set is
unique to its (session, round), a `scale_sense` of " bank" with a factor only that session uses.
One round = one widget interaction = one script run, timed from the message sent to the server's
`script_finished`. Every --generate-every rounds a session also clicks "Generate" (30 new tokens,
greedy, with and without its edits: two generations in one script run), timed the same way
(`generation_ms`). --threads sets the server's BACKPACK_THREADS ("auto": unset, the app picks
per request, `progress.choose_threads`).

Reported (one JSON object, also written to --out):
- errors: exception elements in a page, script runs that did not finish, dropped connections;
- leaks: rounds whose page showed another session's edit set (the link the page writes into the
  URL, `?edits=...`, decoded, must be this session's own edit set), or showed no edit set;
- latency of a round: p50 / p95 / max in ms, and rounds per second;
- server memory: resident set of the server process (and children) at start (after the first
  page load), peak and end, in MB, sampled every 0.5 s.
The baseline is one session alone (--baseline-seconds, before the concurrent phase, same server):
its p50 is what a round costs without contention.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

REPO = Path(__file__).resolve().parent.parent
TEXT = "The bank by the river has money. She went to the bank."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MB), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            pass
    return total / 1024


def start_server(port: int, threads: str = "1") -> subprocess.Popen:
    env = {**os.environ, "BACKPACK_THREADS": threads, "BACKPACK_DEVICE": "cpu",
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    if threads == "auto":
        env.pop("BACKPACK_THREADS")
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "Home.py"),
           "--server.address=127.0.0.1", f"--server.port={port}", "--server.headless=true",
           "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"]
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError("streamlit did not become healthy in 120 s")


class Session:
    """One browser tab: a websocket to the server and the page it shows."""

    def __init__(self, port: int, name: int):
        self.port, self.name = port, name
        self.ws = None
        self.pages: dict[str, str] = {}  # url path -> page script hash
        self.widgets: dict[str, str] = {}  # user key -> widget id
        self.query = ""

    async def connect(self) -> None:
        import websockets

        self.ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/_stcore/stream",
                                           subprotocols=["streamlit"], max_size=2**26,
                                           open_timeout=60, ping_interval=None)

    async def rerun(self, page_hash: str = "", query: str = "", widgets=None,
                    timeout: float = 120.0) -> dict:
        """Send one rerun; read until the script finishes. Returns what the page showed."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        msg.rerun_script.query_string = query
        msg.rerun_script.page_script_hash = page_hash
        for widget_id, kind, value in widgets or []:
            state = msg.rerun_script.widget_states.widgets.add()
            state.id = widget_id
            setattr(state, kind, value)
        await self.ws.send(msg.SerializeToString())
        seen = {"exceptions": [], "errors": [], "finished": False}
        deadline = time.time() + timeout
        while time.time() < deadline:
            raw = await asyncio.wait_for(self.ws.recv(), timeout=deadline - time.time())
            fwd = ForwardMsg()
            fwd.ParseFromString(raw)
            kind = fwd.WhichOneof("type")
            if kind == "navigation":  # st.navigation's pages
                self.pages = {p.url_pathname: p.page_script_hash for p in fwd.navigation.app_pages}
            elif kind == "page_info_changed":
                self.query = fwd.page_info_changed.query_string
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                element = fwd.delta.new_element
                which = element.WhichOneof("type")
                if which == "exception":
                    seen["exceptions"].append(element.exception.message[:300])
                elif which == "alert" and element.alert.format == 1:  # ERROR
                    seen["errors"].append(element.alert.body[:300])
                widget = getattr(element, which, None) if which else None
                widget_id = getattr(widget, "id", "") if widget is not None else ""
                if widget_id:
                    self.widgets[_user_key(widget_id)] = widget_id
            elif kind == "script_finished":
                seen["finished"] = True
                seen["status"] = fwd.script_finished
                return seen
        return seen

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


def _user_key(widget_id: str) -> str:
    """The user key (e.g. 'steer:json') at the end of a widget id like '$$ID-<hash>-steer:json'."""
    parts = widget_id.split("-", 2)
    return parts[2] if len(parts) == 3 else widget_id


def edit_set(session: int, round_: int) -> dict:
    factor = round(1.0 + session / 100 + round_ / 100_000, 6)  # unique to (session, round)
    return {"version": 1, "edits": [{"kind": "scale_sense", "word": " bank", "sense": round_ % 16,
                                     "factor": factor}]}


def edits_in_url(query: str) -> dict | None:
    values = parse_qs(query).get("edits")
    if not values:
        return None
    raw = values[0]
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


async def user(port: int, name: int, until: float, stats: dict, rounds: int | None = None,
               generate_every: int = 0) -> None:
    """One session: open the Steer page, then apply its own edit sets until `until` (time.time()),
    or `rounds` of them when given (and click Generate every `generate_every` rounds)."""
    s = Session(port, name)
    try:
        await s.connect()
        first = await s.rerun()  # Home
        if not s.pages.get("steer"):
            raise RuntimeError(f"no steer page in {sorted(s.pages)}")
        steer = await s.rerun(s.pages["steer"], query=f"text={TEXT.replace(' ', '+')}")
        for seen in (first, steer):
            stats["errors"] += len(seen["exceptions"])
            stats["error_messages"] += seen["exceptions"] + seen["errors"]
        json_id, apply_id = s.widgets.get("steer:json"), s.widgets.get("steer:apply-json")
        if not json_id or not apply_id:
            raise RuntimeError(f"JSON box not found; widgets: {sorted(s.widgets)[:20]}")
        round_ = 0
        # `rounds` rounds when given; else until `until`, with one round at least however slow the start
        while (round_ < rounds) if rounds is not None else (round_ == 0 or time.time() < until):
            wanted = edit_set(name, round_)
            started = time.perf_counter()
            seen = await s.rerun(s.pages["steer"], query=s.query, widgets=[
                (json_id, "string_value", json.dumps(wanted)), (apply_id, "trigger_value", True)])
            stats["latencies_ms"].append((time.perf_counter() - started) * 1000)
            stats["rounds"] += 1
            if not seen["finished"] or seen["exceptions"] or seen["errors"]:
                stats["errors"] += 1
                stats["error_messages"] += seen["exceptions"] + seen["errors"] or ["run did not finish"]
            shown = edits_in_url(s.query)
            if shown is None:
                stats["missing"] += 1
            elif shown["edits"] != wanted["edits"]:
                stats["leaks"] += 1
            round_ += 1
            generate_id = s.widgets.get("steer:generate")
            if generate_every and round_ % generate_every == 0 and generate_id:
                started = time.perf_counter()
                seen = await s.rerun(s.pages["steer"], query=s.query,
                                     widgets=[(generate_id, "trigger_value", True)])
                stats["generation_ms"].append((time.perf_counter() - started) * 1000)
                if not seen["finished"] or seen["exceptions"] or seen["errors"]:
                    stats["errors"] += 1
                    stats["error_messages"] += (seen["exceptions"] + seen["errors"]
                                                or ["generation did not finish"])
    except Exception as err:  # a dropped connection or a broken page: count it, keep the others
        stats["errors"] += 1
        stats["error_messages"].append(f"session {name}: {type(err).__name__}: {err}"[:300])
    finally:
        await s.close()


async def phase(port: int, sessions: int, seconds: float, server: subprocess.Popen,
                rounds: int | None = None, generate_every: int = 0) -> dict:
    """`sessions` users at once for `seconds`, or for `rounds` rounds each when given."""
    stats = {"rounds": 0, "errors": 0, "leaks": 0, "missing": 0, "latencies_ms": [],
             "generation_ms": [], "error_messages": []}
    rss = []

    async def sample() -> None:
        while True:
            rss.append(rss_mb(server.pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    started = time.time()
    until = started + seconds
    await asyncio.gather(*(user(port, i, until, stats, rounds, generate_every)
                           for i in range(sessions)))
    elapsed = time.time() - started
    sampler.cancel()
    lat = sorted(stats.pop("latencies_ms"))
    gen = sorted(stats.pop("generation_ms"))
    return {"sessions": sessions, "seconds": round(elapsed, 1), **stats,
            "error_messages": stats["error_messages"][:10],
            "rounds_per_s": round(stats["rounds"] / elapsed, 2),
            "latency_ms": _quantiles(lat),
            "generations": len(gen), "generation_ms": _quantiles(gen),
            "server_rss_mb": {"peak": _r(max(rss, default=0)), "end": _r(rss[-1] if rss else None)}}


def _r(x):
    return None if x is None else round(x, 1)


def _quantiles(values: list[float]) -> dict:
    """p50 / p95 / max of sorted values (None when there are none)."""
    q = (statistics.quantiles(values, n=100, method="inclusive") if len(values) >= 2
         else values * 99 if values else [None] * 99)
    return {"p50": _r(q[49]), "p95": _r(q[94]), "max": _r(values[-1] if values else None)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the concurrent phase")
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="one session alone, first")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per session instead of --duration (a fixed amount of work)")
    p.add_argument("--smoke", action="store_true",
                   help="2 sessions, 3 rounds each, each generating after every round (tests)")
    p.add_argument("--generate-every", type=int, default=5, metavar="N",
                   help="click Generate (30 tokens) after every N edit rounds (0: never)")
    p.add_argument("--threads", default="1",
                   help="the server's BACKPACK_THREADS (default 1; 'auto': unset, the app picks)")
    p.add_argument("--out", default=None, help="JSON file (default bench/results/load_app.json; "
                                               "none in --smoke mode)")
    args = p.parse_args(argv)
    if args.smoke:
        args.sessions, args.rounds, args.baseline_seconds = 2, 3, 0.0
        args.generate_every = 1  # every session generates at least once
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be >= 1, got {args.rounds}")
    port = free_port()
    server = start_server(port, args.threads)
    try:
        async def run_all():
            warm = Session(port, -1)  # the first page load loads the model: not timed
            await warm.connect()
            await warm.rerun()
            await warm.close()
            start_rss = rss_mb(server.pid)
            baseline = (await phase(port, 1, args.baseline_seconds, server, None, args.generate_every)
                        if args.baseline_seconds > 0 else None)
            loaded = await phase(port, args.sessions, args.duration, server, args.rounds,
                                 args.generate_every)
            return start_rss, baseline, loaded

        start_rss, baseline, loaded = asyncio.run(run_all())
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    loaded["server_rss_mb"]["start"] = _r(start_rss)
    import streamlit

    result = {"bench": "load_app", "server": "streamlit run app/Home.py (127.0.0.1, shipped model, "
                                             f"BACKPACK_THREADS={args.threads})",
              "generate_every": args.generate_every,
              "streamlit": streamlit.__version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "baseline_one_session": baseline, "concurrent": loaded, "server_alive_at_end": alive}
    print(json.dumps(result))
    out = args.out or (None if args.smoke else str(REPO / "bench" / "results" / "load_app.json"))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    ok = alive and loaded["errors"] == 0 and loaded["leaks"] == 0 and loaded["rounds"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
