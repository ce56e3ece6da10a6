"""Refusal judges behind one Protocol."""
