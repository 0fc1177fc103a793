"""mufleet: launcher, local fleet supervisor and tooling around the Triton model repository."""
