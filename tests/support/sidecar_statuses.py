"""Real sidecar /status documents for diagnosis tests: two agents over loopback in known situations.

Each scenario starts real `Agent`s (no data plane) on 127.0.0.1 (pod A) and
127.0.0.2 (pod B), drives them into a state and returns both `Agent.status()`
documents as the status endpoint would serve them (through JSON).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from ipsec_mesh.agent.config import parse_agent_config
from ipsec_mesh.agent.dataplane import NullDataPlane
from ipsec_mesh.agent.peers import PeerSet
from ipsec_mesh.agent.runtime import Agent
from tests.support.loopback import wait_for

A_IP, B_IP, NOBODY_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
PORT = 30000 + os.getpid() % 10000
KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()


def _document(local: str, remote: str, *, psk: str = KEY_A, ike: list[str] | None = None,
              initiate: bool = False, retransmit_timeout: int = 2, enforcement: str = "require") -> dict:
    peering = {
        "name": "prod/web-db", "authentication": "psk", "psk": [{"id": "k1", "value": psk}],
        "enforcement": enforcement,
        "peers": [{"name": f"prod/{remote}", "addresses": [f"{remote}/32"],
                   "identities": [f"{remote.replace('.', '-')}.prod.pod.mesh.test"]}],
    }
    if ike:
        peering["proposals"] = {"ike": ike}
    return {
        "peerMap": {"version": 3, "local": {"identity": f"{local.replace('.', '-')}.prod.pod.mesh.test",
                                            "addresses": [local]},
                    "peerings": [peering]},
        "dataplane": "none",
        "initiate": [remote] if initiate else [],
        "ike": {"port": PORT, "nattPort": PORT + 1, "retransmitTimeout": retransmit_timeout, "retransmitTries": 0},
    }


def make_agent(local: str, remote: str, **options) -> Agent:
    config = parse_agent_config(_document(local, remote, **options), Path("."))
    return Agent(config, NullDataPlane(), PeerSet(config.peer_map, config.ike))


def served(agent: Agent) -> dict:
    """The document as GET /status serves it."""
    return json.loads(json.dumps(agent.status()))


async def _pair(a_options: dict, b_options: dict, reached) -> tuple[dict, dict]:
    a = make_agent(A_IP, a_options.pop("remote", B_IP), **a_options)
    b = make_agent(B_IP, b_options.pop("remote", A_IP), **b_options)
    await b.start()
    await a.start()
    try:
        await wait_for(lambda: reached(a, b))
        return served(a), served(b)
    finally:
        await a.stop()
        await b.stop()


async def established() -> tuple[dict, dict]:
    return await _pair({"initiate": True}, {}, lambda a, b: a.dataplane.outbound and b.dataplane.outbound)


async def idle(**options) -> tuple[dict, dict]:
    """Both ready, nothing sent between them yet."""
    return await _pair(options, options, lambda a, b: a.ready and b.ready)


async def auth_failed() -> tuple[dict, dict]:
    return await _pair({"initiate": True}, {"psk": KEY_B},
                       lambda a, b: B_IP in a.last_failures and A_IP in b.last_failures)


async def no_proposal_chosen() -> tuple[dict, dict]:
    return await _pair({"initiate": True, "ike": ["aes256gcm16-prfsha256-x25519"]},
                       {"ike": ["aes128gcm16-prfsha384-ecp384"]},
                       lambda a, b: B_IP in a.last_failures)


async def timed_out() -> tuple[dict, dict]:
    """A's IKE_SA_INIT goes unanswered: B's peer map does not list A, so B refuses it."""
    return await _pair({"initiate": True, "retransmit_timeout": 1}, {"remote": NOBODY_IP},
                       lambda a, b: B_IP in a.last_failures)


async def connecting() -> tuple[dict, dict]:
    """As above, but read while A still retransmits."""
    return await _pair({"initiate": True, "retransmit_timeout": 30}, {"remote": NOBODY_IP},
                       lambda a, b: a.endpoint.status() and b.endpoint.counters["refused_unknown_peer"])


async def all_scenarios() -> dict[str, tuple[dict, dict]]:
    return {
        "established": await established(),
        "idle": await idle(),
        "idle_prefer": await idle(enforcement="prefer"),
        "auth_failed": await auth_failed(),
        "no_proposal_chosen": await no_proposal_chosen(),
        "timed_out": await timed_out(),
        "connecting": await connecting(),
    }
