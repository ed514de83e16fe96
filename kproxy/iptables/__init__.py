"""iptables mode: plan (pure) -> restore text -> backend (iptables-restore or libiptc)."""
