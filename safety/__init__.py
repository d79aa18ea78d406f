"""Judging and marking images: verdicts, the policy that combines stages, provenance.

A library: no Discord, no database. The worker in ``models`` calls it through protocols.
"""
