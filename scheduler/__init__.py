"""The APScheduler process: leader lease, certificate watch, sweeps."""
