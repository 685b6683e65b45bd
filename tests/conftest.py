"""Test-suite wide configuration.

`vm.plugin` (tests/vm/plugin.py) runs tests marked `@pytest.mark.vm` inside a VM whose
kernel has ESP, booted once per session; see tests/vm/README.md.
"""

pytest_plugins = ["tests.vm.plugin"]
