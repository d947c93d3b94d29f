"""`helm test`: does the release work? Run by the chart's test Pod (templates/tests/release-test.yaml).

Standard library only (it runs on the data-plane image's Python). The pods are found through the DNS of
the two headless Services: the operator's metrics Service ($KUBEGATE_OPERATOR, host:port) and the data
plane's admin Service ($KUBEGATE_DATAPLANE, host:port, which publishes pods that are not ready too). The
checks, retried every 2 seconds until $KUBEGATE_TEST_TIMEOUT seconds have passed:

- exactly one operator pod leads (``kubegate_operator_leader 1``);
- the leader counts as many data-plane replicas as DNS finds (``kubegate_operator_replicas``) and all of
  them serve its current table (``kubegate_operator_replicas_in_sync``);
- every data-plane pod answers ``/ready`` with 200, and all serve the same table (the ``hash`` of
  ``kubegate_table_info``).

Prints what it found, or why it failed; exit status 0 or 1.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Pod addresses are reached directly: no proxy from the environment applies.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def addresses(target: str) -> tuple[list[str], int]:
    """The pod addresses behind a headless Service's name (``host:port``), and the port."""
    host, _, port = target.rpartition(":")
    found = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in found}), int(port)


def get(address: str, port: int, path: str) -> tuple[int, str]:
    host = f"[{address}]" if ":" in address else address
    try:
        with OPENER.open(f"http://{host}:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in Prometheus' text format: (labels, value)."""
    found = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name:
            found.append((dict(LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return found


def value(text: str, name: str) -> float | None:
    found = samples(text, name)
    return found[0][1] if found else None


def check(operator: str, dataplane: str) -> str | None:
    """None when the release works, else what is wrong."""
    pods, port = addresses(operator)
    leaders = []
    for pod in pods:
        status, text = get(pod, port, "/metrics")
        if status != 200:
            return f"operator pod {pod}: /metrics answered {status}"
        if value(text, "kubegate_operator_leader") == 1:
            leaders.append((pod, text))
    if len(leaders) != 1:
        return f"{len(leaders)} of the {len(pods)} operator pods ({', '.join(pods)}) lead, not exactly one"
    leader, text = leaders[0]
    replicas = value(text, "kubegate_operator_replicas")
    in_sync = value(text, "kubegate_operator_replicas_in_sync")
    if replicas is None or in_sync is None:
        return f"the leader ({leader}) exports no kubegate_operator_replicas(_in_sync)"
    dataplanes, admin_port = addresses(dataplane)
    if replicas != len(dataplanes):
        return f"the leader ({leader}) counts {replicas:g} data-plane replicas, DNS has {len(dataplanes)}"
    if in_sync != replicas:
        return f"{in_sync:g} of {replicas:g} data-plane replicas serve the leader's current table"
    tables = {}
    for pod in dataplanes:
        status, body = get(pod, admin_port, "/ready")
        if status != 200:
            return f"data-plane pod {pod}: /ready answered {status} {body.strip()}"
        status, text = get(pod, admin_port, "/metrics")
        info = samples(text, "kubegate_table_info") if status == 200 else []
        if not info or info[0][0].get("hash", "None") == "None":
            return f"data-plane pod {pod}: no kubegate_table_info with a table's hash (/metrics: {status})"
        tables[pod] = info[0][0]["hash"]
    if len(set(tables.values())) != 1:
        return f"the data-plane pods serve different tables: {tables}"
    print(
        f"ok: operator {leader} leads ({len(pods)} operator pods); {len(dataplanes)} data-plane pods "
        f"ready, all serving table {tables[dataplanes[0]]}"
    )
    return None


def main() -> int:
    operator, dataplane = os.environ["KUBEGATE_OPERATOR"], os.environ["KUBEGATE_DATAPLANE"]
    deadline = time.monotonic() + float(os.environ.get("KUBEGATE_TEST_TIMEOUT", "120"))
    while True:
        try:
            problem = check(operator, dataplane)
        except OSError as error:  # DNS without an answer yet, a refused connection, a timeout
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            problem = f"{type(reason).__name__}: {reason}"
        if problem is None:
            return 0
        if time.monotonic() >= deadline:
            print(f"FAILED: {problem}", flush=True)
            return 1
        print(f"waiting: {problem}", flush=True)
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
