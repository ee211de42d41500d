"""What a compression hands back: the report, the plan that rebuilds the variant, and the
saved/loaded variant itself."""
