"""Prices and budgets (issue 4). Empty for now: the walking skeleton reports tokens, not cost."""
