"""Mitogen's linear strategy, found through ansible.cfg's strategy_plugins.

Mitogen (requirements/controller.in) runs each host's modules in one long-lived
Python reached over the host's connection, instead of a new interpreter and a
new `docker exec` or SSH session per task. The demo runs with it
(playbooks/demo/run sets ANSIBLE_STRATEGY=mitogen_linear); elsewhere it is opt-in.
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
