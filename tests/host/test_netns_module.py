"""The one netns/process helper module (ipsec_mesh_operator.netns) that the demo, the host
tests and the interop harness share (issue 12)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from ipsec_mesh_operator import netns
from tests.support.netns import A4, make_pair, missing_prerequisite

pytestmark = pytest.mark.skipif(bool(missing_prerequisite()), reason=missing_prerequisite() or "")


def test_a_socket_made_in_a_namespace_binds_to_that_namespace_s_address():
    pair = make_pair("nsmod")
    try:
        with netns.socket_in(pair.a, socket.AF_INET) as inside:
            inside.bind((A4, 0))  # A4 exists only inside pair.a
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, pytest.raises(OSError):
            outside.bind((A4, 0))
    finally:
        pair.close()


def _python(code: str) -> subprocess.Popen:
    # The child says "ready" once its signal disposition is set, so the test never races it.
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('ready', flush=True)\nimport time\ntime.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_stop_process_asks_first_and_kills_only_what_does_not_listen():
    polite = _python("")
    netns.stop_process(polite)
    assert polite.returncode == -signal.SIGTERM
    deaf = _python("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)")
    netns.stop_process(deaf, grace=0.5)
    assert deaf.returncode == -signal.SIGKILL
    netns.stop_process(deaf)  # already gone: nothing to do
    netns.stop_process(None)
