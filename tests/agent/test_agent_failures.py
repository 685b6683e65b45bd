"""The agent's per-peer record of the last failed negotiation (read by `ipsec-mesh explain`)."""

from __future__ import annotations

from ipsec_mesh.agent import runtime
from ipsec_mesh.ike import IkeSaEstablished, NegotiationFailed, NotifyType

from .test_agent_loopback import make_agent


def test_failures_are_counted_per_peer_bounded_and_cleared_by_a_success():
    agent = make_agent("127.0.0.1", "127.0.0.2", initiate=False)
    agent._apply(NegotiationFailed("127.0.0.2", "no response to IKE_SA_INIT"))
    agent._apply(NegotiationFailed("127.0.0.2", "peer refused IKE_AUTH: AUTHENTICATION_FAILED",
                                   NotifyType.AUTHENTICATION_FAILED))
    record = agent.status()["last_failures"]["127.0.0.2"]
    assert record["reason"] == "authentication_failed" and record["count"] == 2
    assert record["message"] == "peer refused IKE_AUTH: AUTHENTICATION_FAILED" and record["at"] > 0
    agent._apply(NegotiationFailed("127.0.0.3", "x" * 1000))
    assert len(agent.status()["last_failures"]["127.0.0.3"]["message"]) == runtime.MAX_FAILURE_MESSAGE
    agent._apply(IkeSaEstablished("sa", "127.0.0.1", "127.0.0.2", "a", "b", "alg", True, False, False))
    assert "127.0.0.2" not in agent.status()["last_failures"]
    for n in range(runtime.MAX_FAILURE_RECORDS + 10):
        agent._apply(NegotiationFailed(f"10.0.{n // 256}.{n % 256}", "no response to IKE_SA_INIT"))
    failures = agent.status()["last_failures"]
    assert len(failures) == runtime.MAX_FAILURE_RECORDS
    assert "127.0.0.3" not in failures and f"10.0.1.{(runtime.MAX_FAILURE_RECORDS + 9) % 256}" in failures
