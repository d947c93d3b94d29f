"""The bootstrap file (``kubegate serve --bootstrap``), loaded within bounds: a bad one starts the data plane
unready with one log line, never a crash or a traceback.

Aspects: a gzip bomb stops at 64 MiB decompressed; a glob the model accepts but the matcher refuses, and
JSON or YAML nested deeper than the parsers go, start unready; YAML aliases are refused (a few kilobytes
of them expand to gigabytes); the event-built YAML loader gives what ``yaml.safe_load`` gives for a
plain document and refuses tags, merge keys and non-scalar keys.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import pytest
import yaml

from kubegate.compiler.table import TableTooLarge, WireLimits
from kubegate.dataplane.routesfile import RoutesFileError, load_bootstrap, load_yaml
from tests.gateway import GatewayProcess, route, table
from tests.upstreams import wait_for


def _starts_unready(tmp: Path, boot: Path, message: str) -> str:
    gw = GatewayProcess(tmp, bootstrap=boot)
    try:
        wait_for(lambda: "bootstrap table not loaded" in gw.log())
        assert httpx.get(gw.admin + "/ready").status_code == 503
        assert gw.proc.poll() is None
        log = gw.log()
        assert message in log, log[-2000:]
        assert "Traceback" not in log, log[-3000:]
        return log
    finally:
        gw.stop()


def test_gzip_bomb_stops_at_64_mib(tmp_path: Path) -> None:
    """Decompression stops at the limit: the stream's missing end (its last 8 bytes, the checksum and
    size) is never reached, which a decompression of the whole file would report as corrupt data."""
    boot = tmp_path / "bomb.json.gz"
    boot.write_bytes(gzip.compress(b" " * (65 * 1024 * 1024), compresslevel=9)[:-8])
    assert boot.stat().st_size < 200_000
    _starts_unready(tmp_path, boot, "decompresses to more than 67108864 bytes")


def test_glob_refused_by_the_matcher_starts_unready(tmp_path: Path) -> None:
    boot = tmp_path / "glob.json"
    boot.write_text(json.dumps(table(route("g", "http://127.0.0.1:1", path="/a/**/b", ptype="Glob"))))
    _starts_unready(tmp_path, boot, "bootstrap table not loaded")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.json", b'{"routes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        ("deep.yaml", b"routes: " + b"[" * 500 + b"]" * 500, "nested more than 64 levels"),
    ],
)
def test_deep_documents_start_unready(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    boot = tmp_path / name
    boot.write_bytes(content)
    _starts_unready(tmp_path, boot, message)


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    """A table that is valid once its aliases are expanded: it used to be served."""
    boot = tmp_path / "aliases.yaml"
    boot.write_text(
        "version: v1\n"
        "routes:\n"
        "- {id: a/one, namespace: a, name: one, backends: &b [{name: x, endpoints: [{host: h, port: 1}]}]}\n"
        "- {id: a/two, namespace: a, name: two, backends: *b}\n"
    )
    _starts_unready(tmp_path, boot, "aliases are not allowed")


def test_billion_laughs_is_refused_without_expanding(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    boot = tmp_path / "laughs.yaml"
    boot.write_text("\n".join(lines) + "\n")
    with pytest.raises(RoutesFileError, match="aliases are not allowed"):
        load_bootstrap(boot)


def test_yaml_values_are_bounded() -> None:
    with pytest.raises(TableTooLarge):
        load_yaml(b"[" + b"1, " * 20 + b"1]", WireLimits(max_values=10))


@pytest.mark.parametrize(
    "doc",
    [
        b"version: v1\nroutes:\n- id: a/b\n  backends: [{name: x, weight: 3}]\n  created: '2024-01-01'\n",
        b"a: [1, 1.5, true, null, ~, 'x', \"y\", 0x1f, 2024-01-01]\nb: {c: {d: []}}\n",
        b"",
        b"plain",
    ],
)
def test_yaml_loader_gives_what_safe_load_gives(doc: bytes) -> None:
    assert load_yaml(doc) == yaml.safe_load(doc)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"a: !!python/object:os.system x", "is not allowed"),
        (b"<<: {a: 1}", "is not allowed"),
        (b"a: !!set {x: null}", "is not allowed"),
        (b"{[1]: 2}", "must be a scalar"),
        (b"a: 1\n---\nb: 2\n", "more than one document"),
    ],
)
def test_yaml_loader_refuses(doc: bytes, message: str) -> None:
    with pytest.raises(yaml.YAMLError, match=message):
        load_yaml(doc)
