#!/usr/bin/env python3
"""Helpers of the load harness (benches/load/run.sh); standard library only.

    helpers.py slow-server PORT DELAY_MS        a keep-alive HTTP/1.1 server answering "ok" after DELAY_MS
    helpers.py idle-conns HOST PORT N HOLD_S    open N keep-alive connections, one request each, then hold them
    helpers.py h2-latency LOGFILE               percentiles from an h2load --log-file
    helpers.py oha-json FILE                    a RESULT line from oha's JSON output
    helpers.py report RAW.tsv RSS.tsv META.json RESULTS.md   print the markdown and append it to RESULTS.md
    helpers.py callgrind-top CALLGRIND.OUT [N]  self and inclusive cost per function (profile.sh)

Every server and client here talks to loopback only and stops by itself
(the server when run.sh kills it, the idle client after HOLD_S seconds).
"""

import asyncio
import json
import os
import statistics
import sys

# --------------------------------------------------------------------------
# slow candidate

CANDIDATES = {
    "nginx": "nginx, 1 worker, echo module's `echo_sleep`",
    "python": "Python asyncio (`helpers.py slow-server`)",
}


class SlowHttp(asyncio.Protocol):
    """Answers each request with 200 "ok" after a fixed delay (keep-alive)."""

    def __init__(self, delay):
        self.delay = delay
        self.buf = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            close = False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "connection" and "close" in value.lower():
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            loop.call_later(self.delay, self.answer, close)

    def answer(self, close):
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\nok"
        )
        if close:
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = None


def slow_server(port, delay_ms):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SlowHttp(delay_ms / 1000.0), "127.0.0.1", port, backlog=4096, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------
# idle keep-alive connections


def idle_conns(host, port, n, hold):
    async def one(sem, conns, errors):
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await asyncio.wait_for(reader.readexactly(length), 10)
                conns.append((reader, writer))
            except Exception as err:  # counted, not fatal: the count is the result
                errors.append(repr(err))

    async def main():
        sem = asyncio.Semaphore(256)
        conns, errors = [], []
        await asyncio.gather(*(one(sem, conns, errors) for _ in range(n)))
        # Let the connections settle into idleness before RSS is read: a
        # proxy may release an idle connection's buffers after a moment
        # (nginx at once, strangler after a second of quiet).
        await asyncio.sleep(3.0)
        # How many are still open then (a proxy may close idle ones).
        alive = sum(1 for r, _ in conns if not r.at_eof())
        print(f"READY ok={len(conns)} alive={alive} failed={len(errors)}"
              + (f" first_error={errors[0]}" if errors else ""), flush=True)
        await asyncio.sleep(hold)
        for _, w in conns:
            w.close()

    asyncio.run(main())


# --------------------------------------------------------------------------
# parsing tool outputs


def percentile(sorted_values, p):
    if not sorted_values:
        return 0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def h2_latency(path):
    """h2load --log-file: start(us since epoch) TAB status TAB duration(us)."""
    values, bad = [], 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            if not parts[1].startswith("2"):
                bad += 1
            values.append(int(parts[2]))
    values.sort()
    print("p50=%d p99=%d p999=%d status_errors=%d" % (
        percentile(values, 50), percentile(values, 99), percentile(values, 99.9), bad))


def oha_json(path):
    with open(path) as f:
        data = json.load(f)
    summary = data.get("summary", {})
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    total = sum(int(v) for v in codes.values())
    ok = sum(int(v) for k, v in codes.items() if str(k).startswith("2"))
    errors = sum(int(v) for v in data.get("errorDistribution", {}).values())
    us = lambda key: int(round(float(pct.get(key) or 0) * 1e6))
    print("RESULT requests=%d rps=%.1f p50=%d p99=%d p999=%d errors=%d" % (
        total, float(summary.get("requestsPerSec") or 0), us("p50"), us("p99"), us("p99.9"),
        errors + (total - ok)))


