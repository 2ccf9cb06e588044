"""An ML2 mechanism driver for the minicloud's Neutron: every port binds, at once.

The minicloud has no L2 agent (its hypervisors are Nova's fake driver), so no real
mechanism driver would ever bind a port, and Neutron's own ``test`` driver lives in its
test tree. This one binds any port on any segment of the network as soon as a host is
named (``binding:host_id``, which nova-compute sets when it builds a server on the
port), with ``vif_type`` ``ovs`` and the status ``ACTIVE`` - what an agent would report
once the VM's interface is up. Unbound ports (no host) stay ``DOWN``.

Loaded by name (``[ml2] mechanism_drivers = minicloud``): the minicloud tool writes a
``*.dist-info`` with the ``neutron.ml2.mechanism_drivers`` entry point beside this
module's directory on neutron-api's PYTHONPATH.
"""

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindEverything(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: True, portbindings.OVS_HYBRID_PLUG: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
