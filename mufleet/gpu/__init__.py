"""GPU telemetry per node (NVML or simulated), a health verdict, and the agent serving both."""
