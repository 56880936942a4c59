"""Test and benchmark support: the rule-based corpus and the tiny-checkpoint trainer."""
