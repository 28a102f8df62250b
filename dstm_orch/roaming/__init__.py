"""Roaming nodes: the VPN scenario of draft-ietf-ngtrans-dstm-08 (section 6).

A roaming node is outside its home domain; its IPv6 address depends on the visited
network, so the DSTM server cannot authenticate it by that address and "MUST
authenticate the DSTM host ... based on some shared secret" (section 6). The draft
leaves the client/server exchange open (sections 4.1 and 5); this package provides one:
signed JSON over HTTP on IPv6 (section 5: "The communication between the DSTM client
and the server MUST be in IPv6").

- :mod:`dstm_orch.roaming.protocol`: the wire format, the canonical form and its
  HMAC-SHA256 signature, shared by both ends;
- :mod:`dstm_orch.roaming.secrets`: which nodes roam and their secrets (ansible-vault);
- :mod:`dstm_orch.roaming.guard`: admission: signature, clock window, replay, rate limits;
- :mod:`dstm_orch.roaming.server`: ``dstm-orch serve``: allocate, renew or release, then
  push the TEP mapping for the node's current IPv6 address;
- :mod:`dstm_orch.roaming.httpd`: the HTTP(S) server on one IPv6 address;
- :mod:`dstm_orch.roaming.client` and :mod:`dstm_orch.roaming.node`: ``dstm-orch
  client``: the signed request, then the node's own IPv4 configuration;
- :mod:`dstm_orch.roaming.cli`: the click objects ``serve`` and ``client``.
"""

from __future__ import annotations
