"""
The front proxy: one client connection that survives failover.  The
arbiter (L{spmgmt.arbiter}) runs in the same process and tells the router
where the active token is.
"""
