"""Signing a certificate over HTTPS costs the operator at most 3.2 times what the signing itself costs.

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
# Measured 2026-12-02: 2.43-2.45 at load 4 (the API adds about 1.4 times the signing); a regression
# that, e.g., re-reads the trust bundle or re-verifies the CA per request would cross it.
MAX_API_OVERHEAD = 3.2


async def test_signing_over_https_costs_at_most_3_2_times_the_signing_itself():
    done, cpu, wall, direct = await measure_signing(REQUESTS, PODS, CONCURRENCY)
    assert done == REQUESTS
    ratio = cpu / direct
    print(f"signed {REQUESTS} certificates: {REQUESTS / cpu:.0f}/s per server CPU second over HTTPS, "
          f"{REQUESTS / direct:.0f}/s called directly (ratio {ratio:.2f}), {REQUESTS / wall:.0f}/s wall clock")
    assert ratio <= MAX_API_OVERHEAD, f"HTTPS signing costs {ratio:.2f} times the direct signing"
