"""Subjects and reference algorithms for unlearning audits (corpus, small GPT-2s, unlearning losses)."""
