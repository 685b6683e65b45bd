"""Signing a certificate over HTTPS costs the operator a bounded multiple of what the signing itself costs.

Both are CPU time of the operator's process, measured side by side in one run: the load's
600 requests over kept-alive HTTPS (token check, JSON, the response with chain and trust
bundle), then the same CSRs through `OperatorRuntime.sign` called directly. CPU time, not
wall time: this machine is shared with other test runs. What the API adds on top of the
signing is what this bounds; bench/bench_mesh_api_signing.py prints the absolute rates.
"""

from tests.support.signing_load import measure_signing

REQUESTS = 600
PODS = 32
CONCURRENCY = 8
# Measured 2026-12-02: 2.43-2.45 at load 4, 2.58-3.69 beside the VM tier (the server's event loop
# wakes for fewer requests at a time when the load generator is short of CPU). A regression that
# adds the signing's cost again per request (e.g. re-verifying the CA chain) moves the quiet 2.4 to
# 3.4+ and the loaded tail past this bound; the old test's 500/s was the same 4x margin, absolute.
MAX_API_OVERHEAD = 6.0


async def test_signing_over_https_costs_a_bounded_multiple_of_the_signing_itself():
    done, cpu, wall, direct = await measure_signing(REQUESTS, PODS, CONCURRENCY)
    assert done == REQUESTS
    ratio = cpu / direct
    print(f"signed {REQUESTS} certificates: {REQUESTS / cpu:.0f}/s per server CPU second over HTTPS, "
          f"{REQUESTS / direct:.0f}/s called directly (ratio {ratio:.2f}), {REQUESTS / wall:.0f}/s wall clock")
    assert ratio <= MAX_API_OVERHEAD, f"HTTPS signing costs {ratio:.2f} times the direct signing"
