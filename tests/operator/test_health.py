"""Liveness answers from its own thread and fails when the event loop stops turning; sidecar resources from the chart."""

import asyncio
import http.client
import threading

import pytest

from ipsec_mesh_operator.model.settings import OperatorConfig
from ipsec_mesh_operator.server.admission import sidecar_container
from ipsec_mesh_operator.server.health import Liveness


def probe(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/livez")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


async def test_liveness_fails_while_the_event_loop_is_wedged_and_recovers():
    now = [0.0]
    liveness = Liveness(max_stall=30, clock=lambda: now[0])
    port = liveness.start("127.0.0.1", 0)
    try:
        await asyncio.sleep(0)  # the heartbeat stamps once
        assert await asyncio.to_thread(probe, port) == (200, "ok\n")
        # Wedge the loop (a blocking call) while time passes; the thread still answers, and says so.
        answered = []
        def wedged_probe():
            now[0] += 31
            answered.append(probe(port))
        thread = threading.Thread(target=wedged_probe)
        thread.start()
        thread.join(10)  # blocks the loop: no heartbeat can run meanwhile
        assert answered == [(503, "event loop stalled for 31s\n")]
        await asyncio.sleep(1.1)  # the loop turns again: next heartbeat
        assert await asyncio.to_thread(probe, port) == (200, "ok\n")
    finally:
        await liveness.stop()


def test_sidecar_resources_come_from_the_chart(monkeypatch):
    monkeypatch.setenv("IPSEC_MESH_SIDECAR_RESOURCES", '{"requests": {"cpu": "5m"}, "limits": {"memory": "64Mi"}}')
    config = OperatorConfig.from_env()
    assert sidecar_container(config, "")["resources"] == {"requests": {"cpu": "5m"}, "limits": {"memory": "64Mi"}}
    monkeypatch.setenv("IPSEC_MESH_SIDECAR_RESOURCES", '{"requests": "lots"}')
    with pytest.raises(ValueError):
        OperatorConfig.from_env()
    monkeypatch.setenv("IPSEC_MESH_SIDECAR_RESOURCES", "")
    assert sidecar_container(OperatorConfig.from_env(), "")["resources"]["limits"] == {"memory": "128Mi"}
