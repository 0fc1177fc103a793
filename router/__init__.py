"""mufleet router: prices requests in Model Units and routes them across Triton nodes."""
