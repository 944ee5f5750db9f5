"""The fidelity suite: one module per provider, each rule of the provider's documents with its source.

Each test drives a sandbox emulator through mdmq's own client and asserts the raw answer (status and reason,
as the provider documents it) together with mdmq's reading of it (outcome, advice). Source keys resolve
under docs/providers.md's Sources; rules the providers leave undocumented cite docs/providers.md §5.
"""
