"""
spmgmt: one management address for a system of several service processors.
"""
