"""An in-memory stand-in for the few KubeClient calls the operator runtime makes."""

import copy
import itertools

from ipsec_mesh_operator.controller.kube import Conflict, decode_secret_data, encode_secret_data, resource_version


class MemoryKube:
    """The few KubeClient calls the runtime makes, over dicts (with the API server's resourceVersions)."""

    def __init__(self):
        self.secrets = {}
        self.configmaps = {}
        self._versions = itertools.count(1)

    async def read_secret(self, namespace, name):
        return copy.deepcopy(self.secrets.get((namespace, name)))

    async def create_secret(self, namespace, name, data, labels=None, owner=None):
        if (namespace, name) in self.secrets:
            raise Conflict(409, "exists")
        meta = {"name": name, "namespace": namespace, "labels": labels or {},
                "resourceVersion": str(next(self._versions))}
        if owner:
            meta["ownerReferences"] = [owner]
        self.secrets[(namespace, name)] = {"metadata": meta, "data": encode_secret_data(data)}
        return copy.deepcopy(self.secrets[(namespace, name)])

    async def update_secret_data(self, namespace, name, data, expected=None):
        secret = self.secrets.get((namespace, name))
        if expected is not None and (secret is None or resource_version(secret) != resource_version(expected)):
            raise Conflict(409, "changed since read")
        secret["data"] = encode_secret_data(data)
        secret["metadata"]["resourceVersion"] = str(next(self._versions))

    async def read_config_data(self, kind, namespace, name, key):
        if kind == "Secret":
            secret = self.secrets.get((namespace, name))
            return None if secret is None else decode_secret_data(secret).get(key)
        value = self.configmaps.get((namespace, name), {}).get(key)
        return None if value is None else value.encode()

    async def get(self, path):
        return None

    async def close(self):
        pass
