"""IP address management: a pool's address space, the allocation strategies that only
propose candidates, and the allocation engine that asks the lease store to accept them.
"""
