"""The project's own structure-aware fuzzer for the "fail closed" promise.

No copy of a mail delivered to an external recipient may still carry an encrypted archive. The
package sends mutated PPAP mail through one real gateway to a recording sink and checks every
delivered copy with an oracle that shares no code with the gateway.

    seeds.py     the starting mails (corpus + a few built ones) and their envelopes
    mutators.py  named, composable, structure-aware mutations (message, envelope, rng)
    oracle.py    independent judge: internal/external, and "does this copy hold an encrypted archive?"
    runner.py    one gateway, one sink, sequential sends, properties, summary and reproducers
    __main__.py  the command line (`python -m tests.fuzz`, `make fuzz`)
"""
