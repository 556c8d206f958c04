"""Example third-party tunplug plugin: pcap writer stage and pcap replay TUN backend."""
