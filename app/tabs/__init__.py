"""One module per tab; each exposes build(backend, dataset) -> handles for main."""
