"""Unlocking PPAP: find password candidates in a mail, prove a password, decrypt within limits."""
