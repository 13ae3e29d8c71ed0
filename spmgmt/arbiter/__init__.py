"""
The arbiter: grants the active token.  Embedded in the proxy process, the
one place that must know where to route, so routing and granting can never
disagree.
"""
