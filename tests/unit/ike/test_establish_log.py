"""One info line per IKE SA established by IKE_AUTH, naming its CHILD_SA; later CHILD_SAs log their own."""

from __future__ import annotations

import logging
import re

from ipsec_mesh.ike import single_peer_lookup
from tests.support.ikesim import Network, child_config, psk_config

A, B = "10.0.0.1", "10.0.0.2"


def _pair(child: bool):
    """A initiates to B, with its CHILD_SA in IKE_AUTH or without one (childless)."""
    net = Network()
    a_cfg = psk_config("to-b", "a.mesh.test", "b.mesh.test", child_config(A, B), dpd_delay=0)
    b_cfg = psk_config("to-a", "b.mesh.test", "a.mesh.test", child_config(B, A), dpd_delay=0)
    a = net.add("a", A, single_peer_lookup(a_cfg))
    b = net.add("b", B, single_peer_lookup(b_cfg))
    a.endpoint.initiate(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0] if child else None)
    return net, a, b, a_cfg


def _info_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name.startswith("ipsec_mesh")]


def test_ike_auth_logs_one_line_per_side_with_the_child(caplog):
    caplog.set_level(logging.INFO, logger="ipsec_mesh")
    net, a, b, _ = _pair(child=True)
    net.settle()
    lines = _info_lines(caplog)
    established = [line for line in lines if " established with " in line]
    assert len(established) == 2, lines
    assert not [line for line in lines if line.startswith("CHILD_SA")], lines
    (a_in,), (b_in,) = a.inbound, b.inbound
    responder = next(line for line in established if "as responder" in line)
    initiator = next(line for line in established if "as initiator" in line)
    assert re.search(rf"; CHILD_SA mesh {b_in:08x}_i {a_in:08x}_o: aes\w+", responder), responder
    assert re.search(rf"; CHILD_SA mesh {a_in:08x}_i {b_in:08x}_o: aes\w+", initiator), initiator
    assert "a.mesh.test" in responder and "b.mesh.test" in initiator


def test_childless_ike_sa_and_later_child_log_separately(caplog):
    caplog.set_level(logging.INFO, logger="ipsec_mesh")
    net, a, b, a_cfg = _pair(child=False)
    net.settle()
    established = [line for line in _info_lines(caplog) if " established with " in line]
    assert len(established) == 2 and not any("CHILD_SA" in line for line in established), established
    assert not a.inbound and not b.inbound
    caplog.clear()
    a.endpoint.acquire(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])  # CREATE_CHILD_SA
    net.settle()
    assert len(a.inbound) == 1 and len(b.inbound) == 1
    child_lines = [line for line in _info_lines(caplog) if line.startswith("CHILD_SA mesh")]
    assert len(child_lines) == 2, _info_lines(caplog)


def test_an_acquire_while_no_child_sa_of_its_name_sends_brings_a_new_one():
    net, a, b, a_cfg = _pair(child=True)
    net.settle()
    (sa,) = a.established
    (child,) = sa.children.values()
    # As if its outbound half were gone (retired, or lost by the kernel): the kernel asks again.
    child.outbound_retired = True
    a.endpoint.acquire(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    net.settle()
    assert len(sa.children) == 2 and len(a.inbound) == 2 and len(b.inbound) == 2
    # While a CHILD_SA of that name sends, an ACQUIRE changes nothing.
    a.endpoint.acquire(a_cfg, (A, 500), (B, 500), net.now, a_cfg.children[0])
    net.settle()
    assert len(sa.children) == 2