# --------------------------------------------------------------------------
# the report

TARGETS = ["direct", "strangler", "baseline", "nginx", "haproxy"]
SCENARIOS = [
    ("get", "small GET, keep-alive"),
    ("64k", "64 KB response"),
    ("close", "new connection per request"),
    ("upload", "1 MB upload (POST)"),
    ("routes1k", "1,000 routes in the table"),
    ("h2", "HTTP/2 (h2load)"),
    ("logs", "access log on (+ metrics)"),
    ("headers", "small GET, nginx and HAProxy adding strangler's headers"),
    ("shadow", "100% shadow / mirror to a 10x slower candidate"),
    ("rate-get", "small GET at a constant rate (oha, CO-corrected)"),
    ("rate-shadow", "shadow / mirror at a constant rate (oha, CO-corrected)"),
]
# Which scenario gives the no-shadow baseline of a shadow scenario, and the
# direct baseline of scenarios that have no direct run of their own.
SHADOW_BASE = {"shadow": "get", "rate-shadow": "rate-get"}
DIRECT_BASE = {"routes1k": "get", "logs": "get", "headers": "get", "shadow": "get", "rate-shadow": "rate-get"}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, suffix=""):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}{suffix}"
    return f"{v:,.{digits}f}{suffix}"


def ms(us):
    return None if us is None else us / 1000.0


