"""The sidecar's own Prometheus text exposition, read back by prometheus_client's parser."""

from __future__ import annotations

import pytest

from ipsec_mesh.agent.metrics import Metrics

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client (the reference parser) missing")


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_parses_and_counts(tmp_path):
    stat = tmp_path / "xfrm_stat"
    stat.write_text("XfrmInError                     \t0\nXfrmOutPolBlock                 \t7\n")
    m = Metrics(xfrm_stat=stat)
    m.ike_established.inc()
    m.ike_established.inc()
    m.failures.labels('no_proposal_chosen').inc()
    m.failures.labels('we"ird\\label\n').inc(3)
    m.ike_closed.labels("deleted").inc()
    got = samples(m.render(ike_sas=2, child_sas=5).decode())
    assert got[("ipsec_mesh_ike_sa_established_total", ())] == 2
    assert got[("ipsec_mesh_ike_sa_rekeys_total", ())] == 0
    assert got[("ipsec_mesh_failures_total", (("reason", "no_proposal_chosen"),))] == 1
    assert got[("ipsec_mesh_failures_total", (("reason", 'we"ird\\label\n'),))] == 3
    assert got[("ipsec_mesh_ike_sa_closed_total", (("reason", "deleted"),))] == 1
    assert got[("ipsec_mesh_ike_sas", ())] == 2 and got[("ipsec_mesh_child_sas", ())] == 5
    assert got[("ipsec_mesh_kernel_xfrm_errors_total", (("counter", "XfrmOutPolBlock"),))] == 7


def test_counters_refuse_to_go_down_and_wrong_labels():
    m = Metrics()
    with pytest.raises(ValueError):
        m.acquires.inc(-1)
    with pytest.raises(ValueError):
        m.failures.labels("a", "b")


def test_missing_xfrm_stat_is_an_empty_family(tmp_path):
    text = Metrics(xfrm_stat=tmp_path / "absent").render(0, 0).decode()
    assert "# TYPE ipsec_mesh_kernel_xfrm_errors counter" in text
    assert "ipsec_mesh_kernel_xfrm_errors_total{" not in text
