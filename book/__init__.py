"""The book's pure domain: the one configuration object and the portfolio fold. No I/O."""
