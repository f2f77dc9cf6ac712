"""Pure serving logic: scoring and answers, priorities, the champion/challenger split."""
