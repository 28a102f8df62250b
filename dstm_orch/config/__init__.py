"""Reading the domain from an Ansible inventory: hosts and variables, the published
schemas, the domain rules, and access to vaulted secrets.
"""
