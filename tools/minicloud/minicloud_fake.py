"""Nova's fake virt driver with node UUIDs that survive a restart of nova-compute.

``nova.virt.fake.FakeDriver`` makes a new random node UUID in every process, so a
nova-compute killed and started again (what vigil's failure tests do) hits "Duplicate
compute node record". Here the UUID of a node is derived from its name (uuid5), and the
minicloud tool writes the matching ``compute_id`` file into each compute's state_path
before the first start. Nova imports compute drivers only from the ``nova.virt`` package:
the tool copies this file there as ``nova/virt/minicloud_fake.py``.
"""

import uuid

from nova.virt import fake

NAMESPACE = uuid.UUID("5b3c1f0e-8d7a-4e6b-9c2d-1a0f3e4b5c6d")


def node_uuid(nodename):
    return str(uuid.uuid5(NAMESPACE, nodename))


class StableFakeDriver(fake.FakeDriver):
    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        if resources:
            resources["uuid"] = node_uuid(nodename)
        return resources

    def get_nodenames_by_uuid(self, refresh=False):
        return {node_uuid(n): n for n in self.get_available_nodes()}
