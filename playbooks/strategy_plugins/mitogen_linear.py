"""Mitogen's linear strategy, found through ansible.cfg's strategy_plugins.

Mitogen (requirements/controller.in) runs each host's modules in one long-lived
Python reached over the host's connection, instead of a new interpreter and a
new `docker exec` or SSH session per task. The demo runs with it
(playbooks/demo/run sets ANSIBLE_STRATEGY=mitogen_linear); elsewhere it is opt-in.

Without Mitogen's CPU pinning: on a controller with fewer than four cores it
keeps one core for its connection multiplexer and puts Ansible, its workers and
every command they start (the SeaweedFS build, wheel builds) on the other one.
On two cores a no-op site.yml on the demo took 57.0 and 54.3 s unpinned against
68.0 and 65.2 s pinned, alternating; the Go build ran on one core.
"""

import ansible_mitogen.affinity
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

# Mitogen looks the policy up at each use; the base class pins nothing.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

__all__ = ["StrategyModule"]
