"""Two-party gates on shares (comparison, arithmetic, bit conversions) and the dealer material they consume."""
