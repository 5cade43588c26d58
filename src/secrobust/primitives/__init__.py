"""Ring arithmetic, its exact matrix kernel, keyed randomness and additive sharing: the layer every other one builds on."""
