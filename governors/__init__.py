"""The risk governors: their rules, limits and state fold. They override the optimisation; profit never moves them."""
