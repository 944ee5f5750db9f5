"""The fidelity suite: one module per provider, each rule of the provider's documents with its source.

Each test drives a sandbox emulator through mdmq's own client and asserts the raw answer (status and reason,
as the provider documents it) together with mdmq's reading of it (outcome, advice). Source keys resolve
under PROVIDERS.md's Sources list; rules the providers leave undocumented cite PROVIDERS.md §5.
"""
