"""A Flower app whose training rounds secrobust's S0 and S1 aggregate (see ../README.md)."""
