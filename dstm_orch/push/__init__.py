"""Keeping devices in step with the leases: the intent per device, the Ansible pusher
for Linux nodes and TEPs, the NETCONF pusher for router TEPs, and the orchestration
that selects devices and runs the pushers.
"""
