"""One recipe per file; each registers itself with `exportable.registry.register`."""
