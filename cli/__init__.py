"""The `mdmq` command."""
