"""The services the actors call: each takes its parts as arguments and owns one job's transaction."""
