"""The `host` tier marker follows the test's place (tests/conftest.py)."""

from tests.conftest import _is_host_tier


def test_host_tier_is_the_host_and_deploy_folders_and_host_named_files():
    assert _is_host_tier("tests/host/test_xfrm_host.py::test_x")
    assert _is_host_tier("tests/deploy/test_kubelet.py::test_x")
    assert _is_host_tier("tests/demo/test_demo_operator_host.py::test_x")
    assert not _is_host_tier("tests/unit/test_svcnat.py::test_x")
    assert not _is_host_tier("tests/interop/test_harness.py::test_x")
    assert not _is_host_tier("tests/operator/test_hostile_clients.py::test_x")
