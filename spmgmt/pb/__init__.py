"""
The Perspective Broker layer every process kind shares: the guarded broker,
jelly restricted to plain data and the reply envelope (C{wire}), the
server side's login checks and factory (C{server}), and the reconnecting
client session (C{session}).  It imports no process package.
"""
