"""DNS managers: how the tunnel's DNS servers reach the system resolver.

Today only ``disabled`` exists; ``systemd-resolved`` and ``etc-resolv-conf`` come with the
headless client.
"""
