"""Pushers: apply device intent with Ansible (Linux hosts) or NETCONF (router TEPs)."""
