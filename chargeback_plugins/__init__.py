"""Built-in ecosystem plugins: one sub-package per ecosystem, each exporting ``register()``."""
