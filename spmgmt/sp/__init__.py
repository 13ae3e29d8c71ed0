"""
The SP agent: one service processor's management service.
"""
