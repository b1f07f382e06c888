"""Relations between proposals: the scene graph, the expression parser and the
ReCLIP-style resolver that meets them.

May import what ``methods`` may, and ``methods``' own interface modules.
"""
