"""
The peer channel: Perspective Broker between SPs (and, later, to the
arbiter), over mutual TLS with twisted.cred login.

C{_common} holds what both ends share (the guarded broker, jelly security,
the reply shape), C{server} the realm and avatar an SP exposes, C{client}
the reconnecting client an SP keeps to each peer.
"""
