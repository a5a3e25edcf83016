"""Tasks across the two encoders: zero-shot classification from prompts, image-report retrieval."""
