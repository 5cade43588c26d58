"""A numpy-only Flower app for the deployment test: linear model, worker 0 Byzantine (sign flip x 20)."""
