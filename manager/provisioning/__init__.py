"""Provisioning: desktops from template versions (placement, overlays, domains), power actions as
compare-and-swap, pool growth/shrink, resets and lease reclaim. See service.py, power.py, tasks.py."""
