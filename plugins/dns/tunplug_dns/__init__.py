"""DNS managers: how the tunnel's DNS servers reach the system resolver.

Registered by :mod:`tunplug_dns.plugin` and chosen with ``--dns-control`` /
``TUNPLUG_DNS_CONTROL`` (see ``docs/dns.md``):

- ``disabled`` (:class:`~tunplug_dns.plugin.DisabledDns`): leaves the resolver alone;
- ``etc-resolv-conf`` (:class:`~tunplug_dns.resolv_conf.EtcResolvConf`): rewrites
  ``/etc/resolv.conf``, no split DNS; for systems without systemd-resolved;
- ``systemd-resolved`` (:class:`~tunplug_dns.resolved.SystemdResolved`): per-link servers and
  domains through ``resolvectl``, split or full tunnel;
- ``nrpt`` (:class:`~tunplug_dns.nrpt.WindowsNrpt`): Windows NRPT registry rules (never run on
  real Windows yet).

Every manager records what it must undo in its ``state_dir`` before changing anything, so
``activate`` first repairs what a crashed run left behind and ``deactivate`` is idempotent.
"""