def report(raw_path, rss_path, meta_path, results_path):
    rows = []
    with open(raw_path) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if not line.strip():
                continue
            rec = dict(zip(header, line.rstrip("\n").split("\t")))
            for key in ("rps", "p50", "p99", "p999", "cpu_s", "requests", "errors", "sys_s"):
                try:
                    rec[key] = float(rec[key])
                except (KeyError, ValueError):
                    rec[key] = None
            rec["round"] = int(rec["round"])
            rows.append(rec)
    with open(meta_path) as f:
        meta = json.load(f)
    rss = []
    if os.path.exists(rss_path):
        with open(rss_path) as f:
            header = f.readline().rstrip("\n").split("\t")
            rss = [dict(zip(header, l.rstrip("\n").split("\t"))) for l in f if l.strip()]

    by = {}
    for r in rows:
        by.setdefault((r["scenario"], r["target"]), []).append(r)

    def cell(scn, tgt, key):
        return med([r[key] for r in by.get((scn, tgt), [])])

    def per_round(scn, tgt):
        return {r["round"]: r for r in by.get((scn, tgt), [])}

    def ratio(scn_a, tgt_a, scn_b, tgt_b, key, op):
        return med(ratios(scn_a, tgt_a, scn_b, tgt_b, key, op))

    def ratios(scn_a, tgt_a, scn_b, tgt_b, key, op):
        """Per round, in round order."""
        a, b = per_round(scn_a, tgt_a), per_round(scn_b, tgt_b)
        vals = []
        for rnd in sorted(set(a) & set(b)):
            x, y = a[rnd][key], b[rnd][key]
            if x is None or y is None:
                continue
            if op == "div" and y:
                vals.append(x / y)
            elif op == "sub":
                vals.append(x - y)
        return vals

    out = []
    w = out.append
    w(f"### {meta['date']} — {meta['workers']} worker(s), {meta['rounds']} round(s) of {meta['duration']} s\n")
    w(f"- machine: {meta['nproc']} cores ({meta['cpu']}), kernel {meta['kernel']}, {meta['mem']}")
    w(f"- load average (1/5/15 min): before `{meta['load_before']}`, after `{meta['load_after']}` "
      "(the machine is shared: other work competes for the same cores)")
    w(f"- strangler `{meta['commit']}`; {meta['tools']}")
    w(f"- command: `{meta['command']}`")
    w(f"- wrk `-t1 -c{meta['conns']}` (upload `-c{meta['upload_conns']}`), h2load `-t1 -c{meta['h2_conns']} "
      f"-m{meta['h2_streams']}`; upstream: nginx, 1 worker, `return 200 \"ok\"` and a 64 KB file; "
      f"slow candidate: {CANDIDATES[meta.get('candidate', 'python')]}, +{meta['shadow_delay_ms']} ms per answer, "
      f"nice {meta.get('candidate_nice', 0)}")
    if meta.get("rate"):
        w(f"- constant rate: oha `-q {meta['rate']} -c{meta['conns']} --latency-correction` "
          "(coordinated omission corrected)")
    else:
        w("- no constant-rate tool (wrk2/oha) was found: all latencies are closed-loop wrk figures, "
          "which understate tail latency under overload (coordinated omission)")
    w("- figures are medians over rounds; ratios are medians of the per-round ratios (targets are "
      "interleaved round-robin, so each round compares runs made minutes apart at most)")
    w("")
    w("| scenario | target | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | of which kernel | errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for scn, title in SCENARIOS:
        for tgt in TARGETS:
            if (scn, tgt) not in by:
                continue
            errs = sum(r["errors"] or 0 for r in by[(scn, tgt)])
            cpu = None
            vals = [r["cpu_s"] / r["requests"] * 1e6 for r in by[(scn, tgt)]
                    if r["cpu_s"] is not None and r["requests"]]
            cpu = med(vals)
            kernel = med([r["sys_s"] / r["requests"] * 1e6 for r in by[(scn, tgt)]
                          if r["sys_s"] is not None and r["requests"]])
            name = tgt
            variant = by[(scn, tgt)][0].get("instance", tgt)
            if variant and variant != tgt:
                name = f"{tgt} ({variant})"
            w(f"| {title} | {name} | {fmt(cell(scn, tgt, 'rps'))} | {fmt(ms(cell(scn, tgt, 'p50')), 2)} | "
              f"{fmt(ms(cell(scn, tgt, 'p99')), 2)} | {fmt(ms(cell(scn, tgt, 'p999')), 2)} | {fmt(cpu, 1)} | {fmt(kernel, 1)} | {errs:.0f} |")
    w("")
    w("CPU µs/req is the proxy's own utime+stime (all its processes and threads) over the run divided by "
      "the requests completed; for `direct` it is the upstream nginx's. With one worker a proxy can use at "
      "most about 1 s of CPU per second of run. \"of which kernel\" is the stime part: system calls, "
      "and the loopback TCP stack that runs in the sender's context.")
    w("")
    w("**Ratios** (strangler / other, throughput; added p99 = target p99 − direct p99, ms):")
    w("")
    w("| scenario | strangler/nginx req/s | strangler/haproxy req/s | added p99 strangler | added p99 nginx | added p99 haproxy |")
    w("|---|---:|---:|---:|---:|---:|")
    for scn, title in SCENARIOS:
        if not any((scn, t) in by for t in TARGETS):
            continue
        if scn in SHADOW_BASE:
            continue
        base = DIRECT_BASE.get(scn, scn)
        r_n = ratio(scn, "strangler", scn, "nginx", "rps", "div")
        r_h = ratio(scn, "strangler", scn, "haproxy", "rps", "div")
        added = [ms(ratio(scn, t, base, "direct", "p99", "sub")) for t in ("strangler", "nginx", "haproxy")]
        w(f"| {title} | {fmt(r_n, 2, '×')} | {fmt(r_h, 2, '×')} | "
          + " | ".join(fmt(a, 2) for a in added) + " |")
    base_rows = [(scn, title) for scn, title in SCENARIOS if (scn, "baseline") in by and (scn, "strangler") in by]
    if base_rows:
        w("")
        w(f"**Against the baseline** (`{meta.get('baseline', '')}`, same rounds; strangler / baseline):")
        w("")
        w("| scenario | req/s | CPU µs/req | p99 |")
        w("|---|---:|---:|---:|")
        for scn, title in base_rows:
            def cpu_per_req(tgt):
                return {r["round"]: r["cpu_s"] / r["requests"] for r in by[(scn, tgt)]
                        if r["cpu_s"] is not None and r["requests"]}
            a, b = cpu_per_req("strangler"), cpu_per_req("baseline")
            cpu = med([a[k] / b[k] for k in sorted(set(a) & set(b)) if b[k]])
            w(f"| {title} | {fmt(ratio(scn, 'strangler', scn, 'baseline', 'rps', 'div'), 2, '×')} | "
              f"{fmt(cpu, 2, '×')} | {fmt(ratio(scn, 'strangler', scn, 'baseline', 'p99', 'div'), 2, '×')} |")
    shadow_rows = [(scn, title) for scn, title in SCENARIOS if scn in SHADOW_BASE and any((scn, t) in by for t in TARGETS)]
    if shadow_rows:
        w("")
        w("**Shadowing** (same target with 100% shadow / `mirror` vs without, same round):")
        w("")
        w("| scenario | target | p99 with / without | req/s with / without | p99 with / without, each round |")
        w("|---|---|---:|---:|---|")
        for scn, title in shadow_rows:
            for tgt in TARGETS:
                if (scn, tgt) not in by:
                    continue
                base = SHADOW_BASE[scn]
                rounds = ", ".join(f"{v:.2f}" for v in ratios(scn, tgt, base, tgt, 'p99', 'div'))
                w(f"| {title} | {tgt} | {fmt(ratio(scn, tgt, base, tgt, 'p99', 'div'), 2, '×')} | "
                  f"{fmt(ratio(scn, tgt, base, tgt, 'rps', 'div'), 2, '×')} | {rounds} |")
        drops = {}
        shadow_tsv = os.path.join(os.path.dirname(raw_path), "shadow.tsv")
        if os.path.exists(shadow_tsv):
            with open(shadow_tsv) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4 and float(parts[3]) > 0:
                        drops.setdefault(parts[1], []).append(float(parts[2]) / float(parts[3]))
        if drops:
            w("")
            w("Mirrors strangler dropped during each run (queue full or all `concurrency` slots busy; "
              "median over rounds): " + ", ".join(
                  f"{dict(SCENARIOS).get(scn, scn)}: {100.0 * med(v):.1f}%" for scn, v in sorted(drops.items())) + ".")
        outcomes = dict(kv.split("=") for kv in meta.get("shadow_outcomes", "").split() if "=" in kv)
        if outcomes:
            total = sum(int(v) for v in outcomes.values())
            dropped = int(outcomes.get("dropped", 0))
            listed = ", ".join(f"{k} {int(v):,}" for k, v in sorted(outcomes.items()))
            w("")
            w(f"strangler's mirrors over the whole run (`strangler_shadow_requests_total`, warm-up included): "
              f"{listed}; {100.0 * dropped / max(1, total):.1f}% dropped.")
    if rss:
        w("")
        w("**Memory** (peak RSS = VmHWM over the whole run, before the idle test; nginx: master + workers "
          "summed; idle: VmRSS with the given idle keep-alive connections open, each after one request):")
        w("")
        w("| instance | peak RSS MB | RSS before idle MB | RSS with idle conns MB | idle conns open | KB per idle conn |")
        w("|---|---:|---:|---:|---:|---:|")
        for r in rss:
            def f_mb(key):
                try:
                    return fmt(float(r[key]) / 1024.0, 1)
                except (KeyError, ValueError):
                    return "–"
            try:
                per = (float(r["rss_idle_kb"]) - float(r["rss_before_kb"])) / max(1.0, float(r["idle_open"]))
                per = fmt(per, 1)
            except (KeyError, ValueError):
                per = "–"
            w(f"| {r['instance']} | {f_mb('hwm_kb')} | {f_mb('rss_before_kb')} | {f_mb('rss_idle_kb')} | "
              f"{r.get('idle_open', '–')} | {per} |")
    w("")
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    append_results(results_path, text)


HEADING = "## Load: strangler vs nginx vs HAProxy"


def append_results(path, text):
    """Adds the run at the end of the load section, creating the file or the
    section if absent, and leaves every other section as it was."""
    intro = (HEADING + "\n\n"
             "Made by `benches/load/run.sh` (see `benches/load/README.md`): wrk, h2load and oha on "
             "loopback against one nginx upstream, straight and through each proxy, interleaved. "
             "Newest run last.\n\n")
    if os.path.exists(path):
        with open(path) as f:
            content = f.read()
    else:
        content = "# Benchmark results\n\nMeasured figures and the commands that made them.\n\n"
    lines = content.split("\n")
    try:
        start = next(i for i, l in enumerate(lines) if l.strip() == HEADING)
    except StopIteration:
        if not content.endswith("\n"):
            content += "\n"
        if not content.endswith("\n\n"):
            content += "\n"
        content += intro + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before = "\n".join(lines[:end]).rstrip("\n") + "\n\n"
        after = "\n".join(lines[end:])
        content = before + text + ("\n" + after if after else "")
    with open(path, "w") as f:
        f.write(content)


# --------------------------------------------------------------------------
# callgrind summary (callgrind_annotate here charges nearly everything to
# `clone` for a multi-threaded tokio program; this reads the raw file)


def callgrind_top(path, n=30):
    import collections
    import re
    names = {"fn": {}, "fl": {}}

    def resolve(kind, val):
        m = re.match(r"\((\d+)\)\s*(.*)", val)
        if not m:
            return val
        i, name = m.groups()
        if name:
            names[kind][i] = name
        return names[kind].get(i, "?")

    own = collections.Counter()
    edges = collections.Counter()
    where = {}
    fn = fl = cfn = None
    in_call = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line[0] == "#":
                continue
            if line.startswith(("fl=", "fi=", "fe=")):
                value = resolve("fl", line[3:])
                if line.startswith("fl="):
                    fl = value
                continue
            if line.startswith("fn="):
                fn = resolve("fn", line[3:])
                where.setdefault(fn, fl)
                continue
            if line.startswith("cfn="):
                cfn = resolve("fn", line[4:])
                continue
            if line.startswith(("cfi=", "cfl=")):
                resolve("fl", line[4:])
                continue
            if line.startswith("calls="):
                in_call = True
                continue
            if line[0] in "0123456789+-*":
                parts = line.split()
                if len(parts) >= 2:
                    cost = int(parts[1])
                    if in_call:
                        if cfn != fn:
                            edges[(fn, cfn)] += cost
                    else:
                        own[fn] += cost
                in_call = False
    total = sum(own.values()) or 1
    inclusive = collections.Counter(own)
    for (caller, _), cost in edges.items():
        inclusive[caller] += cost
    print(f"total instructions: {total:,}")
    print(f"\n== self cost, top {n}")
    for name, cost in own.most_common(n):
        print(f"{cost / total * 100:6.2f}%  {name}  [{where.get(name)}]")
    print(f"\n== inclusive cost of strangler's own functions, top {n}")
    shown = 0
    for name, cost in inclusive.most_common():
        if "strangler::" in name and not name.startswith("core::ptr::drop_in_place"):
            print(f"{cost / total * 100:6.2f}%  (self {own[name] / total * 100:5.2f}%)  {name}  [{where.get(name)}]")
            shown += 1
            if shown == n:
                break


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "slow-server":
        slow_server(int(args[0]), float(args[1]))
    elif cmd == "idle-conns":
        idle_conns(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "h2-latency":
        h2_latency(args[0])
    elif cmd == "oha-json":
        oha_json(args[0])
    elif cmd == "report":
        report(*args[:4])
    elif cmd == "callgrind-top":
        callgrind_top(args[0], int(args[1]) if len(args) > 1 else 30)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
