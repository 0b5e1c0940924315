"""Pipeline stages, one module each: prepare, extract, fit, evaluate."""
